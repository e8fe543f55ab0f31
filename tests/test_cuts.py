"""Scene cuts: where bikes.mp4 changes shot, no cut inside a DAVIS shot, margins, bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ditf_track.cuts import CutParams, CutScores, cut_scores, detect_cuts, select_cuts
from ditf_track.errors import ConfigError, InputError
from ditf_track.progress import ProgressEvent
from ditf_track.video import open_video, video_from_array

BIKES_CUTS = [30, 76, 137, 187, 242]  # the frames that start shots 2..6, read off the video
DAVIS_CLIPS = ["blackswan", "bmx-trees", "car-shadow", "dog", "motocross-jump"]


@pytest.fixture(scope="module")
def bikes_scores(shared_data: Path) -> tuple[CutScores, list[ProgressEvent]]:
    events: list[ProgressEvent] = []
    scores = cut_scores(shared_data / "videos" / "bikes.mp4", progress=events.append)
    return scores, events


@pytest.fixture(scope="module")
def one_shot_scores(shared_data: Path) -> dict[str, CutScores]:
    """Clips that are a single shot: the DAVIS sequences, and bigbuckbunny.mp4 (132 frames of
    one continuous shot, checked by eye on every 6th frame)."""
    clips = {name: shared_data / "davis" / "JPEGImages" / "480p" / name for name in DAVIS_CLIPS}
    clips["bigbuckbunny"] = shared_data / "videos" / "bigbuckbunny.mp4"
    return {name: cut_scores(path) for name, path in clips.items()}


def test_bikes_cuts_at_the_shot_changes(
    bikes_scores: tuple[CutScores, list[ProgressEvent]],
) -> None:
    scores, _ = bikes_scores
    cuts = select_cuts(scores)
    assert len(cuts) == len(BIKES_CUTS)
    assert all(abs(c - t) <= 1 for c, t in zip(cuts, BIKES_CUTS)), cuts


def test_progress_reports_every_frame(
    bikes_scores: tuple[CutScores, list[ProgressEvent]],
) -> None:
    scores, events = bikes_scores
    assert len(scores.content) == 250
    assert events == [ProgressEvent("cuts", t, 250) for t in range(1, 251)]


@pytest.mark.parametrize("clip", [*DAVIS_CLIPS, "bigbuckbunny"])
def test_no_cut_inside_one_shot(one_shot_scores: dict[str, CutScores], clip: str) -> None:
    assert select_cuts(one_shot_scores[clip]) == []


def test_defaults_separate_cuts_with_margin(
    bikes_scores: tuple[CutScores, list[ProgressEvent]], one_shot_scores: dict[str, CutScores]
) -> None:
    """Each frame's evidence as a multiple of the defaults: min(score / threshold, ratio /
    adaptive_ratio), >= 1 at a cut. Fast motion (motocross-jump, bmx-trees) scores close to
    or above a real cut, so the ratio carries the margin."""
    params = CutParams()

    def evidence(s: CutScores) -> np.ndarray:
        return np.minimum(s.content / params.threshold, s.ratio / params.adaptive_ratio)

    bikes = evidence(bikes_scores[0])
    at_cuts = bikes[BIKES_CUTS]
    elsewhere = np.delete(bikes, BIKES_CUTS)
    others = [evidence(s)[1:] for s in one_shot_scores.values()]
    assert at_cuts.min() >= 1.3
    assert max(elsewhere.max(), *(e.max() for e in others)) <= 0.7
    # The content rule alone cannot tell motion from a cut on these clips.
    assert one_shot_scores["motocross-jump"].content.max() > bikes_scores[0].content[187]


def test_strided_source_is_scanned_on_every_frame(shared_data: Path) -> None:
    """A stride-5 selection skips frames 76 and 30's neighbours; cuts are still found there and
    numbered in the file's frames."""
    with open_video(shared_data / "videos" / "bikes.mp4", start=20, end=100, stride=5) as source:
        assert detect_cuts(source) == [30, 76]
        assert len(source) == 16  # the caller's source is left open and unchanged


# ---- synthetic frames ---------------------------------------------------------------------


