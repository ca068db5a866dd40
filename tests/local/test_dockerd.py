"""The embedded dockerd (mnistkit.local.dockerd) against a real dockerd: what an unclean stop
leaves behind, two commands starting it at once, and what a stop cleans up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mnistkit.local.dockerd import LocalDocker

pytestmark = pytest.mark.docker


def _mounts_under(path: Path) -> list[str]:
    return [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines() if str(path) in line]


def test_a_dead_socket_and_a_stale_pidfile_do_not_stop_the_next_start(tmp_path):
    """What kill -9 or a reboot leaves: a socket file nothing listens on, and a pidfile naming a
    live process that is not dockerd. Before, the client raised on the dead socket (a
    traceback); dockerd would also refuse a pidfile whose pid is alive."""
    root = tmp_path / "engine"
    root.mkdir()
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(root / "docker.sock"))
    dead.close()  # the file stays, nothing listens
    (root / "dockerd.pid").write_text(str(os.getpid()))  # alive, and not a dockerd
    engine = LocalDocker(root).start()
    try:
        assert engine.proc is not None and engine.client().ping()
        exec_root = engine.exec_root
        assert exec_root.is_dir()
    finally:
        engine.stop()
    assert not exec_root.exists() and not _mounts_under(exec_root)  # its netns mounts went with it


def test_two_commands_starting_one_engine_get_one_dockerd_and_the_last_stops_it(tmp_path):
    """Started at once from two processes: one starts it, the other waits and reuses it (before,
    the second removed the first's socket while it started and spawned a second dockerd). The
    one that started it ends first: the engine stays up for the other, which stops it when it
    ends (before, the other lost its engine mid-build)."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from mnistkit.local.dockerd import LocalDocker\n"
        "e = LocalDocker(Path(sys.argv[1])).start()\n"
        "print('started' if e.proc else 'reused', flush=True)\n"
        "sys.stdin.readline()\n"  # hold it until told
        "e.stop()\n"
    )
    root = tmp_path / "engine"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        said = {p.stdout.readline().strip(): p for p in procs}  # type: ignore[union-attr]
        assert sorted(said) == ["reused", "started"]
        engine = LocalDocker(root)
        pid = engine._dockerd_pid()
        assert pid is not None and engine.client().ping()
        said["started"].communicate("\n", timeout=60)  # the starter ends first
        assert engine.client().ping() and engine._dockerd_pid() == pid  # still up, for the other
        said["reused"].communicate("\n", timeout=60)  # the last user ends: it stops the engine
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text()
        assert not engine.exec_root.exists()
    finally:
        for p in procs:
            if p.poll() is None:
                p.communicate("\n", timeout=60)
    assert all(p.returncode == 0 for p in procs)


def test_an_engine_whose_starter_was_killed_is_stopped_by_the_next_user(tmp_path):
    """kill -9 of the command that started it leaves dockerd running as nobody's. The next
    command reuses it and, as its last user, stops it (before, it ran until the machine stopped)."""
    root = tmp_path / "engine"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from mnistkit.local.dockerd import LocalDocker\n"
        "LocalDocker(Path(sys.argv[1])).start()\n"
        "print('started', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    starter = subprocess.Popen(
        [sys.executable, "-c", code, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert starter.stdout.readline().strip() == "started"  # type: ignore[union-attr]
    starter.kill()
    starter.wait(timeout=30)
    engine = LocalDocker(root)
    pid = engine._dockerd_pid()
    try:
        assert pid is not None and engine.client().ping()  # orphaned, still serving
        engine.start()
        assert engine.proc is None and engine.client().ping()  # reused, not a second dockerd
    finally:
        engine.stop()
        alive = pid is not None and os.path.exists(f"/proc/{pid}")
        alive = alive and "zombie" not in Path(f"/proc/{pid}/status").read_text()
        if alive:  # the test failed: no dockerd outlives it
            os.kill(pid, signal.SIGTERM)
    assert not alive
    assert not engine.exec_root.exists() and not (root / "handover").exists()


def test_an_engine_too_slow_to_answer_keeps_its_socket_and_a_crashed_one_is_replaced(tmp_path):
    """A dockerd that does not answer while it runs (here SIGSTOPped: a busy machine): a second
    command waits, then says so, and leaves its socket and exec root alone (before, it unlinked
    them, started a dockerd that failed, and the first command's engine was lost). One that
    died but is not reaped yet (a zombie, the OOM killer) is no obstacle to a new one."""
    from mnistkit.errors import PackagingError

    root = tmp_path / "engine"
    first = LocalDocker(root).start()
    assert first.proc is not None
    pid = first.proc.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(PackagingError, match=rf"\(pid {pid}\) runs but has not answered .* for 2s"):
                LocalDocker(root).start(timeout=2)
            assert first.socket.exists() and first.exec_root.is_dir()
        finally:
            os.kill(pid, signal.SIGCONT)
        assert first.client().ping()  # the first command's engine still works

        os.kill(pid, signal.SIGKILL)  # not reaped: first.proc is never waited for here
        while "zombie" not in Path(f"/proc/{pid}/status").read_text():
            pass
        second = LocalDocker(root).start()  # before: "pid file found", the zombie taken for a dockerd
        try:
            assert second.proc is not None and second.client().ping()
        finally:
            second.stop()
    finally:
        first.stop()
    assert not first.exec_root.exists()
    assert not _mounts_under(root / "data")  # the killed one's mount of its data root on itself, too


def test_a_home_too_long_for_a_unix_socket_is_said_before_anything_is_made(tmp_path):
    from mnistkit.errors import PackagingError

    root = tmp_path / ("x" * (110 - len(str(tmp_path))))
    with pytest.raises(PackagingError, match="too long a folder for dockerd's socket .* set a shorter MNISTKIT_HOME"):
        LocalDocker(root).start()
    assert not root.exists()
