"""What the ``test_cli_<command>.py`` files share: running the CLI in-process, the one-line error
check, folder snapshots, and a copied clip whose files a test may put at risk.

Fixtures are taken into a test module by assignment (``clip = cli_helpers.clip``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ditf_track import cli

DOG = "davis/JPEGImages/480p/dog"
DOG_MASK = "davis/Annotations/480p/dog/00000.png"
#: The weight-free baseline at a small size: a track run in about a second.
LAB = ["--preset", "lab", "--short-side", "64", "--no-disk-cache", "--quiet"]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``ditf-track ARGS`` in-process: (exit status, stdout, stderr)."""
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code: int, err: str) -> str:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ditf-track: error: "), err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def davis_root(
    shared_data: Path, root: Path, sequences: list[str], frames: int | None = None
) -> Path:
    """A DAVIS-2017-layout ``root`` (val split = ``sequences``) linking to the shared clips, read
    in place: whole sequence folders, or links to the first ``frames`` frames of each."""
    for kind, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
        (root / kind / "480p").mkdir(parents=True)
        for seq in sequences:
            source = shared_data / "davis" / kind / "480p" / seq
            if frames is None:
                (root / kind / "480p" / seq).symlink_to(source)
                continue
            (root / kind / "480p" / seq).mkdir()
            for name in (f"{i:05d}.{ext}" for i in range(frames)):
                (root / kind / "480p" / seq / name).symlink_to(source / name)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(sequences) + "\n")
    return root


def davis_args(shared_data: Path, out: Path, end: int = 4) -> list[str]:
    """``track`` on the first ``end`` frames of DAVIS dog from its first annotation."""
    clip = shared_data / DOG
    mask = shared_data / DOG_MASK
    return ["track", str(clip), "--mask", str(mask), "--end", str(end), "--out", str(out)]


@pytest.fixture
def clip(shared_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """8 dog frames and the first mask, copied: these inputs may be at risk in a test."""
    frames = tmp_path / "dog"
    frames.mkdir()
    for i in range(8):
        shutil.copy(shared_data / DOG / f"{i:05d}.jpg", frames)
    mask = tmp_path / "first.png"
    shutil.copy(shared_data / DOG_MASK, mask)
    return frames, mask


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a model (or the lab extractor) is resolved at all."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was resolved before the inputs were checked")

    monkeypatch.setattr("ditf_track.extractor.build_extractor", forbidden)
