"""ClipTransform: shapes, same crop/flip for every frame, centre crop in test, determinism."""
import numpy as np
import pytest
import torch

from tap_fast.data.transforms import ClipTransform

PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _clip(t=4, h=40, w=48):
    # frame t = base + t: any spatial op applied identically keeps the per-frame differences constant
    base = np.random.default_rng(0).integers(0, 200, (h, w, 3), dtype=np.uint8)
    return np.stack([base + i for i in range(t)]).astype(np.uint8), base


def test_test_mode_centre_crop_and_normalise():
    frames, base = _clip()
    out = ClipTransform(crop=32, train=False)(frames)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    top, left = (40 - 32) // 2, (48 - 32) // 2
    expect = torch.from_numpy(frames[:, top:top + 32, left:left + 32]).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (expect - mean) / std)


def test_train_crop_and_flip_same_for_all_frames():
    frames, base = _clip()
    tf = ClipTransform(crop=32, train=True, flip=True, **PLAIN)
    windows, flips = set(), set()
    for seed in range(40):
        out = tf(frames, np.random.default_rng(seed))
        diffs = (out[1:] - out[:-1]) * 255
        torch.testing.assert_close(diffs, torch.ones_like(diffs), atol=1e-3, rtol=0)  # coherent across time
        first = out[0].permute(1, 2, 0).numpy() * 255
        found = None
        for flipped in (False, True):
            img = first[:, ::-1] if flipped else first
            for top in range(40 - 32 + 1):
                for left in range(48 - 32 + 1):
                    if np.allclose(base[top:top + 32, left:left + 32], img, atol=1e-3):
                        found = (top, left, flipped)
        assert found is not None
        windows.add(found[:2])
        flips.add(found[2])
    assert len(windows) > 10 and flips == {False, True}


def test_deterministic_given_rng():
    frames, _ = _clip()
    tf = ClipTransform(crop=24, train=True, flip=True)
    a, b = tf(frames, np.random.default_rng(3)), tf(frames, np.random.default_rng(3))
    assert torch.equal(a, b)
    assert any(not torch.equal(a, tf(frames, np.random.default_rng(s))) for s in range(4, 10))


def test_resize_short_side():
    frames, _ = _clip(t=2, h=40, w=60)
    assert ClipTransform(resize=20, **PLAIN)(frames).shape == (2, 3, 20, 30)
    assert ClipTransform(resize=40, **PLAIN)(frames).shape == (2, 3, 40, 60)  # equal: untouched
    out = ClipTransform(resize=80, crop=64, **PLAIN)(frames)
    assert out.shape == (2, 3, 64, 64)
    flat = np.full((2, 40, 60, 3), 77, np.uint8)
    torch.testing.assert_close(ClipTransform(resize=20, **PLAIN)(flat), torch.full((2, 3, 20, 30), 77 / 255))


def test_bad_input():
    frames, _ = _clip()
    with pytest.raises(ValueError, match="uint8"):
        ClipTransform()(frames.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        ClipTransform()(frames[..., :2])
    with pytest.raises(ValueError, match="larger than"):
        ClipTransform(crop=64)(frames)
    with pytest.raises(ValueError, match="rng"):
        ClipTransform(crop=8, train=True)(frames)
    with pytest.raises(ValueError, match="crop"):
        ClipTransform(crop=0)
    with pytest.raises(ValueError, match="std"):
        ClipTransform(std=(1, 0, 1))
