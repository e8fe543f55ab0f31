"""Package foundation: version, presets, devices, CLI entry."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

import ditf_track
from ditf_track import cli
from ditf_track.devices import resolve_device, resolve_dtype
from ditf_track.errors import ConfigError, DeviceError
from ditf_track.presets import DEFAULT_PRESET, available_presets, load_preset, preset_from_dict


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"ditf-track {ditf_track.__version__}"


def test_console_script_installed() -> None:
    exe = shutil.which("ditf-track")
    if exe is None:
        pytest.skip("package not installed (pip install -e .)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"ditf-track {ditf_track.__version__}"


def test_presets_paper_table7() -> None:
    assert set(available_presets()) >= {
        "pixart-alpha",
        "sd3",
        "sd3.5",
        "flux",
        "flux-schnell",
        "lab",
    }
    expected = {"pixart-alpha": (141, 14), "sd3": (340, 9), "sd3.5": (380, 23), "flux": (260, 28)}
    for name, (t, k) in expected.items():
        c = load_preset(name).correspondence
        assert (c.t, c.k, c.image_size) == (t, k, 960)
    flux = load_preset("flux")
    assert (flux.video.t, flux.video.k, flux.video.short_side) == (90, 24, 960)
    assert flux.video.prompt == "a photo of a image"
    assert flux.guidance == 3.5
    assert load_preset("sd3").video.tuned is False
    assert load_preset("flux-schnell").evaluated_in_paper is False
    assert DEFAULT_PRESET == "pixart-alpha"
    assert not load_preset(DEFAULT_PRESET).gated


def test_preset_errors() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*flux"):
        load_preset("nope")
    raw = load_preset("flux").to_dict()
    raw["family"] = "unet"
    with pytest.raises(ConfigError, match="unknown family"):
        preset_from_dict(raw)
    raw = load_preset("flux").to_dict()
    raw["video"]["t"] = 1000
    with pytest.raises(ConfigError, match="t=1000"):
        preset_from_dict(raw)


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match="float16 is not supported on the CPU"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("int8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available.*--device cpu"):
            resolve_device("cuda")
        assert resolve_device("auto").type in ("cpu", "mps")


def test_module_entry() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ditf_track.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert "ditf-track" in out.stdout
