"""Model loading when things go wrong: no network, damaged downloads, a bad or full cache.

Each case must end in one line that names the cause and the way out, quickly, before anything
heavy is loaded — or, for a cache that cannot be trusted or written, in one warning and a run
that goes on. Tiny hub-layout models are copied to ``tmp_path`` and damaged there.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ditf_track import cli
from ditf_track.backbones import backbone_class
from ditf_track.errors import ConfigError, ModelLoadError
from ditf_track.extractor import DiTFExtractor
from ditf_track.masks import read_mask, write_mask

pytestmark = pytest.mark.faults

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HUB_ID = "PixArt-alpha/PixArt-XL-2-1024-MS"


def davis_args(shared_data: Path, out: Path, end: int = 4) -> list[str]:
    clip = shared_data / "davis/JPEGImages/480p/dog"
    mask = shared_data / "davis/Annotations/480p/dog/00000.png"
    return ["track", str(clip), "--mask", str(mask), "--end", str(end), "--out", str(out)]


def copy_model(tiny_model: Callable[..., Path], family: str, dst: Path, **options: Any) -> Path:
    return Path(shutil.copytree(tiny_model(family, **options), dst))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def break_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:16] = b"\x00" * 8  # the JSON header now starts with NULs
    path.write_bytes(bytes(data))


def flip_data_bytes(path: Path) -> None:
    """Flip bytes in the tensor data of a safetensors file, leaving its header intact."""
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    start = 8 + header_len
    for i in range(start, len(data), 7):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    return message


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite runs with an offline hub; these cases need it online."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


# -- the Hub cannot be reached ------------------------------------------------------------------
@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port that refuses connections: bound, never listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_unreachable_hub_is_one_fast_line(
    shared_data: Path, tmp_path: Path, closed_port: int
) -> None:
    """Default preset, no network, HF_HUB_OFFLINE unset: once 29 s and 22 lines, now one."""
    unset = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port}",
        HF_HOME=str(tmp_path / "hf-home"),
        DITF_TRACK_CACHE=str(tmp_path / "cache"),
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]),
    )
    # time main() only: importing torch on a busy CI machine is not what is measured here
    script = (
        "import sys, time\n"
        "from ditf_track.cli import main\n"
        "start = time.perf_counter()\n"
        "code = main(sys.argv[1:])\n"
        "print(f'elapsed={time.perf_counter() - start:.2f}')\n"
        "sys.exit(code)\n"
    )
    out = tmp_path / "masks"
    proc = subprocess.run(
        [sys.executable, "-c", script, *davis_args(shared_data, out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("ditf-track: error: could not reach the Hugging Face Hub")
    assert f"127.0.0.1:{closed_port}" in line
    assert "offline mode" not in line
    assert f"hf download {DEFAULT_HUB_ID} --local-dir PATH" in line
    assert "--model PATH" in line
    assert "--local-files-only" in line
    assert "--preset lab" in line
    elapsed = float(proc.stdout.strip().rsplit("elapsed=", 1)[1])
    assert elapsed < 10, f"{elapsed:.1f} s to say the Hub cannot be reached"
    assert not out.exists()


def test_offline_mode_is_named_only_when_on(
    shared_data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # the suite's HF_HUB_OFFLINE=1 is the user's switch here
    code = cli.main([*davis_args(shared_data, tmp_path / "out")])
    err = capfd.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert "offline mode is on (HF_HUB_OFFLINE / --local-files-only)" in err
    assert f"hf download {DEFAULT_HUB_ID} --local-dir PATH" in err
    assert "--preset lab" in err


def fake_hub_cache(tiny_model: Callable[..., Path], family: str, root: Path, repo: str) -> Path:
    """A Hugging Face cache holding ``repo`` (a tiny model) at one commit; returns the snapshot."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return Path(shutil.copytree(tiny_model(family), repo_dir / "snapshots" / commit))


