"""Process supervision for a server of several forked processes (the V2 image's launcher).

``Supervisor`` forks the serving processes from a template that has imported what they share,
replaces one that dies after serving, stops them all on SIGTERM/SIGINT, and exits non-zero when
they fail to start. The supervisor holds SIGTERM and SIGINT around every fork it makes (the
template forks with the default handlers), so a SIGTERM during start-up reaches every process
that starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["Supervisor", "MIN_UPTIME"]

log = logging.getLogger("mnistkit.supervisor")

#: a process that dies sooner than this after it started is failing to start, not crashing
MIN_UPTIME = 10.0

SIGNALS = {signal.SIGTERM, signal.SIGINT}


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT wait (blocked) until the block ends: around a fork, so the child
    never runs the supervisor's handler and the supervisor knows the child before it handles them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def _default_signals() -> None:
    """In a forked child: the default SIGTERM/SIGINT (and SIGCHLD), then let them through."""
    for sig in (*SIGNALS, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _exit_code(status: int) -> int:
    """A ``wait`` status as a shell reports it: the exit code, or 128 + the signal that killed it."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _subreaper() -> bool:
    """Make this process the subreaper of its descendants (Linux): processes whose parent exits
    become its children, so it can wait for them. False where that cannot be set."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


class Supervisor:
    """Starts ``processes`` serving processes (``serve(index)``, its exit code) and replaces
    one that dies after serving; SIGTERM/SIGINT (``stop``) go to all of them.

    It imports nothing heavy itself: a short-lived template process runs ``preload`` (the
    imports), forks the serving processes (which so share those pages) and exits; they become
    this process's children (it is their subreaper). A parent that had imported all that would
    keep the original of every page its children have since written (~16 MB with two V2
    processes). Where no subreaper can be set, this process is the template and stays one.
    ``keep``: sockets only the supervisor holds (a port's reservation), closed in the children."""

    def __init__(
        self,
        processes: int,
        preload: Callable[[], None],
        serve: Callable[[int], int],
        keep: Sequence[socket.socket] = (),
    ) -> None:
        self.processes, self.preload, self.serve, self.keep = processes, preload, serve, tuple(keep)
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (index, start time)
        self.stopping = False
        self.use_template = True  # set by run(): whether this process could become a subreaper

    def spawn(self, indices: list[int]) -> int:
        """Start the serving processes ``indices``; returns how many started (an error that
        stopped the others from starting is logged in one line)."""
        before = len(self.children)
        try:
            if self.use_template:
                self._spawn_from_template(indices)
            else:
                self.preload()
                for index in indices:
                    with _signals_held():  # a SIGTERM now is handled once the child is known
                        self._started(index, self._fork_server(index))
        except Exception as e:  # the imports failed, or fork did (EAGAIN at a pid limit)
            log.error("cannot start the server processes: %s", e)
        return len(self.children) - before

    def _spawn_from_template(self, indices: list[int]) -> None:
        r, w = os.pipe()
        with _signals_held():
            pid = os.fork()
            if pid == 0:  # the template: signals as by default, then import, fork, report, exit
                code = 1
                try:
                    _default_signals()
                    os.close(r)
                    self.preload()
                    for index in indices:
                        os.write(w, f"{index} {self._fork_server(index, w)}\n".encode())
                    code = 0
                except Exception as e:
                    log.error("cannot start the server processes: %s", e)
                finally:
                    os._exit(code)
        os.close(w)
        with os.fdopen(r) as pipe:  # until the template exits
            started = [tuple(map(int, line.split())) for line in pipe]
        os.waitpid(pid, 0)
        with _signals_held():
            for index, child in started:
                self._started(index, child)

    def _started(self, index: int, pid: int) -> None:
        self.children[pid] = (index, time.monotonic())
        if self.stopping:  # SIGTERM came while it started
            _kill(pid)

    def _fork_server(self, index: int, pipe: int | None = None) -> int:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _default_signals()
                for sock in self.keep:
                    sock.close()
                if pipe is not None:
                    os.close(pipe)
                code = self.serve(index)
            except SystemExit as e:  # as the interpreter would exit with it
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:  # sys.exit("message"): the message, and 1
                    print(e.code, file=sys.stderr)
            except BaseException:  # a bug: its traceback, as an uncaught exception would print
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        return pid

    def stop(self, signum: int, frame: Any = None) -> None:
        """The SIGTERM/SIGINT handler: stop every process, and any that starts from now on."""
        self.stopping = True
        for pid in list(self.children):
            _kill(pid)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (handled by ``stop`` from now on) or a failed start;
        returns the exit code: 0 after a stop, else the failing process's (or 1)."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.use_template = _subreaper()
        code = 0
        count = self.spawn(list(range(self.processes)))
        if count < self.processes:  # all or none: a server short of processes is a failed start
            if count:
                log.error("only %d of %d server processes started; stopping", count, self.processes)
            code = 1
            self.stop(signal.SIGTERM)
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            index, started = self.children.pop(pid, (-1, 0.0))
            if self.stopping or index < 0:
                continue
            exit_code = _exit_code(status)
            if time.monotonic() - started < MIN_UPTIME:
                log.error("server process %d exited with %d while starting; stopping", index, exit_code)
                code = exit_code or 1
                self.stop(signal.SIGTERM)
                continue
            log.warning("server process %d exited with %d; starting a new one", index, exit_code)
            if not self.spawn([index]):
                log.error("server process %d could not be replaced; serving with the others", index)
                code = 1
        return code
