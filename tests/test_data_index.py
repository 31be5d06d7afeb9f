"""DatasetIndex: round trip, lookups and validation errors."""
from pathlib import Path

import pytest

from tap_fast.data.index import DatasetIndex, IndexFormatError, VideoRecord


def _records(root: Path):
    out = []
    for split, classes in (("train", ["a", "b"]), ("val", ["c"]), ("test", ["d", "e"])):
        for c in classes:
            for v in range(3):
                out.append(VideoRecord(root / c / f"{v}.webm", c, split, 16 + v))
    return out


def test_round_trip_and_lookups(tmp_path):
    idx = DatasetIndex(_records(tmp_path))
    path = idx.save(tmp_path / "index.jsonl")
    # paths are stored relative to the index file
    assert str(tmp_path) not in path.read_text()
    back = DatasetIndex.load(path)
    assert back == idx
    assert back.classes("train") == ["a", "b"] and back.classes("test") == ["d", "e"]
    assert back.classes() == ["a", "b", "c", "d", "e"]
    assert [r.num_frames for r in back.videos("c")] == [16, 17, 18]
    assert all(r.split == "test" for r in back.records("test")) and len(back.records("test")) == 6
    assert back.split_of("c") == "val"
    assert not list(tmp_path.glob("*.tmp"))


def test_load_resolves_relative_to_moved_dir(tmp_path):
    DatasetIndex(_records(tmp_path / "a")).save(tmp_path / "a" / "index.jsonl")
    (tmp_path / "a").rename(tmp_path / "b")
    back = DatasetIndex.load(tmp_path / "b" / "index.jsonl")
    assert back.records()[0].path == (tmp_path / "b" / "a" / "0.webm").resolve()


def test_relative_record_paths_survive_a_round_trip(tmp_path, monkeypatch):
    """Records with paths relative to the working directory (the synthetic generator's, given a
    relative root) were stored verbatim, and load() resolved them against the index's directory:
    data/syn/videos/a/0.webm came back as <cwd>/data/syn/data/syn/videos/a/0.webm."""
    monkeypatch.chdir(tmp_path)
    records = [VideoRecord(Path("data/syn/videos/a/0.webm"), "a", "train", 8),
               VideoRecord(Path("elsewhere/b/0.webm"), "b", "train", 8)]  # outside the index's directory
    back = DatasetIndex.load(DatasetIndex(records).save("data/syn/index.jsonl"))
    assert [r.path.resolve() for r in back] == [(tmp_path / r.path).resolve() for r in records]


def test_unknown_class_and_split(tmp_path):
    idx = DatasetIndex(_records(tmp_path))
    with pytest.raises(KeyError, match="'zz'"):
        idx.videos("zz")
    with pytest.raises(ValueError, match="split 'dev'"):
        idx.classes("dev")


@pytest.mark.parametrize("bad, msg", [
    (VideoRecord(Path("x.webm"), "a", "dev", 3), "split 'dev'"),
    (VideoRecord(Path("x.webm"), "a", "train", 0), "num_frames"),
    (VideoRecord(Path("x.webm"), "", "train", 3), "empty class"),
    (VideoRecord(Path("x.webm"), "d", "train", 3), "class 'd' appears in splits"),
])
def test_validation_errors(tmp_path, bad, msg):
    with pytest.raises(IndexFormatError, match=msg):
        DatasetIndex(_records(tmp_path) + [bad])


def test_duplicate_path(tmp_path):
    recs = _records(tmp_path)
    with pytest.raises(IndexFormatError, match="duplicate path"):
        DatasetIndex(recs + [recs[0]])


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        DatasetIndex.load(tmp_path / "missing.jsonl")
    p = tmp_path / "bad.jsonl"
    p.write_text('{"path": "x", "class_name": "a", "split": "train", "num_frames": 3}\nnot json\n')
    with pytest.raises(IndexFormatError, match=r"bad.jsonl:2: not valid JSON"):
        DatasetIndex.load(p)
    p.write_text('{"path": "x", "split": "train", "num_frames": 3}\n')
    with pytest.raises(IndexFormatError, match="class_name"):
        DatasetIndex.load(p)


def test_saved_index_is_readable_by_the_others_sharing_the_dataset(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = DatasetIndex(_records(tmp_path)).save(tmp_path / "index.jsonl")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # written by atomic_write, not mkstemp's 0600


def test_codecs_travel_with_the_index_but_not_its_file(tmp_path):
    assert DatasetIndex(_records(tmp_path)).codecs is None  # unknown: the decoder choice probes a few
    idx = DatasetIndex(_records(tmp_path), codecs=["vp9", "h264", "vp9"])
    assert idx.codecs == frozenset({"vp9", "h264"})
    assert DatasetIndex.load(idx.save(tmp_path / "index.jsonl")).codecs is None
