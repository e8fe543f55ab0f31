"""Per-image prompts of the pair benchmarks: templates, captions files and their checks."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from ditf_track.errors import ConfigError, DitfError, InputError
from ditf_track.prompts import PromptRule, caption_key, check_template, read_captions


@dataclass(frozen=True)
class Pair:
    category: str
    source_image: Path
    target_image: Path


PAIRS = [
    Pair("car", Path("JPEGImages/car/2008_007466.jpg"), Path("JPEGImages/car/2009_000001.jpg")),
    Pair("dog", Path("JPEGImages/dog/2008_000100.jpg"), Path("JPEGImages/dog/2008_000200.jpg")),
    Pair("car", Path("JPEGImages/car/2009_000001.jpg"), Path("JPEGImages/car/2008_007466.jpg")),
]
CAPTIONS = {
    "car2008_007466.jpg": "a red car parked by a wall",
    "car2009_000001.jpg": "a grey car on a road",
    "dog2008_000100.jpg": "a dog on grass",
    "dog2008_000200.jpg": "a dog lying down",
}


def one_line(error: DitfError) -> str:
    text = str(error)
    assert "\n" not in text
    return text


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_caption_key_is_category_then_file_name() -> None:
    assert caption_key("car", "SPair-71k/JPEGImages/car/2008_007466.jpg") == "car2008_007466.jpg"
    assert caption_key("pottedplant", Path("x/2008_1.jpg")) == "pottedplant2008_1.jpg"


def test_template_substitution() -> None:
    rule = PromptRule.from_options("a photo of a {category}")
    assert rule.kind == "template"
    assert rule.prompt_for("car", PAIRS[0].source_image) == "a photo of a car"
    assert rule.prompt_for("dog", "any.jpg") == "a photo of a dog"
    braces = PromptRule.from_options("{{literal}} {category}, {category}")
    assert braces.prompt_for("cat", "x.jpg") == "{literal} cat, cat"
    # distinct prompts in first-seen order, one per category
    assert rule.check_pairs(PAIRS) == ["a photo of a car", "a photo of a dog"]
    assert rule.record() == {"rule": "template", "template": "a photo of a {category}"}


def test_no_rule_keeps_the_extractor_prompt() -> None:
    rule = PromptRule.from_options()
    assert rule.kind == "preset"
    assert rule.prompt_for("car", "x.jpg") is None
    assert rule.check_pairs(PAIRS) == []
    assert rule.record() == {"rule": "preset"}


@pytest.mark.faults
@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("a photo", "has no placeholder"),
        ("a photo of a {cat}", "unknown placeholder {cat}; the known ones are {category}"),
        ("a photo of a {}", "unknown placeholder {}"),
        ("a photo of a {0}", "unknown placeholder {0}"),
        ("a photo of a {category", "does not parse"),
        ("a photo of a {category!r}", "formats a placeholder"),
        ("a photo of a {category:>10}", "formats a placeholder"),
    ],
)
def test_bad_templates_are_one_line(template: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_template(template)
    assert expected in one_line(info.value)
    with pytest.raises(ConfigError):  # and before any captions file is read
        PromptRule.from_options(template, "/no/such/captions.json")


def test_captions_rule(tmp_path: Path) -> None:
    path = write_json(tmp_path / "spair_detailed_captions.json", CAPTIONS)
    rule = PromptRule.from_options("a photo of a {category}", path)
    assert rule.kind == "captions"  # captions win over the template
    assert rule.prompt_for("car", PAIRS[0].source_image) == "a red car parked by a wall"
    assert rule.prompt_for("car", PAIRS[0].target_image) == "a grey car on a road"
    assert rule.check_pairs(PAIRS) == [
        "a red car parked by a wall",
        "a grey car on a road",
        "a dog on grass",
        "a dog lying down",
    ]
    record = rule.record()
    assert record["rule"] == "captions"
    assert record["captions_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["captions_file"] == str(path.resolve())
    assert record["num_captions"] == 4
    # another file's text is another rule
    other = write_json(tmp_path / "other.json", {**CAPTIONS, "dog2008_000200.jpg": "a puppy"})
    assert PromptRule.from_options(captions=other).record() != record


@pytest.mark.faults
def test_missing_caption_is_found_for_all_pairs_up_front(tmp_path: Path) -> None:
    """A caption missing for the last pair's image fails before any pair is run."""
    partial = {k: v for k, v in CAPTIONS.items() if k != "dog2008_000200.jpg"}
    rule = PromptRule.from_options(captions=write_json(tmp_path / "c.json", partial))
    assert rule.check_pairs(PAIRS[:1]) == ["a red car parked by a wall", "a grey car on a road"]
    with pytest.raises(InputError) as info:
        rule.check_pairs(PAIRS)
    message = one_line(info.value)
    assert "has no caption for 'dog2008_000200.jpg' of the pairs to run" in message
    assert "add them (key = category + image file name)" in message
    # two images without one: the first is named, the rest counted
    fewer = {k: v for k, v in partial.items() if k != "car2009_000001.jpg"}
    rule = PromptRule.from_options(captions=write_json(tmp_path / "d.json", fewer))
    with pytest.raises(InputError, match=r"'car2009_000001.jpg' and 1 other image"):
        rule.check_pairs(PAIRS)
    with pytest.raises(InputError, match="has no caption for 'car2009_000001.jpg'; add it"):
        rule.prompt_for("car", "2009_000001.jpg")


@pytest.mark.faults
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist; check the path"),
        ("folder", "is a folder; give the JSON file itself"),
        (b'{"car1.jpg": "a car",', "is not valid UTF-8 JSON"),
        (b"\xff\xfe", "is not valid UTF-8 JSON"),
        (b'["a car"]', "holds a JSON array, not an object"),
        (b'{"car1.jpg": ["a", "car"]}', "the caption of 'car1.jpg' is a JSON array, not a string"),
        (b'{"car1.jpg": null}', "the caption of 'car1.jpg' is a JSON null, not a string"),
        (b'{"car1.jpg": 3}', "the caption of 'car1.jpg' is a JSON number, not a string"),
    ],
)
def test_bad_captions_files_are_one_line(
    tmp_path: Path, content: bytes | str | None, expected: str
) -> None:
    path = tmp_path / "captions.json"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_captions(path)
    message = one_line(info.value)
    assert str(path) in message
    assert expected in message
