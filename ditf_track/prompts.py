"""Per-image prompts of a pair benchmark: a template on the category, or a captions file.

The authors' SPair script conditions every image on its own caption, read from a JSON object
whose keys are the category followed by the image file name (``"car" + "2008_007466.jpg"`` →
``"car2008_007466.jpg"``); their comment credits it with about +0.3 PCK over the template
``"a photo of a {category}"``. A :class:`PromptRule` is either rule, checked before any model
loads: a template with no or an unknown placeholder, a captions file that cannot be read as a
``str → str`` object, or an image without a caption is one line naming the fix.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError, InputError

#: Placeholders a prompt template may use.
TEMPLATE_FIELDS: tuple[str, ...] = ("category",)


class ImagePair(Protocol):
    """What a pair must tell for its prompts (a :class:`~ditf_track.eval.correspondence.
    CorrespondencePair`): the category and both images' paths."""

    @property
    def category(self) -> str: ...

    @property
    def source_image(self) -> Path: ...

    @property
    def target_image(self) -> Path: ...


def caption_key(category: str, image: str | Path) -> str:
    """The captions file's key of an image: its category, then its file name (no separator)."""
    return f"{category}{Path(image).name}"


def check_template(template: str) -> str:
    """``template`` if it names only known placeholders (at least one), else a ConfigError."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(
            f"prompt template {template!r} does not parse ({exc}); write placeholders as "
            "{category} and literal braces as {{ }}"
        ) from None
    names = [name for _, name, _, _ in parsed if name is not None]
    unknown = [n for n in names if n not in TEMPLATE_FIELDS]
    if unknown:
        raise ConfigError(
            f"prompt template {template!r} has the unknown placeholder {{{unknown[0]}}}; the "
            f"known ones are {', '.join('{' + n + '}' for n in TEMPLATE_FIELDS)}"
        )
    formatted = [(spec, conv) for _, name, spec, conv in parsed if name is not None]
    if any(spec or conv for spec, conv in formatted):
        raise ConfigError(
            f"prompt template {template!r} formats a placeholder; write it plainly as {{category}}"
        )
    if not names:
        raise ConfigError(
            f"prompt template {template!r} has no placeholder, so every image would get the same "
            "prompt; put {category} in it (e.g. 'a photo of a {category}') or use --prompt"
        )
    return template


def read_captions(path: str | Path) -> tuple[dict[str, str], str]:
    """The captions of a JSON file (an object ``key → caption``) and the file's sha256."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"captions file {p} does not exist; check the path") from None
    except IsADirectoryError:
        raise InputError(f"captions file {p} is a folder; give the JSON file itself") from None
    except OSError as exc:
        raise InputError(f"captions file {p} cannot be read ({exc.strerror}); check it") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).splitlines()[0]
        raise InputError(
            f"captions file {p} is not valid UTF-8 JSON ({reason}); fix or re-export it"
        ) from None
    if not isinstance(data, dict):
        raise InputError(
            f"captions file {p} holds a JSON {_json_type(data)}, not an object; it must map "
            'category + image file name to a caption, e.g. {"car2008_007466.jpg": "..."}'
        )
    for key, value in data.items():
        if not isinstance(value, str):
            raise InputError(
                f"captions file {p}: the caption of {key!r} is a JSON {_json_type(value)}, "
                "not a string; every value must be the image's caption text"
            )
    return data, hashlib.sha256(raw).hexdigest()


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "string" if isinstance(value, str) else type(value).__name__


@dataclass(frozen=True)
class PromptRule:
    """How each image of a pair benchmark gets its text condition.

    ``captions`` (key → caption, keys by :func:`caption_key`) win over ``template``; with
    neither, :meth:`prompt_for` is None: the extractor's own prompt (the preset's or
    ``--prompt``). :meth:`record` is what config.json, metrics.json and the resume
    fingerprint hold: the template, or the captions file's path, sha256 and size.
    """

    template: str | None = None
    captions: Mapping[str, str] | None = field(default=None, repr=False)
    captions_file: str | None = None
    captions_sha256: str | None = None

    @classmethod
    def from_options(
        cls, template: str | None = None, captions: str | Path | None = None
    ) -> PromptRule:
        """The rule of ``--prompt-template`` / ``--captions`` (both checked, captions win)."""
        if template is not None:
            check_template(template)
        if captions is None:
            return cls(template=template)
        table, digest = read_captions(captions)
        return cls(
            template=template,
            captions=table,
            captions_file=str(Path(captions).resolve()),
            captions_sha256=digest,
        )

    @property
    def kind(self) -> str:
        if self.captions is not None:
            return "captions"
        return "template" if self.template is not None else "preset"

    def prompt_for(self, category: str, image: str | Path) -> str | None:
        """The prompt of ``image`` of ``category``; None: the extractor's own prompt."""
        if self.captions is not None:
            key = caption_key(category, image)
            if key not in self.captions:
                raise InputError(
                    f"captions file {self.captions_file} has no caption for {key!r}; add it "
                    "(the key is the category followed by the image file name)"
                )
            return self.captions[key]
        if self.template is not None:
            return self.template.format(category=category)
        return None

    def check_images(self, images: Iterable[tuple[str, str | Path]]) -> list[str]:
        """Every distinct prompt of ``images`` (category, image) in first-seen order; with
        captions, all images are checked up front and a missing one is one line naming it."""
        seen: dict[str, None] = {}
        missing: list[str] = []
        for category, image in images:
            if self.captions is not None and caption_key(category, image) not in self.captions:
                missing.append(caption_key(category, image))
                continue
            prompt = self.prompt_for(category, image)
            if prompt is not None:
                seen.setdefault(prompt)
        if missing:
            unique = list(dict.fromkeys(missing))
            more = f" and {len(unique) - 1} other image(s)" if len(unique) > 1 else ""
            raise InputError(
                f"captions file {self.captions_file} has no caption for {unique[0]!r}{more} of "
                "the pairs to run; add them (key = category + image file name), or leave those "
                "pairs out (--categories, --limit) or use --prompt-template"
            )
        return list(seen)

    def check_pairs(self, pairs: Iterable[ImagePair]) -> list[str]:
        """:meth:`check_images` of the source and target images of every pair."""
        return self.check_images(
            (p.category, image) for p in pairs for image in (p.source_image, p.target_image)
        )

    def record(self) -> dict[str, Any]:
        """The rule as JSON: enough to tell two runs' prompts apart (not the captions' text)."""
        out: dict[str, Any] = {"rule": self.kind}
        if self.captions is not None:
            out |= {
                "captions_file": self.captions_file,
                "captions_sha256": self.captions_sha256,
                "num_captions": len(self.captions),
                "key": "category + image file name",
            }
        elif self.template is not None:
            out["template"] = self.template
        return out
