"""The resumable benchmark runners end to end on fixture datasets with a tiny Flux.

The fixture datasets (official layouts around real DAVIS / VSPW frames) come from
tests/test_eval_correspondence.py and tests/test_eval_hpatches.py. A spy on the extractor
counts feature extractions, so "a resumed run recomputes nothing" is checked, not assumed.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_eval_correspondence as tec
import test_eval_hpatches as teh

from ditf_track.errors import ConfigError, OutputError
from ditf_track.eval.correspondence import (
    load_ap10k_pairs,
    load_pf_pascal_pairs,
    load_spair_pairs,
)
from ditf_track.eval.hpatches import load_hpatches
from ditf_track.eval.runs.pairs import HPatchesEvaluation, PCKEvaluation, detect_keypoints
from ditf_track.extractor import DiTFExtractor
from ditf_track.features import FeatureMaps
from ditf_track.match import Matcher

spair_root = tec.spair_root
pf_pascal_root = tec.pf_pascal_root
ap10k_root = tec.ap10k_root
hpatches_root = teh.hpatches_root

LONG_SIDE = 64


class Spy:
    """Wraps an extractor's ``extract``, counts the calls and keeps the noise ids given."""

    def __init__(self, extractor: DiTFExtractor) -> None:
        self.calls = 0
        self.noise_ids: list[Any] = []
        self._extract = extractor.extract
        extractor.extract = self  # type: ignore[method-assign]

    def __call__(
        self,
        images: Any,
        *,
        massive_channels: Sequence[int] | None = None,
        noise_ids: Sequence[str] | None = None,
    ) -> FeatureMaps:
        self.calls += 1
        self.noise_ids.append(noise_ids)
        return self._extract(images, massive_channels=massive_channels, noise_ids=noise_ids)


@pytest.fixture(scope="module")
def flux_extractor(tiny_model: Callable[..., Path]) -> DiTFExtractor:
    return DiTFExtractor.from_pretrained(tiny_model("flux"), family="flux", t=260, k=3)


def make_matcher(extractor: DiTFExtractor, **kwargs: Any) -> tuple[Matcher, Spy]:
    spy = Spy(extractor)
    return Matcher(extractor, long_side=LONG_SIDE, **kwargs), spy


