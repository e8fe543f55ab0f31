"""Hub access and lean loading (:mod:`ditf_track.hub`), and the block-k hooks.

The suite runs with ``HF_HUB_OFFLINE=1``; cases that need the Hub online unset it and replace
the hub client's requests with monkeypatched answers, so nothing reaches the network.
"""

from __future__ import annotations

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
