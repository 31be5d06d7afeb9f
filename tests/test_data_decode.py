"""CPU decoder: frame selection, LRU cache, and named errors for bad files."""
import pickle

import numpy as np
import pytest

from tap_fast.data.decode import (
    CachedDecoder, FrameIndexError, PyAVDecoder, VideoDecodeError, VideoDecoder, as_decode_error, decode_frames,
    decode_video,
)
from tap_fast.data.index import DatasetIndex
from tap_fast.data.synthetic import ensure_synthetic_dataset


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    p = ensure_synthetic_dataset(tmp_path_factory.mktemp("syn"), videos_per_class=2, frames=16,
                                 families=["triangle_horizontal"], workers=1, progress=False)
    return [r.path for r in DatasetIndex.load(p)]


def test_decode_frames_selects_indices(videos):
    full = decode_video(videos[0])
    assert full.shape == (16, 64, 64, 3) and full.dtype == np.uint8
    idx = np.array([0, 3, 3, 15])
    np.testing.assert_array_equal(decode_frames(videos[0], idx), full[idx])
    np.testing.assert_array_equal(PyAVDecoder().decode(videos[0], [1, 2]), full[[1, 2]])
    assert isinstance(PyAVDecoder(), VideoDecoder) and isinstance(CachedDecoder(), VideoDecoder)


def test_cached_decoder_matches_and_is_bounded(videos):
    one = decode_video(videos[0]).nbytes
    dec = CachedDecoder(max_bytes=int(one * 1.5))
    for p in videos[:3]:
        np.testing.assert_array_equal(dec.decode(p, [0, 5]), decode_frames(p, [0, 5]))
    assert dec.misses == 3 and len(dec) == 1 and dec.cached_bytes == one  # LRU kept only the newest
    dec.decode(videos[2], [1])
    assert dec.hits == 1
    dec.decode(videos[0], [1])
    assert dec.misses == 4
    with pytest.raises(ValueError, match="read-only"):
        dec.video(videos[0])[0, 0, 0, 0] = 1  # cached arrays are shared: callers cannot corrupt them
    clone = pickle.loads(pickle.dumps(dec))  # as sent to a DataLoader worker: empty cache
    assert len(clone) == 0 and clone.max_bytes == dec.max_bytes
    np.testing.assert_array_equal(clone.decode(videos[1], [2]), decode_frames(videos[1], [2]))


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.webm"
    for fn in (decode_video, CachedDecoder().video):
        with pytest.raises(FileNotFoundError, match="nope.webm"):
            fn(missing)


def test_garbage_file(tmp_path):
    bad = tmp_path / "garbage.webm"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match="garbage.webm") as e:
        decode_frames(bad, [0])
    assert e.value.path == str(bad) and e.value.reason
    err = pickle.loads(pickle.dumps(e.value))
    assert isinstance(err, VideoDecodeError) and err.path == str(bad)
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty.webm"):
        decode_video(empty)


def test_truncated_file(videos, tmp_path):
    cut = tmp_path / "cut.webm"
    data = videos[0].read_bytes()
    cut.write_bytes(data[:120])  # header only
    with pytest.raises(VideoDecodeError, match="cut.webm"):
        decode_video(cut)
    cut.write_bytes(data[: len(data) // 2])  # half the frames: the last index no longer exists
    with pytest.raises((VideoDecodeError, FrameIndexError), match="cut.webm"):
        decode_frames(cut, [0, 15])


def test_frame_index_out_of_range(videos):
    with pytest.raises(FrameIndexError, match=r"frame index 16 is out of range for .*which has 16 frames"):
        CachedDecoder().decode(videos[0], [0, 16])
    with pytest.raises(FrameIndexError, match="-1"):
        decode_frames(videos[0], [-1])
    with pytest.raises(TypeError, match="ints"):
        decode_frames(videos[0], [0.5])


def test_stream_without_codec_context(tmp_path, monkeypatch):
    """A header cut short can leave PyAV a video stream with codec_context None: a named error."""
    import av

    class Container:
        streams = type("Streams", (), {"video": [type("Stream", (), {"codec_context": None})()]})()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    cut = tmp_path / "cut.mp4"
    cut.write_bytes(b"\0" * 64)
    monkeypatch.setattr(av, "open", lambda *a, **k: Container())
    with pytest.raises(VideoDecodeError, match="cut.mp4: no codec parameters"):
        decode_video(cut)


def test_a_decode_error_from_a_dataloader_worker_is_recognised():
    """Worker exceptions come back as RuntimeError("Caught VideoDecodeError in DataLoader worker ...")."""
    from torch._utils import ExceptionWrapper

    try:
        raise VideoDecodeError("/data/a b/v.mp4", "bad packet: 7")
    except VideoDecodeError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(Exception) as info:
        wrapped.reraise()
    found = as_decode_error(info.value)
    assert (found.path, found.reason) == ("/data/a b/v.mp4", "bad packet: 7")
    assert as_decode_error(RuntimeError("something else")) is None


def test_a_frame_index_error_is_a_decode_error_in_the_process_and_from_a_worker():
    """A video shorter than its index entry: the named one-line error path catches VideoDecodeError."""
    from torch._utils import ExceptionWrapper

    error = FrameIndexError("/data/a b/v.mp4", 12, 10)
    assert isinstance(error, IndexError) and as_decode_error(error) is error
    assert str(error) == ("cannot decode video /data/a b/v.mp4: frame index 12 is out of range for this video, "
                          "which has 10 frames")
    try:
        raise error
    except FrameIndexError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(Exception) as info:
        wrapped.reraise()
    found = as_decode_error(info.value)
    assert (found.path, found.reason) == (error.path, error.reason)
