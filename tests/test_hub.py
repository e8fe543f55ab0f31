"""Hub access and lean loading (:mod:`ditf_track.hub`), and the block-k hooks.

The suite runs with ``HF_HUB_OFFLINE=1``; cases that need the Hub online unset it and replace
the hub client's requests with monkeypatched answers, so nothing reaches the network.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ditf_track.backbones import ModelSource, backbone_class
from ditf_track.backbones.hooks import HookSet
from ditf_track.errors import ModelLoadError
from ditf_track.hub import folder_fingerprint


def one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    return message


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite runs with an offline hub; these cases need it online."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.mark.faults
@pytest.mark.parametrize(
    ("status", "reachable"), [(404, True), (401, True), (503, False), (None, False)]
)
def test_hub_probe(
    online: None, monkeypatch: pytest.MonkeyPatch, status: int | None, reachable: bool
) -> None:
    """Any HTTP answer means reachable; none, or a 5xx, sends every file to the local cache."""
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    calls = []

    def head(url: str, **kwargs: Any) -> None:
        calls.append(kwargs)
        if status is None:
            raise httpx2.ConnectError("[Errno 111] Connection refused")
        request = httpx2.Request("HEAD", url)
        raise HfHubHTTPError(f"{status}", response=httpx2.Response(status, request=request))

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", head)
    source = ModelSource("someone/some-model")
    assert source.pretrained_kwargs()["local_files_only"] is (not reachable)
    source.pretrained_kwargs()
    assert len(calls) == 1, "the Hub is probed once per model"
    assert calls[0]["timeout"] <= 10
    assert (source.unreachable is None) is reachable
    assert not source.offline


@pytest.mark.faults
def test_unknown_and_gated_ids_online_are_one_line(
    online: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, **k: None)
    errors = {"nobody/no-such-model": RepositoryNotFoundError, "org/gated": GatedRepoError}

    def download(repo_id: str, *args: Any, **kwargs: Any) -> str:
        assert kwargs["local_files_only"] is False
        request = httpx2.Request("GET", f"https://huggingface.co/{repo_id}")
        status = 404 if repo_id.startswith("nobody") else 403
        raise errors[repo_id]("no", response=httpx2.Response(status, request=request))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(ModelLoadError) as exc:
        backbone_class("flux").load("nobody/no-such-model", k=1)
    assert "'nobody/no-such-model' was not found on the Hugging Face Hub" in one_line(
        str(exc.value)
    )
    with pytest.raises(ModelLoadError) as exc:
        backbone_class("flux").load("org/gated", k=1)
    assert "'org/gated' is gated: accept its licence" in one_line(str(exc.value))


def test_offline_unknown_hub_id_is_one_actionable_line() -> None:
    with pytest.raises(ModelLoadError) as exc:
        backbone_class("flux").load("nobody/no-such-model", k=1, local_files_only=True)
    message = str(exc.value)
    assert "nobody/no-such-model" in message
    assert "offline" in message
    assert "\n" not in message


def test_gated_model_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(*args: Any, **kwargs: Any) -> str:
        request = httpx2.Request("GET", "https://huggingface.co/black-forest-labs/FLUX.1-dev")
        raise GatedRepoError("403 gated", response=httpx2.Response(403, request=request))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(ModelLoadError) as exc:
        backbone_class("flux").load("black-forest-labs/FLUX.1-dev", k=28, local_files_only=False)
    message = str(exc.value)
    assert "black-forest-labs/FLUX.1-dev" in message
    assert "accept its licence" in message
    assert "hf auth login" in message


def test_missing_model_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model folder .*nowhere.* does not exist"):
        ModelSource(str(tmp_path / "nowhere"))
    assert ModelSource("org/model").folder is None


def test_folder_fingerprint_follows_the_text_encoder_files(tmp_path: Path) -> None:
    """A folder has no revision: edited text-encoder weights must change the cache key."""
    assert folder_fingerprint("org/model") is None
    encoder = tmp_path / "text_encoder"
    encoder.mkdir()
    (encoder / "model.safetensors").write_bytes(b"a" * 10)
    (tmp_path / "vae").mkdir()
    before = folder_fingerprint(str(tmp_path))
    assert before is not None
    assert len(before) == 16
    (tmp_path / "vae" / "weights.safetensors").write_bytes(b"v")  # not a text file
    assert folder_fingerprint(str(tmp_path)) == before
    (encoder / "model.safetensors").write_bytes(b"a" * 11)
    assert folder_fingerprint(str(tmp_path)) != before
    assert folder_fingerprint(str(tmp_path), ("vae",)) != folder_fingerprint(str(tmp_path))


def test_hooks_stop_at_block_k_and_are_removed() -> None:
    blocks = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    ran_after = []
    blocks[2].register_forward_pre_hook(lambda *_: ran_after.append(True))
    x = torch.randn(4, 3)
    with HookSet() as hooks:
        hooks.save_output(blocks[0], "first")
        hooks.save_output_and_stop(blocks[1], "k")
        hooks.run(lambda: blocks(x))
    assert not ran_after, "a block after k ran"
    torch.testing.assert_close(hooks.store["k"], torch.relu(blocks[0](x)))
    assert not blocks[0]._forward_hooks
    assert not blocks[1]._forward_hooks
    assert blocks(x).shape == (4, 2)  # the model runs whole again


def test_a_forward_that_never_reaches_block_k_is_an_error() -> None:
    model = nn.Linear(3, 3)
    with HookSet() as hooks:
        hooks.save_input_and_stop(nn.Linear(3, 3), "elsewhere")  # not in the forward
        with pytest.raises(RuntimeError, match="without reaching block k"):
            hooks.run(lambda: model(torch.zeros(1, 3)))


# -- damaged downloads, an unreachable Hub (faults) ---------------------------------------------


def copy_model(tiny_model: Callable[..., Path], family: str, dst: Path, **options: Any) -> Path:
    return Path(shutil.copytree(tiny_model(family, **options), dst))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def break_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:16] = b"\x00" * 8  # the JSON header now starts with NULs
    path.write_bytes(bytes(data))


def fake_hub_cache(tiny_model: Callable[..., Path], family: str, root: Path, repo: str) -> Path:
    """A Hugging Face cache holding ``repo`` (a tiny model) at one commit; returns the snapshot."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return Path(shutil.copytree(tiny_model(family), repo_dir / "snapshots" / commit))


@pytest.mark.faults
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


@pytest.mark.faults
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


@pytest.mark.faults
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


@pytest.mark.faults
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