def test_unreachable_hub_serves_a_cached_model(
    online: None, tiny_model: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No network, HF_HUB_OFFLINE unset, the model in the cache: it loads, without retries."""
    import httpx2
    import huggingface_hub

    hub_cache = tmp_path / "hub"
    fake_hub_cache(tiny_model, "sd3", hub_cache, "org/tiny-sd3")

    def refused(*args: Any, **kwargs: Any) -> None:
        raise httpx2.ConnectError("[Errno 111] Connection refused")

    real_download = huggingface_hub.hf_hub_download
    modes = []

    def download(*args: Any, **kwargs: Any) -> str:
        modes.append(kwargs["local_files_only"])
        return real_download(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", refused)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    backbone = backbone_class("sd3").load(
        "org/tiny-sd3", k=1, hub_cache_dir=hub_cache, cache_dir=tmp_path / "cache"
    )
    assert backbone.k_max == 1
    assert modes
    assert all(modes), "a file was fetched online after the Hub proved unreachable"


# -- damaged downloads --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("family", "options", "damage"),
    [
        ("sd3", {}, "transformer"),
        ("flux", {"max_shard_size": "20KB"}, "transformer-shard"),
        ("sd3", {}, "text_encoder_3"),
        ("pixart", {}, "vae"),
    ],
)
@pytest.mark.parametrize("how", [truncate, break_header])
def test_damaged_weights_name_the_file(
    tiny_model: Callable[..., Path],
    tmp_path: Path,
    family: str,
    options: dict[str, Any],
    damage: str,
    how: Callable[[Path], None],
) -> None:
    folder = copy_model(tiny_model, family, tmp_path / "model", **options)
    if damage == "transformer-shard":
        victim = sorted((folder / "transformer").glob("*-00002-of-*.safetensors"))[0]
    else:
        victim = next((folder / damage).glob("*.safetensors"))
    how(victim)
    with pytest.raises(ModelLoadError) as exc:
        backbone_class(family).load(folder, k=1, cache_dir=tmp_path / "cache")
    message = one_line(str(exc.value))
    assert f"model file {victim} is damaged or incomplete" in message
    rel = victim.relative_to(folder).as_posix()
    assert f"re-download it (`hf download <hub id> {rel} --local-dir {folder}`)" in message
    assert "network" not in message


@pytest.mark.parametrize("damaged", ["transformer", "text_encoder_3"])
def test_damaged_file_in_the_hub_cache(
    tiny_model: Callable[..., Path], tmp_path: Path, damaged: str
) -> None:
    """From the hub cache, the fix is a forced re-download of that one file."""
    snapshot = fake_hub_cache(tiny_model, "sd3", tmp_path / "hub", "org/tiny-sd3")
    victim = next((snapshot / damaged).glob("*.safetensors"))
    truncate(victim)
    with pytest.raises(ModelLoadError) as exc:
        backbone_class("sd3").load(
            "org/tiny-sd3", k=1, hub_cache_dir=tmp_path / "hub", cache_dir=tmp_path / "cache"
        )
    message = one_line(str(exc.value))
    assert f"model file {victim} is damaged or incomplete" in message
    assert (
        f"re-download it with `hf download org/tiny-sd3 {damaged}/{victim.name} --force-download`"
    ) in message


def test_damaged_index_and_config_name_the_file(
    tiny_model: Callable[..., Path], tmp_path: Path
) -> None:
    folder = copy_model(tiny_model, "flux", tmp_path / "model", max_shard_size="20KB")
    index = folder / "transformer/diffusion_pytorch_model.safetensors.index.json"
    index.write_text(index.read_text()[:50])
    with pytest.raises(ModelLoadError, match=r"cannot read .*index\.json .*re-download it"):
        backbone_class("flux").load(folder, k=1, cache_dir=tmp_path / "cache")
    (folder / "transformer/config.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ModelLoadError, match=r"cannot read .*config\.json .*re-download it"):
        backbone_class("flux").load(folder, k=1, cache_dir=tmp_path / "cache")


def test_damaged_model_through_the_cli(
    tiny_model: Callable[..., Path],
    shared_data: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    folder = copy_model(tiny_model, "flux", tmp_path / "model")
    victim = folder / "transformer/diffusion_pytorch_model.safetensors"
    truncate(victim)
    args = [*davis_args(shared_data, tmp_path / "out"), "--short-side", "64"]
    args += ["--model", str(folder), "--family", "flux", "--t", "90", "--k", "2"]
    capfd.readouterr()  # building the tiny model prints its own bars
    code = cli.main([*args, "--cache-dir", str(tmp_path / "c")])
    err = capfd.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ditf-track: error: model file {victim} is damaged")


# -- the text-embedding cache -------------------------------------------------------------------
def load_flux(folder: Path, cache: Path) -> DiTFExtractor:
    return DiTFExtractor.from_pretrained(
        folder, family="flux", t=90, k=2, prompt="a photo of a dog", cache_dir=cache
    )


def encoder_loads(ex: DiTFExtractor) -> int:
    assert ex.backbone.conditioner is not None
    return ex.backbone.conditioner.encoder_loads


@pytest.mark.parametrize("damage", [flip_data_bytes, truncate])
def test_damaged_text_embedding_is_re_encoded(
    tiny_model: Callable[..., Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], None],
) -> None:
    folder = tiny_model("flux")
    first = load_flux(folder, tmp_path)
    good = first.backbone.condition("a photo of a dog")
    (text_file,) = (tmp_path / "text").glob("*.safetensors")
    damage(text_file)
    with caplog.at_level(logging.WARNING):
        second = load_flux(folder, tmp_path)
    assert encoder_loads(second) == 1, "a damaged embedding was trusted"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"text cache file {text_file} is damaged" in warnings[0].getMessage()
    torch.testing.assert_close(second.backbone.condition("a photo of a dog").embeds, good.embeds)
    # the re-encoded file replaced the damaged one and is trusted again
    third = load_flux(folder, tmp_path)
    assert encoder_loads(third) == 0


def test_text_embedding_store_failure_warns_and_continues(
    tiny_model: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import safetensors.torch

    def full_disk(*args: Any, **kwargs: Any) -> None:
        Path(args[1]).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with caplog.at_level(logging.WARNING):
        ex = load_flux(tiny_model("flux"), tmp_path)
    assert np.isfinite(ex.extract(np.zeros((1, 64, 64, 3), np.uint8)).features.numpy()).all()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "could not store the text embedding in the cache folder" in warnings[0]
    assert "No space left on device" in warnings[0]
    assert list((tmp_path / "text").iterdir()) == [], "a partial file was left behind"


def test_cache_dir_that_is_a_file_fails_before_loading(
    tiny_model: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffusers

    def no_pipeline(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(diffusers.FluxPipeline, "from_pretrained", no_pipeline)
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("my notes")
    with pytest.raises(ConfigError, match=r"cache folder .*cache is a file, not a folder"):
        load_flux(tiny_model("flux"), not_a_folder)
    assert not_a_folder.read_text() == "my notes"


@pytest.mark.parametrize("action", [["info"], ["clear"], ["clear", "--text"]])
def test_cache_command_with_a_file_as_cache_dir(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], action: list[str]
) -> None:
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("keep me")
    code = cli.main(["cache", *action, "--cache-dir", str(not_a_folder)])
    out = capfd.readouterr()
    assert code == 1
    assert out.err.strip().splitlines() == [
        f"ditf-track: error: cache folder {not_a_folder} is a file, not a folder; pass "
        "--cache-dir (or set DITF_TRACK_CACHE to) a folder, or remove that file"
    ]
    assert not_a_folder.read_text() == "keep me"


# -- log output ---------------------------------------------------------------------------------
def test_library_warnings_print_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A huggingface_hub warning (own handler, propagating) and a library Python warning."""
    import warnings

    from huggingface_hub.utils import logging as hub_logging

    from ditf_track.cli import cache as cli_cache

    hub_logger = hub_logging.get_logger("huggingface_hub.file_download")
    # the hub's own handler (what a user sees) kept the stderr of the test that imported it
    for handler in logging.getLogger("huggingface_hub").handlers:
        monkeypatch.setattr(handler, "stream", sys.stderr)
    real_info = cli_cache.cache_info

    def noisy_info(*args: Any, **kwargs: Any) -> Any:
        hub_logger.warning("Retrying in 1s [Retry 1/5].")
        warnings.warn("`foo` is deprecated\nand will go", FutureWarning, stacklevel=1)
        return real_info(*args, **kwargs)

    monkeypatch.setattr(cli_cache, "cache_info", noisy_info)
    code = cli.main(["cache", "info", "--cache-dir", str(tmp_path)])
    err = capfd.readouterr().err
    assert code == 0
    assert err.count("Retrying in 1s") == 1, err
    assert "ditf-track: WARNING: FutureWarning: `foo` is deprecated and will go\n" in err
    assert len(err.splitlines()) == 2, err


def test_python_warnings_are_one_log_line(
    shared_data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    palette_mask = shared_data / "davis/Annotations/480p/dog/00000.png"
    rgb_mask = tmp_path / "rgb.png"
    with Image.open(palette_mask) as img:
        img.convert("RGB").save(rgb_mask)
    args = davis_args(shared_data, tmp_path / "out", end=3)
    args[args.index("--mask") + 1] = str(rgb_mask)
    code = cli.main([*args, "--preset", "lab", "--short-side", "64", "--quiet"])
    err = capfd.readouterr().err
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ditf-track: WARNING: RGB mask {rgb_mask} was converted")
    assert "UserWarning" not in err
    assert "warnings.warn" not in err


def test_small_object_warning_does_not_advise_the_default(
    shared_data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    labels = read_mask(shared_data / "davis/Annotations/480p/dog/00000.png").labels.copy()
    labels[10:12, 10:12] = 2  # 4 px, far below one feature cell
    mask = write_mask(tmp_path / "00000.png", labels)
    for mode, advice in (("area", False), ("nearest", True)):
        args = davis_args(shared_data, tmp_path / mode, end=3)
        args[args.index("--mask") + 1] = str(mask)
        code = cli.main([*args, "--preset", "lab", "--short-side", "64", "--label-mode", mode])
        err = capfd.readouterr().err
        assert code == 0, err
        (line,) = [line for line in err.splitlines() if line.strip()]
        assert line.startswith("ditf-track: WARNING: object(s) 2 in ")
        assert ("use area labels" in line) is advice
