"""TSN frame indices and few-shot episode sampling invariants."""
from pathlib import Path

import numpy as np
import pytest

from tap_fast.data.index import DatasetIndex, VideoRecord
from tap_fast.data.sampling import EpisodeSampler, episode_rng, tsn_frame_indices


@pytest.mark.parametrize("n, t", [(32, 8), (33, 8), (8, 8), (100, 6), (5, 8), (1, 4), (7, 3)])
def test_tsn_test_mode_is_segment_centre(n, t):
    idx = tsn_frame_indices(n, t, train=False)
    assert idx.shape == (t,) and idx.dtype == np.int64
    assert np.all(np.diff(idx) >= 0) and idx.min() >= 0 and idx.max() < n
    seg = n / t
    expect = np.minimum(((np.arange(t) + 0.5) * seg).astype(int), n - 1)
    np.testing.assert_array_equal(idx, expect)


@pytest.mark.parametrize("n, t", [(32, 8), (33, 8), (8, 8), (100, 6), (5, 8), (1, 4), (7, 3)])
def test_tsn_train_mode_within_segments(n, t):
    rng = np.random.default_rng(0)
    draws = np.stack([tsn_frame_indices(n, t, train=True, rng=rng) for _ in range(400)])
    assert np.all(np.diff(draws, axis=1) >= 0)
    assert draws.min() >= 0 and draws.max() < n
    seg = n / t
    for i in range(t):
        lo, hi = int(np.floor(i * seg)), max(int(np.ceil((i + 1) * seg)) - 1, int(np.floor(i * seg)))
        col = draws[:, i]
        assert col.min() >= lo and col.max() <= min(hi, n - 1)
        # every frame of the segment is reachable (random, not fixed)
        assert set(np.unique(col)) == set(range(lo, min(hi, n - 1) + 1))


def test_tsn_segments_are_exact_where_floating_point_is_not():
    """Segment k is [k n / T, (k + 1) n / T) in exact arithmetic: k * (n / T) in floats misses integer
    boundaries (7 * (29 / 7) = 29.000000000000004), which moved a test-time centre by a frame
    (n 14, T 5: centre 7.0 came out as frame 6) and, in training, let a segment draw the first frame
    of the next one, or its last frame twice as often (n 29, T 7)."""
    for t in (3, 5, 7, 10, 14):
        for n in range(1, 300):
            centres = (2 * np.arange(t) + 1) * n // (2 * t)
            np.testing.assert_array_equal(tsn_frame_indices(n, t, train=False), centres, err_msg=f"n={n} T={t}")
    rng = np.random.default_rng(0)
    for n, t in ((29, 7), (58, 14)):
        draws = np.stack([tsn_frame_indices(n, t, train=True, rng=rng) for _ in range(3000)])
        for i in range(t):
            lo, hi = i * n // t, -(-(i + 1) * n // t) - 1
            values, counts = np.unique(draws[:, i], return_counts=True)
            assert values.tolist() == list(range(lo, hi + 1)), (n, t, i)
            assert counts.max() < 1.4 * counts.min(), (n, t, i, counts)  # uniform within the segment


def test_tsn_fewer_frames_than_segments_repeats():
    idx = tsn_frame_indices(3, 8, train=False)
    assert len(idx) == 8 and set(idx.tolist()) == {0, 1, 2}


def test_tsn_bad_input():
    with pytest.raises(ValueError, match="num_frames"):
        tsn_frame_indices(0, 8, train=False)
    with pytest.raises(ValueError, match="num_segments"):
        tsn_frame_indices(8, 0, train=False)
    with pytest.raises(ValueError, match="rng"):
        tsn_frame_indices(8, 4, train=True)


def _index(classes=10, videos=6, split="test"):
    return DatasetIndex(VideoRecord(Path(f"/d/c{c}/{v}.webm"), f"c{c}", split, 32)
                        for c in range(classes) for v in range(videos))


@pytest.mark.parametrize("way, shot, query", [(5, 1, 1), (5, 5, 1), (3, 2, 3)])
def test_episode_invariants(way, shot, query):
    sampler = EpisodeSampler(_index(), "test", way=way, shot=shot, query=query, seed=3)
    for ep in (sampler.sample(k) for k in range(50)):
        assert len(set(ep.class_names)) == way
        assert len(ep.support) == way * shot and len(ep.query) == way * query
        for c, name in enumerate(ep.class_names):
            assert all(r.class_name == name for r in ep.support[c * shot:(c + 1) * shot])
            assert all(r.class_name == name for r in ep.query[c * query:(c + 1) * query])
        assert not {r.path for r in ep.support} & {r.path for r in ep.query}
        assert len({r.path for r in ep.support + ep.query}) == way * (shot + query)
        assert [ep.class_names[l] for l in ep.query_labels] == [r.class_name for r in ep.query]
        assert [ep.class_names[l] for l in ep.support_labels] == [r.class_name for r in ep.support]


def test_episode_deterministic_by_id():
    a = EpisodeSampler(_index(), "test", seed=7)
    b = EpisodeSampler(_index(), "test", seed=7)
    # order of requests does not matter: episode k is a function of (seed, k)
    eps_a = [a.sample(k) for k in range(20)]
    eps_b = [b.sample(k) for k in reversed(range(20))][::-1]
    for x, y in zip(eps_a, eps_b):
        assert x.class_names == y.class_names and x.support == y.support and x.query == y.query
    c = EpisodeSampler(_index(), "test", seed=8)
    assert any(a.sample(k).support != c.sample(k).support for k in range(5))
    assert len({tuple(e.class_names) for e in eps_a}) > 10
    assert [e.episode_id for e in EpisodeSampler(_index(), "test", num_episodes=4)] == [0, 1, 2, 3]


def test_too_few_videos_and_classes():
    with pytest.raises(ValueError, match=r"class 'c0' has 3 videos, the episode needs 6 \(shot 5 \+ query 1\)"):
        EpisodeSampler(_index(videos=3), "test", way=5, shot=5, query=1)
    with pytest.raises(ValueError, match="split 'test' has 4 classes, a 5-way episode needs at least 5"):
        EpisodeSampler(_index(classes=4), "test", way=5)
    with pytest.raises(ValueError, match="way"):
        EpisodeSampler(_index(), "test", way=0)


def test_episode_rng_streams_differ():
    a = episode_rng(0, 5, 0).integers(1 << 30, size=4)
    b = episode_rng(0, 5, 1).integers(1 << 30, size=4)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, episode_rng(0, 5, 0).integers(1 << 30, size=4))