def unwrap(extractor: DiTFExtractor) -> None:
    if isinstance(extractor.extract, Spy):
        extractor.extract = extractor.extract._extract  # type: ignore[method-assign]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def check_pck_outputs(out: Path, alphas: Sequence[float], categories: Sequence[str]) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    for alpha in alphas:
        for kind in ("pck_per_point", "pck_per_image"):
            for suffix in ("", "_category_mean"):
                value = metrics[f"{kind}{suffix}@{alpha:.2f}"]
                assert 0.0 <= value <= 1.0
    values = [metrics[f"pck_per_point@{a:.2f}"] for a in alphas]
    assert values == sorted(values)  # PCK grows with α
    assert sorted(metrics["per_category"]) == sorted(categories)
    rows = read_csv(out / "per_category.csv")
    assert [r["category"] for r in rows] == sorted(categories)
    assert list(rows[0]) == [
        "category",
        "num_pairs",
        "num_points",
        *(f"pck_per_point@{a:.2f}" for a in alphas),
        *(f"pck_per_image@{a:.2f}" for a in alphas),
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["fingerprint"]["matcher"]["extractor"]["k"] == 3
    assert config["fingerprint"]["matcher"]["long_side"] == LONG_SIDE
    assert config["versions"]["torch"]
    return metrics


@pytest.mark.slow
def test_spair_runner_and_resume(
    spair_root: tuple[Path, list[dict[str, object]]],
    flux_extractor: DiTFExtractor,
    tmp_path: Path,
) -> None:
    root, _ = spair_root
    pairs = load_spair_pairs(root)
    out = tmp_path / "run"
    matcher, spy = make_matcher(flux_extractor)
    try:
        # An interrupted run: two pairs, then stop.
        run = PCKEvaluation("spair", pairs, matcher, out, options={"split": "test"})
        for i, outcome in enumerate(run):
            assert not outcome.resumed
            assert set(outcome.pck) == {"pck@0.01", "pck@0.05", "pck@0.10", "pck@0.15"}
            if i == 1:
                break
        assert spy.calls == 4
        # each image draws its own noise: a pair's source and target differ (issue 18 item 3)
        assert all(len(ids) == 1 for ids in spy.noise_ids)
        assert spy.noise_ids[0] != spy.noise_ids[1]
        assert spy.noise_ids[2] != spy.noise_ids[3]
        # An interruption mid-write leaves a torn last line: it is ignored and recomputed.
        with (out / "pairs.jsonl").open("a") as fh:
            fh.write('{"key": "torn", "pred_')
        with pytest.raises(OutputError, match="--resume"):
            PCKEvaluation("spair", pairs, matcher, out, options={"split": "test"})
        run = PCKEvaluation("spair", pairs, matcher, out, options={"split": "test"}, resume=True)
        assert run.num_resumable == 2
        outcomes = list(run)
        assert [o.resumed for o in outcomes] == [True, True, False, False]
        assert spy.calls == 8  # only the two missing pairs were computed
        metrics = run.finish()
        assert metrics["num_pairs"] == 4
        assert metrics["num_points"] == sum(p.num_valid for p in pairs)
        check_pck_outputs(out, (0.01, 0.05, 0.10, 0.15), ["car", "dog"])
        lines = (out / "pairs.jsonl").read_text().splitlines()
        assert len(lines) == 4
        record = json.loads(lines[0])
        assert len(record["pred_yx"]) == pairs[0].num_valid

        # A second complete run recomputes nothing and reports the same numbers.
        again = PCKEvaluation("spair", pairs, matcher, out, options={"split": "test"}, resume=True)
        assert all(o.resumed for o in again)
        assert spy.calls == 8
        replayed = again.finish()
        assert {k: v for k, v in replayed.items() if k.startswith("pck")} == {
            k: v for k, v in metrics.items() if k.startswith("pck")
        }

        # Resuming with other settings is refused; --overwrite starts again.
        other = Matcher(flux_extractor, long_side=LONG_SIDE, upsample=False)
        with pytest.raises(ConfigError, match="upsample"):
            PCKEvaluation("spair", pairs, other, out, options={"split": "test"}, resume=True)
        fresh = PCKEvaluation(
            "spair", pairs[:1], other, out, options={"split": "test"}, overwrite=True
        )
        assert [o.resumed for o in fresh] == [False]
        assert fresh.finish()["num_pairs"] == 1
    finally:
        unwrap(flux_extractor)


@pytest.mark.slow
def test_pf_pascal_and_ap10k_runners(
    pf_pascal_root: tuple[Path, list[list[str]]],
    ap10k_root: tuple[Path, dict[str, dict[str, object]]],
    flux_extractor: DiTFExtractor,
    tmp_path: Path,
) -> None:
    matcher = Matcher(flux_extractor, long_side=LONG_SIDE)
    pf_root, _ = pf_pascal_root
    run = PCKEvaluation("pf-pascal", load_pf_pascal_pairs(pf_root), matcher, tmp_path / "pf")
    assert len(list(run)) == 3
    metrics = run.finish()
    assert metrics["threshold_reference"] == "target_image"
    check_pck_outputs(tmp_path / "pf", (0.05, 0.10, 0.15), ["car", "dog"])

    ap_root, _ = ap10k_root
    pairs = load_ap10k_pairs(ap_root, "intra-species")
    run = PCKEvaluation("ap-10k", pairs, matcher, tmp_path / "ap", options={"subset": "intra"})
    list(run)
    metrics = run.finish()
    assert metrics["num_points"] == sum(p.num_valid for p in pairs)  # only visible-in-both
    check_pck_outputs(tmp_path / "ap", (0.01, 0.05, 0.10), ["dog", "fox", "swan"])
    family = load_ap10k_pairs(ap_root, "cross-family")
    run = PCKEvaluation("ap-10k", family, matcher, tmp_path / "fam")
    list(run)
    assert run.finish()["per_category"]["all"]["num_pairs"] == 1


@pytest.mark.slow
def test_hpatches_runner_and_resume(
    hpatches_root: tuple[Path, dict[str, list[np.ndarray]]],
    flux_extractor: DiTFExtractor,
    tmp_path: Path,
) -> None:
    root, _ = hpatches_root
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture lacks the 8 high-resolution sequences
        sequences = load_hpatches(root)
    out = tmp_path / "hp"
    matcher, spy = make_matcher(flux_extractor, upsample=False)
    try:
        run = HPatchesEvaluation(sequences, matcher, out, max_keypoints=300)
        outcomes = list(run)
        assert len(outcomes) == 10
        assert spy.calls == 2 * 6  # image 1 once per sequence, then images 2..6
        metrics = run.finish()
        for group in ("all", "illumination", "viewpoint"):
            assert set(metrics[group]) == {1, 3, 5}
            assert all(0.0 <= v <= 1.0 for v in metrics[group].values())
        assert metrics["num_pairs"] == {"all": 10, "illumination": 5, "viewpoint": 5}
        assert metrics["detector"] == "sift"
        rows = read_csv(out / "per_category.csv")
        assert [r["category"] for r in rows] == ["all", "illumination", "viewpoint"]
        assert list(rows[0])[:4] == ["category", "accuracy@1px", "accuracy@3px", "accuracy@5px"]
        pairs = read_csv(out / "per_pair.csv")
        assert len(pairs) == 10
        assert {r["kind"] for r in pairs} == {"illumination", "viewpoint"}
        assert all(int(r["num_keypoints_1"]) <= 300 for r in pairs)
        errors = [float(r["corner_error"]) for r in pairs]
        assert all(e >= 0 or math.isinf(e) for e in errors)

        again = HPatchesEvaluation(sequences, matcher, out, max_keypoints=300, resume=True)
        assert all(o.resumed for o in again)
        assert spy.calls == 12
        assert again.finish()["all"] == metrics["all"]
        with pytest.raises(ConfigError, match="max_keypoints"):
            HPatchesEvaluation(sequences, matcher, out, max_keypoints=200, resume=True)
    finally:
        unwrap(flux_extractor)


def test_detect_keypoints(hpatches_root: tuple[Path, dict[str, list[np.ndarray]]]) -> None:
    root, _ = hpatches_root
    image = (root / "v_davisdog" / "1.ppm").as_posix()
    from ditf_track.images import read_image

    rgb = read_image(image)
    for detector in ("sift", "orb"):
        kp = detect_keypoints(rgb, detector, 200)  # type: ignore[arg-type]
        assert 50 <= len(kp) <= 200
        assert np.all((kp >= -0.5) & (kp <= np.array(rgb.shape[:2]) - 0.5))
    with pytest.raises(ConfigError, match="unknown detector"):
        detect_keypoints(rgb, "superpoint")  # type: ignore[arg-type]


def test_spair_run_with_captions_gives_each_image_its_caption_and_records_the_rule(
    spair_root: tuple[Path, list[dict[str, object]]],
    flux_extractor: DiTFExtractor,
    tmp_path: Path,
) -> None:
    from ditf_track.errors import InputError
    from ditf_track.prompts import PromptRule, caption_key

    root, _ = spair_root
    pairs = load_spair_pairs(root)[1:3]  # a dog pair and a car pair
    images = [(p.category, i) for p in pairs for i in (p.source_image, p.target_image)]
    captions = {caption_key(c, i): f"a photo of a {c} {n}" for n, (c, i) in enumerate(images)}
    path = tmp_path / "spair_detailed_captions.json"
    path.write_text(json.dumps(captions))
    rule = PromptRule.from_options(captions=path)
    given: list[Any] = []
    extract = flux_extractor.extract

    def spy(images: Any, **kwargs: Any) -> FeatureMaps:
        given.append(kwargs.get("prompts"))
        return extract(images, **kwargs)

    flux_extractor.extract = spy  # type: ignore[method-assign]
    out = tmp_path / "run"
    try:
        matcher = Matcher(flux_extractor, long_side=LONG_SIDE)
        run = PCKEvaluation("spair", pairs, matcher, out, options={"split": "test"}, prompts=rule)
        assert [o.resumed for o in run] == [False, False]
        metrics = run.finish()
        # source and target of each pair, each with its own caption
        assert given == [[captions[caption_key(c, i)]] for c, i in images]
        assert len({g[0] for g in given}) == 4
        config = json.loads((out / "config.json").read_text())
        assert config["fingerprint"]["prompts"] == rule.record()
        assert config["prompts"]["captions_sha256"] == rule.captions_sha256
        assert metrics["prompts"] == json.loads((out / "metrics.json").read_text())["prompts"]
        assert metrics["prompts"] == {
            "rule": "captions",
            "captions_file": str(path.resolve()),
            "captions_sha256": rule.captions_sha256,
            "num_captions": 4,
            "key": "category + image file name",
        }
        # the prompt rule is part of the resume identity
        path.write_text(json.dumps({**captions, caption_key(*images[0]): "a dog"}))
        changed = PromptRule.from_options(captions=path)
        with pytest.raises(ConfigError, match="prompts"):
            PCKEvaluation(
                "spair",
                pairs,
                matcher,
                out,
                options={"split": "test"},
                prompts=changed,
                resume=True,
            )
        with pytest.raises(ConfigError, match="prompts"):
            PCKEvaluation("spair", pairs, matcher, out, options={"split": "test"}, resume=True)
        again = PCKEvaluation(
            "spair", pairs, matcher, out, options={"split": "test"}, prompts=rule, resume=True
        )
        assert all(o.resumed for o in again)
        # an image without a caption: one line before anything is computed or written
        path.write_text(json.dumps({k: v for k, v in captions.items() if "car" not in k}))
        partial = PromptRule.from_options(captions=path)
        given.clear()
        with pytest.raises(InputError, match=r"no caption for 'car\S+\.jpg' and 1 other image"):
            PCKEvaluation("spair", pairs, matcher, tmp_path / "other", prompts=partial)
        assert given == []
        assert not (tmp_path / "other").exists()
    finally:
        flux_extractor.extract = extract  # type: ignore[method-assign]
