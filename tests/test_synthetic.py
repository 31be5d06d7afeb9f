"""The synthetic benchmark: class table, determinism, twins, decodability, atomic caching."""
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from tap_fast.data.decode import decode_video
from tap_fast.data.index import DatasetIndex
from tap_fast.data.synthetic import (
    BASIC_ORDERS, GENERATOR_VERSION, MOTIONS, ORDERS, SYNTHETIC_CLASSES, SYNTHETIC_FAMILIES, _order_u,
    dataset_dir_name, ensure_synthetic_dataset, render_clip, sample_nuisance, time_reversed_twin, write_webm,
)

TINY = dict(videos_per_class=3, frames=16, families=["disc_horizontal", "cross_horizontal"], progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("syn"), workers=1, **TINY)


def test_class_table_families_and_splits():
    assert len(SYNTHETIC_CLASSES) == 100 and len(SYNTHETIC_FAMILIES) == 13
    fam_split = {}
    for fam, members in SYNTHETIC_FAMILIES.items():
        assert [c.order for c in members] in (list(ORDERS), list(BASIC_ORDERS))
        assert len({(c.shape, c.motion, c.split) for c in members}) == 1  # one look, one split per family
        assert all(c.description for c in members) and len({c.description for c in members}) == len(members)
        fam_split[fam] = (members[0].split, len(members))
    # train 8 x 8, val 1 x 8 + 1 x 4 (the basic orders), test 3 x 8
    assert Counter(fam_split.values()) == {("train", 8): 8, ("val", 8): 1, ("val", 4): 1, ("test", 8): 3}
    assert Counter(c.split for c in SYNTHETIC_CLASSES.values()) == {"train": 64, "val": 12, "test": 24}
    train = [c for c in SYNTHETIC_CLASSES.values() if c.split == "train"]
    assert {c.motion for c in SYNTHETIC_CLASSES.values()} == {c.motion for c in train} == set(MOTIONS)
    for c in SYNTHETIC_CLASSES.values():
        if c.split != "train":  # neither the motion nor the shape alone identifies a held-out family
            assert any(t.motion == c.motion and t.shape != c.shape for t in train), c.name
            assert any(t.shape == c.shape and t.motion != c.motion for t in train), c.name
    for name in SYNTHETIC_CLASSES:
        twin = time_reversed_twin(name)
        assert SYNTHETIC_CLASSES[twin].family == SYNTHETIC_CLASSES[name].family
        assert time_reversed_twin(twin) == name
    assert time_reversed_twin("disc_left_to_right_twice") == "disc_right_to_left_twice"
    assert time_reversed_twin("disc_left_right_left_twice") == "disc_left_right_left_twice"  # palindrome


def test_orders_share_the_distribution_of_u():
    # the motion parameter (position, size, angle, ...) is uniform over the motion for every
    # order: one frame, or the mean over frames, does not tell the orders of a family apart
    s = np.linspace(0, 1, 200001)
    bins = np.linspace(0, 1, 21)
    ref = np.histogram(s, bins)[0] / len(s)
    us = {}
    for order in ORDERS:
        us[order] = _order_u(order, s)
        assert us[order].min() >= 0 and us[order].max() <= 1
        np.testing.assert_allclose(np.histogram(us[order], bins)[0] / len(s), ref, atol=1e-4, err_msg=order)
        np.testing.assert_allclose(np.sort(us[order]), s, atol=1e-4, err_msg=order)
    # ... while the orders themselves are all different paths
    for o1 in ORDERS:
        for o2 in ORDERS:
            if o1 < o2 and {o1, o2} not in ({"forward", "backward"}, {"twice_forward", "twice_backward"}):
                assert np.abs(us[o1] - us[o2]).mean() > 0.1, (o1, o2)
    # the double orders really go twice (u crosses 1/2 upwards twice)
    for order, ups in (("forward", 1), ("twice_forward", 2), ("out_back_twice", 2), ("back_out_twice", 2)):
        up = (us[order][:-1] < 0.5) & (us[order][1:] >= 0.5)
        assert up.sum() == ups, order
    with pytest.raises(ValueError, match="unknown order"):
        _order_u("sideways", s)


