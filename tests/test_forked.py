"""forked.py: a share of the work in a child, and every way it falls back to the caller."""

from __future__ import annotations

import os
import threading

import pytest

from pask_ipvs import forked


@pytest.fixture(autouse=True)
def two_cpus(children_on, monkeypatch):
    """The tests' machine may have one CPU: forked.usable() is told it has two."""
    monkeypatch.delenv(forked.ENV, raising=False)


def _square_and_pid(n: int) -> tuple[int, int]:
    return n * n, os.getpid()


def test_the_child_computes_the_value_in_another_process():
    child = forked.start(_square_and_pid, 12)
    assert child is not None
    value, pid = child.result()
    assert value == 144
    assert pid == child.pid != os.getpid()


def test_a_big_answer_comes_through_the_pipe_whole():
    # far beyond a pipe's buffer: the child blocks writing until the parent reads
    child = forked.start(lambda: [bytes([i % 256]) * 1000 for i in range(3000)])
    assert child is not None
    got = child.result()
    assert len(got) == 3000 and got[257] == bytes([1]) * 1000


def _raise():
    raise ValueError("bad item")


def _die():
    os._exit(3)


def test_an_exception_in_the_child_is_reported_not_raised_as_is():
    child = forked.start(_raise)
    assert child is not None
    with pytest.raises(forked.ChildFailed, match="bad item"):
        child.result()


def test_a_child_that_dies_gives_no_value():
    child = forked.start(_die)
    assert child is not None
    with pytest.raises(forked.ChildFailed, match="status"):
        child.result()


def test_an_answer_that_cannot_be_pickled_is_a_failure():
    child = forked.start(lambda: threading.Lock())
    assert child is not None
    with pytest.raises(forked.ChildFailed):
        child.result()


def test_the_child_is_reaped():
    child = forked.start(_square_and_pid, 2)
    child.result()
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)


def test_no_child_when_turned_off(monkeypatch):
    monkeypatch.setenv(forked.ENV, "0")
    assert not forked.usable()
    assert forked.start(_square_and_pid, 2) is None


def test_no_child_on_one_cpu(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert forked.start(_square_and_pid, 2) is None


def test_no_child_while_another_thread_runs():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert forked.start(_square_and_pid, 2) is None
    finally:
        stop.set()
        t.join()
    assert forked.usable()


def test_no_child_when_fork_fails(monkeypatch):
    def no_fork():
        raise OSError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(os, "fork", no_fork)
    before = len(os.listdir("/proc/self/fd"))
    assert forked.start(_square_and_pid, 2) is None
    assert len(os.listdir("/proc/self/fd")) == before      # the pipe is closed again


def test_buffered_output_is_not_written_twice(tmp_path):
    import subprocess
    import sys
    script = ("import os, sys\n"
              "os.sched_getaffinity = lambda pid: {0, 1}\n"
              "from pask_ipvs import forked\n"
              "sys.stdout.write('before ')\n"
              "c = forked.start(int, '7')\n"
              "print(c.result())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={**os.environ, forked.ENV: "1"})
    assert out.stdout == "before 7\n"


def _sleep_long():
    import time
    time.sleep(60)
    return "late"


def test_an_abandoned_child_is_ended_and_reaped_at_once():
    import time
    child = forked.start(_sleep_long)
    assert child is not None
    t = time.monotonic()
    child.abandon()
    assert time.monotonic() - t < 10
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)


def test_a_child_ends_with_its_parent(tmp_path):
    """A pask-apply killed mid-run takes its child with it (no share carried on alone)."""
    import subprocess
    import sys
    import time
    script = ("import os, sys, time\n"
              "os.sched_getaffinity = lambda pid: {0, 1}\n"
              "from pask_ipvs import forked\n"
              "c = forked.start(time.sleep, 60)\n"
              "print(c.pid, flush=True)\n"
              "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, forked.ENV: "1"})
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{child}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":                      # dead, waiting for init to reap it
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"child {child} outlived its parent")
