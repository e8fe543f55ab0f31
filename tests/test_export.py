"""export: the streaming safetensors writer writes under the package's one temporary name."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ditf_track.errors import OutputError
from ditf_track.export import StreamingSafetensorsWriter, extract_to_safetensors
from ditf_track.lab import LabExtractor
from ditf_track.outputs import TEMP_PATTERN
from ditf_track.progress import ProgressEvent
from ditf_track.video import video_from_array


def test_streaming_writer_appears_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "features.safetensors"
    frames = torch.arange(3 * 2 * 4 * 5, dtype=torch.float32).reshape(3, 2, 4, 5)
    writer = StreamingSafetensorsWriter(final, "features", 3)
    writer.metadata["note"] = "x"
    writer.write(frames[:2])
    (temporary,) = (tmp_path / "sub").iterdir()
    assert fnmatch.fnmatch(temporary.name, TEMP_PATTERN)  # a run folder's cleanup knows it
    assert temporary.name.startswith(".features.")
    assert temporary.suffix == ".safetensors"
    assert not final.exists()
    writer.write(frames[2:])
    assert writer.close() == final
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["features.safetensors"]
    torch.testing.assert_close(load_file(final)["features"], frames)


@pytest.mark.faults
def test_streaming_writer_short_or_aborted_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "features.safetensors"
    writer = StreamingSafetensorsWriter(final, "features", 3)
    writer.write(torch.zeros(2, 4))
    with pytest.raises(OutputError, match="2 of 3 frames were written; nothing saved"):
        writer.close()
    assert list(tmp_path.iterdir()) == []
    aborted = StreamingSafetensorsWriter(final, "features", 3)
    aborted.write(torch.zeros(1, 4))
    aborted.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.faults
def test_streaming_writer_rename_failure_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "features.safetensors"
    writer = StreamingSafetensorsWriter(final, "features", 1)
    writer.write(torch.zeros(1, 4))

    def full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ditf_track._atomic.os.replace", full)
    with pytest.raises(OutputError, match=r"cannot write features file .*No space left"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_export_reports_progress_events(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    events: list[ProgressEvent] = []
    out = tmp_path / "lab.safetensors"
    extract_to_safetensors(
        LabExtractor(),
        video_from_array(frames),
        out,
        size=(32, 48),
        batch_size=2,
        progress=events.append,
    )
    assert events == [ProgressEvent("extract", 2, 3), ProgressEvent("extract", 3, 3)]
