"""Atomic writes: the whole new file or the old one, synced, created as open() would create it."""
import os

import pytest

from tap_fast.atomic_write import write_atomic, write_text_atomic


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def test_mode_follows_the_umask_and_data_is_synced(tmp_path, monkeypatch, umask):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    write_text_atomic(tmp_path / "shared.json", "{}")
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert synced
    umask(0o077)
    write_text_atomic(tmp_path / "private.json", "{}")
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private.json", "shared.json"]  # no temp left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = write_text_atomic(tmp_path / "results.json", "old")

    def fail_midway(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, fail_midway)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_missing_parent_directories_are_made(tmp_path):
    assert write_text_atomic(tmp_path / "a" / "b" / "x.txt", "x").read_text() == "x"
