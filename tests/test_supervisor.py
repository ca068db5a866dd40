"""mnistkit.supervisor on its own, with plain processes (no MLServer): start, replace, stop, and
a SIGTERM during start-up, both with the template process (the default on Linux) and without it
(where no subreaper can be set). Each scenario runs in a process of its own, as the launcher does."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnistkit.local._proc import wait_until

DRIVER = """
import os, sys, time
import mnistkit.supervisor as S
mode, scenario, out = sys.argv[1:4]
S.MIN_UPTIME = 1.0
if mode == "in-process":
    S._subreaper = lambda: False

def preload():
    if scenario == "slow-preload":
        time.sleep(2.0)
    if scenario == "bad-preload":
        import mnistkit_no_such_module

def serve(index):
    open(os.path.join(out, f"{index}-{os.getpid()}"), "w").close()
    if scenario == "fail-start":
        return 3
    if scenario == "exit-start":
        sys.exit(4)
    if scenario == "bug-start":
        raise RuntimeError("a bug in serve")
    if scenario == "crash" and index == 0 and sum(f.startswith("0-") for f in os.listdir(out)) == 1:
        time.sleep(3.0)  # well past MIN_UPTIME (1 s): a crash, not a failed start
        os.kill(os.getpid(), 9)
    while True:
        time.sleep(1)

sys.exit(S.Supervisor(2, preload, serve).run())
"""

MODES = ["template", "in-process"]


def _start(mode: str, scenario: str, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", DRIVER, mode, scenario, str(out)], stderr=subprocess.PIPE, text=True)


def _started(out: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for f in out.iterdir():
        index, pid = f.name.split("-")
        found.setdefault(index, []).append(int(pid))
    return found


def _gone(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def _all(out: Path) -> list[int]:
    return [pid for pids in _started(out).values() for pid in pids]


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_stops_every_process_and_exits_0(mode, tmp_path):
    proc = _start(mode, "serve", tmp_path)
    assert wait_until(lambda: len(_all(tmp_path)) == 2, 30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert all(_gone(pid) for pid in _all(tmp_path))


@pytest.mark.parametrize("mode", MODES)
def test_a_process_that_dies_after_serving_is_replaced(mode, tmp_path):
    proc = _start(mode, "crash", tmp_path)
    assert wait_until(lambda: len(_started(tmp_path).get("0", [])) == 2, 30)  # index 0 again, new pid
    pids = _started(tmp_path)["0"]
    assert len(set(pids)) == 2 and sorted(map(_gone, pids)) == [False, True]  # the crashed one, its replacement
    assert len(_started(tmp_path)["1"]) == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "server process 0 exited with 137; starting a new one" in proc.stderr.read()  # 128 + SIGKILL


@pytest.mark.parametrize("mode", MODES)
def test_processes_that_fail_to_start_stop_the_others_with_their_exit_code(mode, tmp_path):
    proc = _start(mode, "fail-start", tmp_path)
    assert proc.wait(timeout=30) == 3
    assert "exited with 3 while starting; stopping" in proc.stderr.read()
    assert all(_gone(pid) for pid in _all(tmp_path))


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_while_they_start_reaches_every_process_that_starts(mode, tmp_path):
    """The imports (here a 2 s preload) are still running when SIGTERM comes: whatever starts
    after is stopped too, and the supervisor exits instead of waiting on them forever."""
    proc = _start(mode, "slow-preload", tmp_path)
    time.sleep(0.7)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert all(_gone(pid) for pid in _all(tmp_path))


@pytest.mark.parametrize("mode", MODES)
def test_imports_that_fail_are_one_line_and_exit_1(mode, tmp_path):
    proc = _start(mode, "bad-preload", tmp_path)
    assert proc.wait(timeout=30) == 1
    err = proc.stderr.read()
    assert "cannot start the server processes: No module named 'mnistkit_no_such_module'" in err
    assert "Traceback" not in err and not _all(tmp_path)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "scenario, code, says",
    [("exit-start", 4, ""), ("bug-start", 1, "RuntimeError: a bug in serve")],
)
def test_a_server_that_exits_or_raises_keeps_its_code_and_its_traceback(mode, scenario, code, says, tmp_path):
    proc = _start(mode, scenario, tmp_path)
    assert proc.wait(timeout=30) == code
    err = proc.stderr.read()
    assert f"exited with {code} while starting; stopping" in err
    assert says in err and ("Traceback" in err) == bool(says)
