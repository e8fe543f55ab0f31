"""Per-item noise: stable ids, one generator per (seed, id, member, stream), CPU draws."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from ditf_track.errors import InputError
from ditf_track.noise import (
    check_noise_ids,
    default_noise_ids,
    frame_noise_id,
    image_noise_id,
    item_noise,
    item_seed,
)


def test_item_noise_is_each_items_own_generator() -> None:
    """Item i's noise is ``randn`` from a CPU generator seeded by blake2b(seed, id, member,
    stream), whatever the other items of the batch (exact: the same generator, same draws)."""
    ids = ["frame:3", "frame:4", "image:ab"]
    noise = item_noise((2, 4, 6), 7, ids, 1, "latent")
    assert noise.shape == (3, 2, 4, 6)
    assert noise.dtype == torch.float32
    digest = hashlib.blake2b(b"7\0frame:4\x001\0latent", digest_size=8).digest()
    expected = torch.randn(
        (2, 4, 6), generator=torch.Generator("cpu").manual_seed(int.from_bytes(digest, "little"))
    )
    torch.testing.assert_close(noise[1], expected, rtol=0, atol=0)
    torch.testing.assert_close(item_noise((2, 4, 6), 7, ids[1:2], 1, "latent")[0], expected)
    # every part of the seed matters
    base = item_seed(7, "frame:4", 1, "latent")
    others = {
        item_seed(8, "frame:4", 1, "latent"),
        item_seed(7, "frame:5", 1, "latent"),
        item_seed(7, "frame:4", 0, "latent"),
        item_seed(7, "frame:4", 1, "vae"),
    }
    assert base not in others
    assert len(others) == 4
    assert 0 <= base < 2**64


def test_stable_ids() -> None:
    a = np.random.RandomState(0).randint(0, 256, (32, 48, 3), dtype=np.uint8)
    b = a.copy()
    b[5, 5, 0] ^= 1
    assert image_noise_id(a) == image_noise_id(a.copy()) == image_noise_id(torch.from_numpy(a))
    assert image_noise_id(a) != image_noise_id(b)
    assert image_noise_id(a) != image_noise_id(a.reshape(48, 32, 3))  # same bytes, other shape
    assert default_noise_ids(np.stack([a, b, a])) == [
        image_noise_id(a),
        image_noise_id(b),
        image_noise_id(a),
    ]
    assert default_noise_ids(a) == [image_noise_id(a)]
    assert frame_noise_id(np.int64(12)) == frame_noise_id(12) == "frame:12"
    with pytest.raises(ValueError, match="frame index"):
        frame_noise_id(-1)


def test_check_noise_ids() -> None:
    assert check_noise_ids(("frame:1", "frame:2"), 2) == ["frame:1", "frame:2"]
    with pytest.raises(InputError, match="3 noise ids for 2 images; give one id per image"):
        check_noise_ids(["a", "b", "c"], 2)
    with pytest.raises(InputError, match="not one string"):
        check_noise_ids("ab", 2)