def _flat(colours: list[tuple[int, int, int]], size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """``(T, H, W, 3) uint8`` frames of one flat RGB colour each."""
    return np.stack([np.full((*size, 3), c, np.uint8) for c in colours])


def test_two_flat_colours_cut_once_at_the_switch(tmp_path: Path) -> None:
    frames = _flat([(200, 40, 40)] * 20 + [(40, 40, 200)] * 20)
    assert detect_cuts(video_from_array(frames)) == [20]
    for i, frame in enumerate(frames):  # the same as a frame folder
        cv2.imwrite(str(tmp_path / f"{i}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    assert detect_cuts(tmp_path) == [20]
    assert detect_cuts(video_from_array(frames[:1])) == []  # one frame: one shot


def test_content_score_of_black_to_white() -> None:
    """Black → white changes only the value channel, by 255: (0 + 0 + 255) / 3."""
    scores = cut_scores(video_from_array(_flat([(0, 0, 0), (255, 255, 255)])))
    assert scores.content.tolist() == [0.0, 85.0]


def test_hue_difference_goes_round_the_colour_circle() -> None:
    """Red just below and just above hue 0 are close: a 2-step difference, not 254."""
    red_magenta, red_orange = (255, 0, 6), (255, 6, 0)
    scores = cut_scores(video_from_array(_flat([red_magenta, red_orange])))
    assert scores.content[1] < 2.0


def test_slow_fade_is_not_a_cut() -> None:
    a, b = np.array([200, 40, 40]), np.array([40, 40, 200])
    fade = [tuple(int(v) for v in np.round(a + (b - a) * t / 59)) for t in range(60)]
    frames = _flat(fade)  # type: ignore[arg-type]
    assert detect_cuts(video_from_array(frames)) == []


def test_min_scene_len_drops_a_cut_too_soon_after_another() -> None:
    """Counted from the previous cut only: the first frame read may lie mid-shot."""
    colours = [(200, 40, 40)] * 3 + [(40, 40, 200)] * 17 + [(40, 200, 40)] * 20
    video = video_from_array(_flat(colours))
    assert detect_cuts(video) == [3, 20]
    assert detect_cuts(video, min_scene_len=17) == [3, 20]
    assert detect_cuts(video, min_scene_len=18) == [3]


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.faults
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"threshold": -1.0}, "cut threshold=-1.0 must be a finite number >= 0"),
        ({"threshold": float("nan")}, "cut threshold=nan must be a finite number >= 0"),
        ({"adaptive_ratio": float("inf")}, "cut adaptive_ratio=inf must be a finite number"),
        ({"threshold": "20"}, "cut threshold='20' must be a number, e.g. threshold=20"),
        ({"min_scene_len": 0}, "cut min_scene_len=0 must be a whole number >= 1"),
        ({"min_scene_len": 2.5}, "cut min_scene_len=2.5 must be a whole number >= 1"),
        ({"min_scene_len": True}, "cut min_scene_len=True must be a whole number >= 1"),
    ],
)
def test_bad_parameters_fail_before_reading(params: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        detect_cuts("/nonexistent/video.mp4", **params)  # type: ignore[arg-type]
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


@pytest.mark.faults
@pytest.mark.parametrize(
    "params",
    [{"weights": (0.0, 0.0, 0.0)}, {"weights": (1.0, 1.0)}, {"weights": (1.0, -1.0, 1.0)}],
)
def test_bad_weights_and_window(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"cut weights=.* must be 3 finite numbers >= 0"):
        CutParams(**params)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"cut window=0 must be a whole number >= 1"):
        CutParams(window=0)


@pytest.mark.faults
def test_unreadable_video_is_one_line_input_error(tmp_path: Path) -> None:
    fake = tmp_path / "clip.mp4"
    fake.write_text("not a video")
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, words in [
        (tmp_path / "missing.mp4", "does not exist"),
        (fake, "clip.mp4"),
        (empty, "holds no .jpg/.jpeg/.png frames"),
    ]:
        with pytest.raises(InputError, match=words) as err:
            detect_cuts(path)
        assert "\n" not in str(err.value)