def test_render_deterministic_and_seed_dependent():
    nz = lambda seed: sample_nuisance(np.random.default_rng(seed), "triangle", 12, 32)
    a, b, c = (render_clip("triangle_growing", nz(s)) for s in (1, 1, 2))
    assert a.shape == (12, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 5


def test_render_moves_the_shape():
    # consecutive frames differ during the motion (the class is visible), all orders differ
    nz = sample_nuisance(np.random.default_rng(0), "disc", 16, 64)
    clips = {o.order: render_clip(o.name, nz) for o in SYNTHETIC_FAMILIES["disc_horizontal"]}
    assert set(clips) == set(ORDERS)
    fwd = clips["forward"].astype(int)
    assert np.abs(fwd[-1] - fwd[0]).mean() > 2
    for o1 in ORDERS:
        for o2 in ORDERS:
            if o1 < o2:
                assert np.abs(clips[o1].astype(int) - clips[o2]).mean() > 1, (o1, o2)


@pytest.mark.parametrize("family,order", [("cross_vertical", "forward"), ("tee_rotation", "forward"),
                                          ("square_orbit", "twice_forward"), ("square_scale", "twice_forward")])
def test_time_reversed_twin_is_the_reversed_clip(tmp_path, family, order):
    fwd = next(c.name for c in SYNTHETIC_FAMILIES[family] if c.order == order)
    bwd = time_reversed_twin(fwd)
    assert SYNTHETIC_CLASSES[bwd].order == order.replace("forward", "backward")
    nz = sample_nuisance(np.random.default_rng(5), SYNTHETIC_CLASSES[fwd].shape, 16, 64)
    a, b = render_clip(fwd, nz), render_clip(bwd, nz)
    np.testing.assert_array_equal(a[::-1], b)  # exact before encoding
    # and approximately after the lossy VP9 round trip
    write_webm(tmp_path / "a.webm", a)
    write_webm(tmp_path / "b.webm", b)
    da, db = decode_video(tmp_path / "a.webm").astype(int), decode_video(tmp_path / "b.webm").astype(int)
    twin_err = np.abs(da[::-1] - db).mean()
    other = render_clip(bwd, sample_nuisance(np.random.default_rng(6), SYNTHETIC_CLASSES[fwd].shape, 16, 64))
    assert twin_err < 4 and np.abs(da[::-1] - other).mean() > 4 * twin_err


def test_tiny_dataset_layout_and_decodability(tiny):
    root = tiny.parent
    idx = DatasetIndex.load(tiny)
    assert idx.classes("train") == [c.name for c in SYNTHETIC_FAMILIES["disc_horizontal"]]
    assert idx.classes("test") == [c.name for c in SYNTHETIC_FAMILIES["cross_horizontal"]]
    assert idx.classes("val") == [] and len(idx) == 16 * 3
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["frames"] == 16 and manifest["videos_per_class"] == 3 and len(manifest["classes"]) == 16
    assert manifest["generator_version"] == GENERATOR_VERSION and f"-v{GENERATOR_VERSION}-" in root.name
    for r in idx:
        assert r.path.parent.name == r.class_name and r.num_frames == 16
        v = decode_video(r.path)
        assert v.shape == (16, 64, 64, 3) and v.dtype == np.uint8


def test_generation_deterministic_across_workers_and_seeds(tiny, tmp_path):
    again = ensure_synthetic_dataset(tmp_path / "b", workers=2, **TINY)
    other = ensure_synthetic_dataset(tmp_path / "c", workers=1, seed=1, **TINY)
    assert again.read_text() == tiny.read_text()  # same relative paths, classes, splits
    a, b, c = (DatasetIndex.load(p).records() for p in (tiny, again, other))
    for ra, rb in zip(a[::5], b[::5]):
        np.testing.assert_array_equal(decode_video(ra.path), decode_video(rb.path))
    assert np.abs(decode_video(a[0].path).astype(int) - decode_video(c[0].path)).mean() > 5


def test_cached_and_leftover_temp_dirs_cleaned(tiny):
    parent = tiny.parent.parent
    mtime = tiny.stat().st_mtime_ns
    # an interrupted run of a dead process left a half-written temp dir behind
    stale = parent / f".{tiny.parent.name}.tmp-999999999-deadbeef"
    (stale / "videos").mkdir(parents=True)
    (stale / "index.jsonl").write_text("garbage")
    assert ensure_synthetic_dataset(parent, workers=1, **TINY) == tiny  # cached: nothing regenerated
    assert tiny.stat().st_mtime_ns == mtime
    # a different setting is a different directory
    name = dataset_dir_name(0, 3, 16, 64, [c.name for f in TINY["families"] for c in SYNTHETIC_FAMILIES[f]])
    assert name == tiny.parent.name and "-16f-" in name
    # when the cached dir is missing, generation cleans the dead leftover and rebuilds
    (parent / "other").mkdir()
    (stale.parent / f".{tiny.parent.name}.tmp-999999999-cafecafe").mkdir()
    os.rename(tiny.parent, parent / "other" / "moved")
    try:
        assert ensure_synthetic_dataset(parent, workers=1, **TINY) == tiny
        assert not list(parent.glob(".*.tmp-*"))
        assert (tiny.parent / "manifest.json").is_file()
    finally:
        if not tiny.parent.exists():
            os.rename(parent / "other" / "moved", tiny.parent)


def test_incomplete_dir_is_not_used(tmp_path):
    # a directory without its manifest (the completeness marker) is never returned as ready
    kw = dict(TINY, families=["triangle_horizontal"], videos_per_class=1, frames=4)
    p = ensure_synthetic_dataset(tmp_path, workers=1, **kw)
    (p.parent / "manifest.json").unlink()
    with pytest.raises(FileExistsError, match="no manifest.json"):
        ensure_synthetic_dataset(tmp_path, workers=1, **kw)
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic families"):
        ensure_synthetic_dataset(tmp_path, families=["nope"], progress=False)
    with pytest.raises(ValueError, match="frames"):
        ensure_synthetic_dataset(tmp_path, frames=1, progress=False)
    # too large: refused before anything is drawn (it failed inside numpy, 14.6 TiB, mid-generation)
    with pytest.raises(ValueError, match="size must be <= 1024 for the synthetic set, got 1000000"):
        ensure_synthetic_dataset(tmp_path, size=1_000_000, progress=False)
    with pytest.raises(ValueError, match="frames must be <= 1024 for the synthetic set, got 5000"):
        ensure_synthetic_dataset(tmp_path, frames=5000, progress=False)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="unknown synthetic class"):
        render_clip("nope", sample_nuisance(np.random.default_rng(0), "disc", 4, 32))


