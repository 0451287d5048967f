"""atomic_file.write_atomic: whole or not at all, with exactly the mode asked for."""

import os
import stat

import pytest

from pask_ipvs import atomic_file
from pask_ipvs.atomic_file import write_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_the_whole_file_private_by_default(tmp_path):
    path = tmp_path / "lib" / "state.json"
    write_atomic(str(path), b"one")
    write_atomic(str(path), b"two")
    assert path.read_bytes() == b"two" and _mode(path) == 0o600
    assert os.listdir(path.parent) == ["state.json"]            # no temp file left


def test_the_mode_asked_for_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_atomic(str(tmp_path / "notify.sh"), b"#!/bin/sh\n", mode=0o755)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "notify.sh") == 0o755


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    write_atomic(str(path), b"old")

    def no_room(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atomic_file.os, "replace", no_room)
    with pytest.raises(OSError):
        write_atomic(str(path), b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["state.json"]


def test_a_temp_file_a_crashed_run_left_is_replaced(tmp_path):
    stale = tmp_path / f".tmp-state.json.{os.getpid()}"
    stale.write_bytes(b"half")
    write_atomic(str(tmp_path / "state.json"), b"whole")
    assert (tmp_path / "state.json").read_bytes() == b"whole" and not stale.exists()
