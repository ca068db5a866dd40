"""The docker engine mnistkit talks to: the user's, or an embedded dockerd whose data,
exec root, pidfile and socket all live under one folder.

A dockerd already answering on the folder's socket is reused. Starting is locked per folder,
so two commands starting at once get one engine; a socket or pidfile an unclean stop (kill -9,
a reboot) left behind is removed first. Every command using the engine holds a shared lock on
the folder's ``users.lock`` until its ``stop()``; the engine is stopped (its whole process
group, then its exec root and the network namespace mounts there) by the last of them: the one
that started it if nobody else still uses it, else the last user after it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MnistkitError, PackagingError
from ..files import os_reason
from ..settings import settings
from ._proc import find_exe, signals_deferred, spawn, stop_group, wait_until

__all__ = ["LocalDocker", "connect_docker", "docker_client", "mnistkit_home", "engine_failure", "engine_errors"]

log = logging.getLogger(__name__)


def engine_failure(e: BaseException) -> str | None:
    """One line for a docker SDK or engine connection failure; None for anything else.

    The SDK raises ``docker.errors.*`` for what the engine answers, but lets ``requests``
    errors through when the engine goes away mid-call."""
    import requests

    import docker

    if isinstance(e, docker.errors.APIError):
        text = str(e.explanation or e).strip().splitlines()
        return f"the docker engine refused: {text[0][:300] if text else type(e).__name__}"
    if isinstance(e, requests.exceptions.Timeout):
        return "the docker engine did not answer in time; is it overloaded or stopped?"
    if isinstance(e, requests.exceptions.ConnectionError):
        return "lost the connection to the docker engine; is it still running?"
    if isinstance(e, (docker.errors.DockerException, requests.exceptions.RequestException)):
        text = str(e).strip().splitlines()
        return f"docker: {text[0][:300] if text else type(e).__name__}"
    return None


@contextmanager
def engine_errors(what: str, error: type[MnistkitError] = PackagingError) -> Iterator[None]:
    """Docker failures inside the block as one ``error``: ``<what>: <reason>``."""
    try:
        yield
    except Exception as e:
        reason = engine_failure(e)
        if reason is None:
            raise
        raise error(f"{what}: {reason}") from None


def mnistkit_home() -> Path:
    """Where embedded services and caches keep their state (``$MNISTKIT_HOME``, default
    ``~/.mnistkit``), created when missing."""
    home = settings().home_path
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PackagingError(f"cannot create {home}: {os_reason(e)} (MNISTKIT_HOME)") from None
    return home


#: the longest path a unix socket can have (sun_path is 108 bytes, with its terminating NUL)
MAX_SOCKET_PATH = 107


@dataclass
class LocalDocker:
    """A dockerd whose data, exec root, pidfile and socket all live under ``root``."""

    root: Path
    extra_args: tuple[str, ...] = ()  # more dockerd flags (e.g. --add-runtime)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _user: Any = field(default=None, init=False, repr=False)  # the shared lock on users.lock

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def client(self, timeout: int = 600) -> Any:

        return docker_client(self.host, timeout)

    @property
    def exec_root(self) -> Path:
        # short: unix socket paths are limited to 108 bytes
        return Path("/run/mnistkit") / hashlib.sha256(str(Path(self.root).resolve()).encode()).hexdigest()[:12]

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:  # the SDK asks the engine for its version as the client is made: a dead socket fails there
            return bool(self.client(timeout=5).ping())
        except PackagingError:  # a docker config the SDK cannot read: say so at once
            raise
        except Exception:  # docker raises several types for a dead socket
            return False

    def start(self, timeout: float = 60) -> "LocalDocker":
        self.root = Path(self.root).resolve()
        if len(str(self.socket)) > MAX_SOCKET_PATH:  # dockerd's own error was a bind "invalid argument"
            raise PackagingError(
                f"{self.root} is too long a folder for dockerd's socket ({len(str(self.socket))} bytes; a unix "
                f"socket path has at most {MAX_SOCKET_PATH}): set a shorter MNISTKIT_HOME"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = open(self.root / ".start.lock", "a")  # noqa: SIM115  (held until started)
        except OSError as e:
            raise PackagingError(f"cannot use {self.root} for dockerd: {os_reason(e)}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another command starting this engine: wait for it, then reuse it
            if not self._answers() and not self._busy(timeout):
                self._start(timeout)
            elif self._orphaned():  # its starter was killed (kill -9): the last user now stops it
                (self.root / "handover").touch()
            self._user = open(self.root / "users.lock", "a")  # noqa: SIM115  (held until stop)
            fcntl.flock(self._user, fcntl.LOCK_SH)
        return self

    def _busy(self, timeout: float) -> bool:
        """Whether a dockerd of this folder runs, slow to answer (a busy machine): then wait for
        it, and never take its socket and exec root for a second one. False when none runs."""
        if (pid := self._dockerd_pid()) is None:
            return False
        if not wait_until(self._answers, timeout, interval=0.5):
            raise PackagingError(
                f"the embedded dockerd in {self.root} (pid {pid}) runs but has not answered on {self.socket} "
                f"for {timeout:.0f}s; wait for it, or stop it (kill {pid}) and try again"
            )
        return True

    def _start(self, timeout: float) -> None:
        dockerd = find_exe("dockerd", "apt-get install docker.io (make test/demo do this)", PackagingError)
        try:
            self.socket.unlink(missing_ok=True)  # nothing answers on it: left by an unclean stop
            self._remove_stale_pidfile()
            self._stop_leftovers()
            self._remove_exec_root()  # a dead one's: its containerd pidfile would name a zombie
            self._unmount_data_root()
            self.exec_root.mkdir(parents=True, exist_ok=True)
            self.proc = self._spawn(dockerd, self.exec_root)
        except OSError as e:
            raise PackagingError(f"cannot start dockerd in {self.root}: {os_reason(e)}") from None
        try:
            if wait_until(self._answers, timeout, proc=self.proc, interval=0.2):
                return
        except BaseException:  # Ctrl-C while it starts: no dockerd left running as nobody's
            self._stop_engine()
            raise
        tail = (self.root / "dockerd.log").read_text(errors="replace").splitlines()[-3:]
        exited = self.proc.poll() is not None
        self._stop_engine()
        if exited:
            raise PackagingError(f"dockerd exited at start: {' | '.join(tail)[-400:]}")
        raise PackagingError(f"dockerd did not answer on {self.socket} within {timeout:.0f}s")

    def _orphaned(self) -> bool:
        """An engine that answers while no command uses it (each holds ``users.lock`` shared,
        and the kernel drops a killed one's hold) is one whose starter died without stopping it."""
        with open(self.root / "users.lock", "a") as users:
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
        return self._dockerd_pid() is not None

    def _dockerd_pid(self) -> int | None:
        """The pidfile's pid when it is a running dockerd (after a reboot it may be any process)."""
        try:
            pid = int((self.root / "dockerd.pid").read_text().strip())
            if Path(f"/proc/{pid}/comm").read_text().strip() != "dockerd":
                return None
            # a dockerd that died (the OOM killer) but that its starter has not reaped yet is a zombie
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
            return None if state in ("Z", "X") else pid
        except (OSError, ValueError, IndexError):
            return None

    def _remove_stale_pidfile(self) -> None:
        """dockerd refuses to start while its pidfile names a live process: remove the file
        unless that process is a dockerd."""
        if self._dockerd_pid() is None:
            (self.root / "dockerd.pid").unlink(missing_ok=True)

    def _stop_leftovers(self) -> None:
        """Kill what a dead dockerd of this folder left running (the OOM killer takes dockerd, not
        its containerd), found by the exec root in their command lines: a new dockerd's containerd
        cannot start beside the old one. Called with no dockerd of this folder alive."""
        marker = str(self.exec_root).encode()
        left = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
                    left.append(entry)
            except (OSError, ValueError):  # gone meanwhile, or not ours to read
                continue
        wait_until(lambda: not any(e.exists() and "zombie" not in _status(e) for e in left), 10, interval=0.1)

    def _spawn(self, dockerd: str, exec_root: Path) -> subprocess.Popen[bytes]:
        return spawn(
            [
                dockerd,
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(exec_root),
                "--pidfile",
                str(self.root / "dockerd.pid"),
                "--host",
                self.host,
                "--storage-driver",
                "overlay2",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                *self.extra_args,
            ],
            self.root / "dockerd.log",
        )

    def stop(self) -> None:
        """This command is done with the engine: stop it if it was the last user and the engine
        is one mnistkit started (here, or by a user that left it running for this one)."""
        if self._user is None:
            return
        handover = self.root / "handover"
        with open(self.root / ".start.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # no command starts using it while this one decides
            self._user.close()
            self._user = None
            with open(self.root / "users.lock", "a") as users:
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # still used by another command: the last of them stops it
                    if self.proc is not None:
                        handover.touch()
                        log.info("leaving dockerd in %s running: another command still uses it", self.root)
                        self.proc = None
                    return
            if self.proc is not None or handover.exists():
                self._stop_engine()
            handover.unlink(missing_ok=True)

    def _stop_engine(self) -> None:
        with signals_deferred():  # a second Ctrl-C here left the exec root and its netns mounts
            if self.proc is not None:
                stop_group(self.proc)  # (and reaped, if it died)
                self.proc = None
            if (pid := self._dockerd_pid()) is not None:  # one another command started: it has ended,
                stop_group(pid=pid)  # or it replaced this one's, which had died
            self._remove_exec_root()
            self._unmount_data_root()

    def _unmount_data_root(self) -> None:
        """dockerd mounts its data root on itself and unmounts it when it stops cleanly; one
        killed (kill -9, the OOM killer) leaves the mount, and the folder then cannot be removed.
        Called with no dockerd of this folder running."""
        data = str(self.root / "data")
        points = [line.split()[1].replace("\\040", " ") for line in Path("/proc/self/mounts").read_text().splitlines()]
        for point in sorted((p for p in points if p == data or p.startswith(data + "/")), reverse=True):
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)

    def _remove_exec_root(self) -> None:
        """The network namespace mounts dockerd leaves under its exec root, then the folder."""
        for mount in sorted((self.exec_root / "netns").glob("*")):
            subprocess.run(["umount", "--lazy", str(mount)], capture_output=True, check=False)
        shutil.rmtree(self.exec_root, ignore_errors=True)


def _status(proc: Path) -> str:
    try:
        return (proc / "status").read_text()
    except OSError:
        return "zombie"  # gone


def docker_client(base_url: str, timeout: int = 600) -> Any:
    """A docker SDK client for ``base_url``. The SDK reads the docker config file as it starts
    and fails on an entry that is not base64: that is one error here, naming the file."""
    import docker

    try:
        return docker.DockerClient(base_url=base_url, timeout=timeout)
    except ValueError as e:  # binascii.Error from the SDK's own reading of config.json
        config = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
        raise PackagingError(f"{config} has an auth entry the docker SDK cannot read ({e}); fix or remove it") from None


def _ping(base_url: str) -> Any:
    client = docker_client(base_url)
    client.ping()
    return client


def connect_docker(
    docker_host: str | None = None, *, home: Path | None = None, wait: float = 0
) -> tuple[Any, LocalDocker | None]:
    """A docker client: ``docker_host`` or ``$DOCKER_HOST`` if given (waiting up to ``wait``
    seconds for it to answer, as a sidecar engine starts beside its pod), else the
    machine's engine at /var/run/docker.sock if it answers, else an embedded dockerd under
    ``home``/docker (started here; the caller stops it). Returns (client, embedded or None)."""
    import docker

    host = docker_host or os.environ.get("DOCKER_HOST")
    if host:
        found: list[Any] = []

        def answers() -> bool:
            try:
                found.append(_ping(host))
                return True
            except docker.errors.DockerException:
                return False

        if answers() or (wait > 0 and wait_until(answers, wait, interval=1)):
            return found[-1], None
        raise PackagingError(
            f"cannot reach the docker engine at {host}"
            + (f" within {wait:.0f}s" if wait else "")
            + "; is it running, and is DOCKER_HOST right?"
        )
    if os.path.exists("/var/run/docker.sock"):
        try:
            return _ping("unix:///var/run/docker.sock"), None
        except docker.errors.DockerException:
            pass
    local = LocalDocker(Path(home or mnistkit_home()) / "docker").start()
    return local.client(), local