def test_cli_list():
    out = subprocess.run([sys.executable, "-m", "tap_fast.data.synthetic", "--list"], capture_output=True,
                         text=True, check=True)
    assert "disc_left_to_right" in out.stdout and "100 classes in 13 families" in out.stdout
    assert "disc_right_left_right_twice" in out.stdout
    assert "RuntimeWarning" not in out.stderr


def test_cli_bad_sizes_are_one_line(tmp_path, capsys):
    from tap_fast.data.synthetic import main

    assert main(["--frames", "1", "--root", str(tmp_path)]) == 2  # was: a ValueError traceback
    assert capsys.readouterr().err == "error: frames must be an int >= 2, got 1\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family,ordered_min", [("disc_horizontal", 0.7), ("triangle_scale", 0.4)])
def test_only_the_order_separates_a_family(family, ordered_min):
    # the benchmark's point: time-pooled frames are near chance (1/8) within a family of 8 orders,
    # the same frames kept in order (T = 8, as the models sample) are not. Raw-pixel 1-NN with
    # strong nuisance: translations separate well, in-place size changes less so.
    feats = {"pooled": [], "ordered": []}
    labels = []
    members = SYNTHETIC_FAMILIES[family]
    assert len(members) == 8
    for ci, cls in enumerate(members):
        for v in range(12):
            nz = sample_nuisance(np.random.default_rng([ci, v]), cls.shape, 16, 64)
            x = render_clip(cls.name, nz).astype(np.float32)[:, ::2, ::2].mean(-1)
            x -= x.mean()
            feats["pooled"].append(x.mean(0).ravel())
            feats["ordered"].append(x[1::2].ravel())
            labels.append(ci)
    labels = np.array(labels)
    acc = {}
    for k, f in feats.items():
        f = np.array(f)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        sim = f @ f.T
        np.fill_diagonal(sim, -np.inf)
        acc[k] = (labels[sim.argmax(1)] == labels).mean()  # leave-one-out 1-NN, chance 0.125
    assert acc["pooled"] < 0.3 and acc["ordered"] > ordered_min and acc["ordered"] > 2 * acc["pooled"], acc


def test_generation_without_a_bar_says_what_it_is_doing(tmp_path, capsys):
    ensure_synthetic_dataset(tmp_path, workers=1, **{**TINY, "videos_per_class": 1})
    err = capsys.readouterr().err
    assert "generating the synthetic set (16 videos)" in err  # 2 families x 8 classes x 1 video
    assert "video/s" not in err  # no bar
