"""The image's launcher: Seldon's own microservice, its REST app behind mnistkit's guard.

    python -m mnistkit.serve MnistModel --service-type MODEL [seldon-core-microservice options]

It runs ``seldon_core.microservice.main()`` in this process (so ``exec`` in ``s2i/bin/run``
keeps it PID 1) with three pieces of seldon-core replaced, nothing forked by mnistkit itself:

* ``seldon_core.wrapper.get_rest_microservice`` returns Seldon's Flask app unchanged, its
  ``wsgi_app`` wrapped in ``Guard``: what Seldon would parse whole or answer with a 500 is
  refused first with a 4xx and Seldon's error JSON (``{"status": {"status": 1, "code": -1,
  "info": ..., "reason": ...}}``) — a body over ``MNISTKIT_MAX_BODY`` (413, also chunked),
  a content type Seldon cannot read (415), JSON nested deeper than ``MAX_DEPTH`` (400),
  unknown routes (404) and wrong methods (405);
* ``seldon_core.microservice.UserModelApplication`` gets gunicorn options Seldon does not
  expose: a graceful timeout that fits the pod's grace period, a sync worker that on
  SIGTERM serves the connections already queued on its socket before it exits, body and
  header deadlines that end before gunicorn's worker timeout (Seldon sets it from the
  ``seldon.io/rest-timeout`` annotation, so it can be shorter than ``MNISTKIT_BODY_TIMEOUT``), and a
  ``pre_fork`` hook that imports ONNX Runtime in the arbiter and freezes its objects
  (``gc.freeze``) so the workers share those pages instead of copying them;
* ``seldon_core.metrics.SeldonMetrics`` keeps its shared dict, but its lock (a
  ``multiprocessing.Manager().Lock()``, which nobody releases when its holder dies) becomes
  ``HolderSafeLock``: a worker killed while it held the lock (OOM, kill -9) no longer
  blocks every other worker forever.

``GRPC_WORKERS`` defaults to 0 here (REST only): with Seldon's default of 1, the main
process waits forever on its gRPC child after SIGTERM.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import gc
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any

# gunicorn 20.1 imports pkg_resources, which warns at every start; nothing a user can act on
warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
from gunicorn.workers.sync import SyncWorker  # noqa: E402

__all__ = [
    "DrainingSyncWorker",
    "Guard",
    "GuardLimits",
    "HolderSafeLock",
    "deadline_within",
    "guard_app",
    "install",
    "json_depth",
    "main",
]

log = logging.getLogger(__name__)

#: JSON deeper than this is refused before it is parsed (a request needs 4 levels:
#: ``{"data": {"ndarray": [[...]]}}``; the 100,000-``[`` body would make json.loads recurse).
MAX_DEPTH = 32
#: Bytes of an over-limit body read and thrown away before the 413, so the client reads
#: the answer instead of a connection reset (unread data makes close() send RST).
DISCARD_LIMIT = 64 * 1024 * 1024
DISCARD_SECONDS = 5.0
#: Seconds a client may take to send a whole body, by default (``MNISTKIT_BODY_TIMEOUT``).
BODY_SECONDS = 30.0
#: Seldon's routes a MODEL component serves; the rest (transform, route, aggregate, static
#: files) answer 404.
ENDPOINTS = frozenset({"Predict", "SendFeedback", "HealthPing", "HealthStatus", "Metadata", "openAPI"})
#: Content types Seldon's ``get_request`` reads a body from.
BODY_TYPES = ("application/json", "multipart/form-data", "application/x-www-form-urlencoded")
#: Seconds gunicorn lets workers finish after SIGTERM: the SeldonDeployment's
#: terminationGracePeriodSeconds (30) less the operator's 10 s preStop sleep, less a margin.
GRACEFUL_TIMEOUT = 15

#: a JSON string, or an unterminated one running to the end (else the search restarts at every
#: quote of it, and a body of escaped quotes takes time quadratic in its size)
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\Z)', re.S)
_OPEN, _CLOSE = frozenset(b"[{"), frozenset(b"]}")


@dataclass(frozen=True)
class GuardLimits:
    max_body: int
    max_depth: int = MAX_DEPTH
    #: seconds a client may take to send a whole body (a slow client holds a sync worker)
    body_seconds: float = BODY_SECONDS
    #: gunicorn's worker timeout when it, not ``MNISTKIT_BODY_TIMEOUT``, set ``body_seconds``
    worker_timeout: float | None = None

    def within(self, worker_timeout: float | None) -> "GuardLimits":
        """These limits with the body deadline cut to fit ``worker_timeout`` (see ``deadline_within``)."""
        seconds = deadline_within(self.body_seconds, worker_timeout)
        if seconds >= self.body_seconds:
            return self
        return replace(self, body_seconds=seconds, worker_timeout=worker_timeout)

    def timeout_reason(self) -> str:
        """What set ``body_seconds``, for the 408's message."""
        if self.worker_timeout is None:
            return "MNISTKIT_BODY_TIMEOUT"
        return f"under half the worker timeout of {self.worker_timeout:g} s, seldon.io/rest-timeout"

    @classmethod
    def from_settings(cls) -> "GuardLimits":
        from .settings import settings

        s = settings()
        return cls(max_body=s.max_body, body_seconds=s.body_timeout)


def deadline_within(seconds: float, worker_timeout: float | None) -> float:
    """``seconds``, or less, so that a worker held by a slow client answers it before gunicorn's
    arbiter kills the worker for silence (after ``worker_timeout`` seconds; a killed worker's
    client gets a reset, not the 408, and the worker is replaced). A request may spend one
    deadline on its headers and another on its body, each noticed up to a ``_Deadlines.PERIOD``
    late, so each gets half of it less half a second (and at least 0.1 s)."""
    if not worker_timeout or worker_timeout <= 0:
        return seconds
    return min(seconds, max(0.1, worker_timeout / 2 - 0.5))


def json_depth(body: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (brackets in strings do not count)."""
    import numpy as np

    text = np.frombuffer(_STRING.sub(b'""', body), dtype=np.uint8)
    steps = np.isin(text, list(_OPEN)).astype(np.int64) - np.isin(text, list(_CLOSE))
    return int(np.cumsum(steps).max(initial=0))


def _error(start_response: Callable[..., Any], status: str, info: str, reason: str, headers=()) -> list[bytes]:
    """Seldon's error JSON, with the HTTP status it names."""
    body = json.dumps({"status": {"status": 1, "info": info, "code": -1, "reason": reason}}).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers],
    )
    return [body]


class _WorkerThread:
    """A daemon thread each worker process starts when it first needs it (a forked worker has
    none yet: threads do not survive fork), running ``run``."""

    name = "mnistkit"

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
                self._thread.start()

    def run(self) -> None:
        raise NotImplementedError


class _Deadlines(_WorkerThread):
    """Ends bodies that arrive too slowly. gunicorn's body reader loops over ``recv()`` until it
    has every byte it was asked for, so a socket timeout (per ``recv``: a byte every 29 s never
    trips it) or a check between reads does not bound a body's time. One daemon thread per worker
    process shuts the reading side of each client socket still being read past its deadline,
    every ``PERIOD`` seconds; the blocked ``recv()`` returns at once and the request is answered
    408. A request only puts its socket in a dict and takes it out, under a lock the thread holds
    while it shuts sockets (so it never shuts one a request has finished with): no thread is woken
    for it."""

    PERIOD = 0.25
    name = "mnistkit-body-deadlines"

    def __init__(self) -> None:
        super().__init__()
        self._watched: dict[int, tuple[float, Any]] = {}

    @contextmanager
    def watch(self, environ: dict[str, Any], seconds: float) -> Iterator[float]:
        """Bound reading the body of ``environ``'s request to ``seconds`` from now; yields the
        deadline (``time.monotonic()``). The socket also gets ``seconds`` as its timeout."""
        sock = environ.get("gunicorn.socket")  # None outside gunicorn (tests): nothing to shut
        if sock is None:
            yield time.monotonic() + seconds
            return
        before = sock.gettimeout()
        sock.settimeout(seconds)
        try:
            with self.watch_socket(sock, seconds) as deadline:
                yield deadline
        finally:
            sock.settimeout(before)

    @contextmanager
    def watch_socket(self, sock: Any, seconds: float) -> Iterator[float]:
        """Shut ``sock``'s reading side if the block still runs ``seconds`` from now. A watch
        inside another on the same socket takes its place until it ends."""
        deadline = time.monotonic() + seconds
        self.start()
        entry = (deadline, sock)
        with self._lock:
            self._watched[id(sock)] = entry
        try:
            yield deadline
        finally:
            with self._lock:  # after this, the thread cannot shut the socket for this request
                if self._watched.get(id(sock)) is entry:
                    del self._watched[id(sock)]

    def run(self) -> None:
        import socket

        while True:
            time.sleep(self.PERIOD)
            now = time.monotonic()
            with self._lock:  # a request's entry and its socket, as they are now (not a stale copy)
                for key, (deadline, sock) in list(self._watched.items()):
                    if deadline <= now:
                        del self._watched[key]
                        try:
                            sock.shutdown(socket.SHUT_RD)
                        except OSError:  # the client has gone already
                            pass


_deadlines = _Deadlines()


def _discard(environ: dict[str, Any], limit: int) -> None:
    """Read and drop up to ``limit`` bytes of a body nobody will parse, for at most
    ``DISCARD_SECONDS`` (a client may claim more than it sends)."""
    left = limit
    with _deadlines.watch(environ, DISCARD_SECONDS) as deadline:
        try:
            while left > 0:
                chunk = environ["wsgi.input"].read(min(left, 1 << 16))
                if not chunk or time.monotonic() > deadline:
                    return
                left -= len(chunk)
        except Exception:  # a timeout, a reset, broken chunked framing: the answer goes out anyway
            return


def _read_body(environ: dict[str, Any], stream: Any, size: int, seconds: float) -> bytes:
    """Up to ``size`` bytes of the body, all within ``seconds`` (see ``_Deadlines``);
    ``TimeoutError`` past it."""
    chunks, left = [], size
    with _deadlines.watch(environ, seconds) as deadline:
        try:
            while left > 0:
                chunk = stream.read(min(left, 1 << 16))  # socket.timeout is TimeoutError (3.10+)
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        except Exception:  # a chunked body cut off when its deadline shut the socket
            if time.monotonic() >= deadline:
                raise TimeoutError from None
            raise
        if time.monotonic() >= deadline:  # the read ended because the deadline shut the socket
            raise TimeoutError
    return b"".join(chunks)


class Guard:
    """WSGI middleware in front of Seldon's Flask app (see the module docstring)."""

    def __init__(self, app: Any, limits: GuardLimits) -> None:
        from werkzeug.routing import Map

        self.wsgi_app = app.wsgi_app
        self.limits = limits
        # Seldon's routes, less its catch-all static route (``/<path:filename>`` for GET)
        self.routes = Map([r.empty() for r in app.url_map.iter_rules() if r.endpoint in ENDPOINTS])

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        refused = self._route(environ, start_response)
        if refused is not None:
            return refused
        has_body = environ.get("CONTENT_LENGTH") not in (None, "", "0") or "HTTP_TRANSFER_ENCODING" in environ
        if has_body or environ.get("REQUEST_METHOD") in ("POST", "PUT", "PATCH"):  # Seldon reads GET bodies too
            refused = self._body(environ, start_response)
            if refused is not None:
                return refused
        return self.wsgi_app(environ, start_response)

    def _route(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes] | None:
        from werkzeug.exceptions import MethodNotAllowed, NotFound

        path = environ.get("PATH_INFO") or "/"
        try:
            endpoint, _ = self.routes.bind_to_environ(environ).match()
        except MethodNotAllowed as e:
            allowed = ", ".join(sorted(e.valid_methods or []))
            method = environ.get("REQUEST_METHOD")
            return _error(
                start_response,
                "405 Method Not Allowed",
                f"{str(method)[:20]} is not allowed on {path[:200]}; use {allowed}",
                "MNISTKIT_METHOD_NOT_ALLOWED",
                [("Allow", allowed)],
            )
        except NotFound:
            endpoint = None
        except Exception:  # a redirect (a trailing slash) or a malformed URL: not a route we serve
            endpoint = None
        if endpoint not in ENDPOINTS:
            return _error(
                start_response,
                "404 Not Found",
                f"no route {path[:200]}; predictions go to POST /api/v1.0/predictions",
                "MNISTKIT_NOT_FOUND",
            )
        return None

    def _body(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes] | None:
        limit = self.limits.max_body
        stream = environ["wsgi.input"]
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            return _error(start_response, "400 Bad Request", "Content-Length is not a number", "MNISTKIT_BAD_INPUT")
        if length > limit:
            _discard(environ, min(length, DISCARD_LIMIT))
            return self._too_large(start_response, f"{length} bytes")
        try:
            size = length if length >= 0 else limit + 1  # chunked: at most limit + 1
            body = _read_body(environ, stream, size, self.limits.body_seconds)
        except TimeoutError:
            return _error(
                start_response,
                "408 Request Timeout",
                f"the body did not arrive within {self.limits.body_seconds:g} s ({self.limits.timeout_reason()})",
                "MNISTKIT_BAD_INPUT",
                [("Connection", "close")],
            )
        except Exception as e:  # gunicorn's errors for a broken chunked body or a client gone mid-body
            return _error(
                start_response,
                "400 Bad Request",
                f"the body could not be read ({type(e).__name__})",
                "MNISTKIT_BAD_INPUT",
            )
        if len(body) > limit:
            _discard(environ, DISCARD_LIMIT)
            return self._too_large(start_response, "more bytes than that")
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        kind = (environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
        if body and kind not in BODY_TYPES:
            return _error(
                start_response,
                "415 Unsupported Media Type",
                f"Content-Type {kind or '(none)'} is not accepted; send JSON as application/json",
                "MNISTKIT_UNSUPPORTED_MEDIA_TYPE",
            )
        # count first (C speed): only a JSON body with many brackets can nest too deeply; JSON in
        # form fields or ?json= is caught when it is parsed (see guard_app)
        many = kind == "application/json" and body.count(b"[") + body.count(b"{") > self.limits.max_depth
        depth = json_depth(body) if many else 0
        if depth > self.limits.max_depth:
            return _error(
                start_response,
                "400 Bad Request",
                f"the JSON nests {depth} levels deep; a prediction request needs at most {self.limits.max_depth}",
                "MNISTKIT_BAD_INPUT",
            )
        return None

    def _too_large(self, start_response: Callable[..., Any], size: str) -> list[bytes]:
        return _error(
            start_response,
            "413 Request Entity Too Large",
            f"request body of {size} is over the limit of {self.limits.max_body} bytes (MNISTKIT_MAX_BODY); "
            "send fewer images per request",
            "MNISTKIT_TOO_LARGE",
            [("Connection", "close")],
        )


def _bad_input(info: str) -> Any:
    from flask import jsonify

    response = jsonify({"status": {"status": 1, "info": info, "code": -1, "reason": "MNISTKIT_BAD_INPUT"}})
    response.status_code = 400
    return response


def _too_deep(error: RecursionError) -> Any:
    """JSON Seldon parses itself (multipart form fields, ``?json=``) nested too deeply."""
    return _bad_input("the JSON nests too deeply to be read; a prediction request needs a few levels")


def _unreadable(error: ValueError) -> Any:
    """JSON Seldon parses itself (``?json=``, form fields) that is not JSON, or a multipart
    text field that is not UTF-8: a 400 saying so (Seldon's catch-all made them 500s)."""
    if isinstance(error, json.JSONDecodeError):
        return _bad_input(f"the request's JSON could not be read ({error.msg} at character {error.pos})")
    return _bad_input("a text field of the request is not UTF-8")


def guard_app(app: Any, limits: GuardLimits | None = None) -> Any:
    """Put ``Guard`` in front of Seldon's Flask ``app`` (in place) and return the app.

    Also answers a ``RecursionError`` (json.loads of deeply nested JSON), JSON that is not
    JSON and text that is not UTF-8 in the parts Seldon parses itself (which its catch-all
    turns into 500s) with a 400."""
    app.wsgi_app = app.mnistkit_guard = Guard(app, limits or GuardLimits.from_settings())
    app.register_error_handler(RecursionError, _too_deep)
    app.register_error_handler(json.JSONDecodeError, _unreadable)
    app.register_error_handler(UnicodeDecodeError, _unreadable)
    return app


class DrainingSyncWorker(SyncWorker):  # type: ignore[misc]
    """gunicorn's sync worker, which on SIGTERM also serves the connections already queued
    on its socket (clients that connected before the SIGTERM), then exits. With threads > 1
    gunicorn picks its threaded worker instead (the name ends in ``SyncWorker``).

    A connection has ``MNISTKIT_BODY_TIMEOUT`` to send its request line and headers too (then
    the body gets its own): gunicorn reads them with no time limit, so a client that connected
    and sent nothing, or a header a byte at a time, held a worker for as long as it liked."""

    header_seconds = BODY_SECONDS

    def init_process(self) -> None:
        from .settings import settings

        # read once per worker, not per connection; ended before the arbiter's timeout ends the worker
        self.header_seconds = deadline_within(settings().body_timeout, self.cfg.timeout)
        super().init_process()  # (runs the worker's loop: it returns only when the worker ends)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        with _deadlines.watch_socket(client, self.header_seconds):
            super().handle(listener, client, addr)

    def run(self) -> None:
        super().run()
        if self.ppid != os.getppid():
            return  # the master died: nobody waits for these answers
        for listener in self.sockets:
            self._drain(listener)

    def _drain(self, listener: Any) -> None:
        while True:
            try:
                self.accept(listener)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED, errno.EBADF):
                    return
                raise


class _LateHandOver(_WorkerThread):
    """Hands a worker's counters to Seldon when its traffic stops. ``MnistModel`` hands them over
    on a request at most once per interval, and Seldon asks only after a prediction that
    succeeded, so a burst's last counts (and refused requests) would wait for the worker's next
    good request: forever, if none comes. A daemon thread per worker, started by its first
    request, hands over what is pending once per interval; the model's lock, and the lock
    mnistkit puts around Seldon's ``update``, keep it apart from the requests' own hand-overs."""

    name = "mnistkit-metrics"

    def __init__(self, model: Any, seldon_metrics: Any) -> None:
        super().__init__()
        self.model, self.seldon_metrics = model, seldon_metrics

    def wrap(self, wsgi_app: Callable[..., Any]) -> Callable[..., Any]:
        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            self.start()
            return wsgi_app(environ, start_response)

        return app

    def run(self) -> None:
        from seldon_core.user_model import SeldonNotImplementedError

        while True:
            time.sleep(self.model.metrics_interval)
            try:
                metrics = self.model.metrics()
            except SeldonNotImplementedError:  # a request handed them over within the interval
                continue
            if metrics:
                try:
                    self.seldon_metrics.update(metrics, "predict")
                except Exception as e:  # Seldon's metrics store gone (the worker is stopping)
                    log.warning("could not hand %d counters over to Seldon: %s", len(metrics), e)


class HolderSafeLock:
    """A lock between the processes forked from one parent that the kernel releases when its
    holder dies: ``flock`` on a file that each process opens for itself (a lock belongs to an
    open file description, which fork would share), and a thread lock within the process."""

    def __init__(self, folders: tuple[str | None, ...] = (None, "/dev/shm")) -> None:
        """The lock file goes in the first folder that takes it (None: the temp folder); a
        read-only root filesystem usually still has /dev/shm. OSError if none does."""
        error = OSError("no folder for the lock file")
        for folder in folders:
            try:
                fd, self.path = tempfile.mkstemp(prefix="mnistkit-metrics-", suffix=".lock", dir=folder)
                break
            except OSError as e:
                error = e
        else:
            raise error
        os.close(fd)
        self._reset()
        os.register_at_fork(after_in_child=self._reset)
        atexit.register(self._remove, os.getpid())

    def _remove(self, owner: int) -> None:
        """At exit of the process that made it (not of a worker forked from it: workers that
        start later still open it by name), the lock file goes."""
        if os.getpid() == owner:
            with suppress(OSError):
                os.unlink(self.path)

    def _reset(self) -> None:
        self._threads = threading.Lock()
        self._fd = -1

    def __enter__(self) -> "HolderSafeLock":
        self._threads.acquire()
        try:
            if self._fd < 0:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


class _ProcessLock:
    """A thread lock made anew in each forked child (a copy taken while another thread held it
    would never open)."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self.lock = threading.Lock()


_updates = _ProcessLock()


def _holder_safe_metrics(metrics_class: Any) -> None:
    """Give every ``SeldonMetrics`` made from now on a ``HolderSafeLock``, and make its
    ``update`` whole within a process: Seldon reads a worker's counters under its lock, adds to
    them outside it and writes them back under it again, so two threads of one worker (a
    request and ``_LateHandOver``) each wrote back their own copy and one's counts were lost
    (measured: 1,370 of 3,165 predictions under load)."""
    original = metrics_class.__init__
    if getattr(original, "mnistkit_guarded", False):
        return
    original_update = metrics_class.update

    def update(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _updates.lock:  # each worker writes only its own entry: other processes cannot race it
            return original_update(self, *args, **kwargs)

    metrics_class.update = update

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        _freeze()  # the metrics manager's process forks here
        original(self, *args, **kwargs)
        try:
            self._lock = HolderSafeLock()
        except OSError as e:  # nowhere to write a lock file: Seldon's own lock
            log.warning("metrics keep seldon-core's lock (a worker killed while holding it blocks the others): %s", e)

    __init__.mnistkit_guarded = True  # type: ignore[attr-defined]
    metrics_class.__init__ = __init__


def _freeze() -> None:
    """Before a fork: with the parent's objects frozen, the child's collector never walks (and
    so never copies) the pages they share."""
    gc.collect()
    gc.freeze()


def _preload_and_freeze(server: Any, worker: Any) -> None:
    """gunicorn's ``pre_fork`` hook: import ONNX Runtime in the arbiter (after Seldon's metrics
    processes have forked, which never use it), so the workers share its pages; then freeze."""
    from .settings import settings

    if settings().runtime != "torch":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            pass  # a torch-only image: MnistModel says so when it loads
    _freeze()


def _graceful_timeout() -> int:
    """``GUNICORN_GRACEFUL_TIMEOUT`` (seconds a stopping worker has to finish), checked."""
    from .errors import ConfigError

    raw = os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "").strip()
    if not raw:
        return GRACEFUL_TIMEOUT
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"GUNICORN_GRACEFUL_TIMEOUT={raw!r} is not a whole number of seconds") from None
    if not 0 <= value < 86400:
        raise ConfigError(f"GUNICORN_GRACEFUL_TIMEOUT={value} must be 0 or more, under a day")
    return value


def _fit_deadline(app: Any, worker_timeout: Any) -> None:
    """Cut the guard's body deadline to fit gunicorn's worker timeout, and say so once."""
    guard = getattr(app, "mnistkit_guard", None)
    if not isinstance(guard, Guard) or not isinstance(worker_timeout, (int, float)):
        return
    fitted = guard.limits.within(float(worker_timeout))
    if fitted is not guard.limits:
        log.warning(
            "body and header deadlines cut from %g s (MNISTKIT_BODY_TIMEOUT) to %g s: the worker timeout "
            "(seldon.io/rest-timeout) is %g s, and a worker still reading a request then is killed",
            guard.limits.body_seconds,
            fitted.body_seconds,
            worker_timeout,
        )
        guard.limits = fitted


def _on_host(bind: Any) -> Any:
    """Seldon's ``0.0.0.0:PORT`` on ``MNISTKIT_HOST`` instead (its REST and metrics servers)."""
    from .settings import settings

    if not isinstance(bind, str) or ":" not in bind:
        return bind
    host = settings().host
    return f"[{host}]:{bind.rpartition(':')[2]}" if ":" in host else f"{host}:{bind.rpartition(':')[2]}"


def _bound(base: type) -> type:
    """Seldon's metrics server application, listening on ``MNISTKIT_HOST``."""

    class Application(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, options: dict[str, Any] | None = None, **kwargs: Any) -> None:
            options = dict(options or {})
            options["bind"] = _on_host(options.get("bind"))
            super().__init__(*args, options=options, **kwargs)

    return Application


def _application(base: type) -> type:
    """Seldon's gunicorn application with the options it does not expose."""

    class Application(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, options: dict[str, Any] | None = None, **kwargs: Any) -> None:
            options = dict(options or {})
            options["graceful_timeout"] = _graceful_timeout()
            options["worker_class"] = "mnistkit.serve.DrainingSyncWorker"
            options["pre_fork"] = _preload_and_freeze
            options["bind"] = _on_host(options.get("bind"))
            if args:
                _fit_deadline(args[0], options.get("timeout"))
            super().__init__(*args, options=options, **kwargs)

    return Application


def install() -> None:
    """Patch seldon-core's REST app factory and gunicorn application (see the module docstring)."""
    import seldon_core.metrics as metrics
    import seldon_core.microservice as microservice
    import seldon_core.wrapper as wrapper

    _holder_safe_metrics(metrics.SeldonMetrics)
    original = wrapper.get_rest_microservice
    if getattr(original, "mnistkit_guarded", False):
        return
    limits = GuardLimits.from_settings()

    def get_rest_microservice(user_model: Any, seldon_metrics: Any) -> Any:
        app = guard_app(original(user_model, seldon_metrics), limits)
        if 0 < getattr(user_model, "metrics_interval", 0) < 86400:  # mnistkit's model, counters held between hand-overs
            app.wsgi_app = _LateHandOver(user_model, seldon_metrics).wrap(app.wsgi_app)
        return app

    get_rest_microservice.mnistkit_guarded = True  # type: ignore[attr-defined]
    wrapper.get_rest_microservice = get_rest_microservice
    microservice.UserModelApplication = _application(microservice.UserModelApplication)
    microservice.StandaloneApplication = _bound(microservice.StandaloneApplication)


def main(argv: list[str] | None = None) -> None:
    """``seldon-core-microservice`` with the guard installed; the same arguments. A setting or a
    model that cannot serve (a bad ``MNISTKIT_*`` value, no model at ``MNISTKIT_MODEL``) is one
    ``Error:`` line and exit 1, as in mnistkit's commands."""
    from .errors import MnistkitError

    os.environ.setdefault("GRPC_WORKERS", "0")
    try:
        install()
        import seldon_core.microservice as microservice

        sys.argv = ["seldon-core-microservice", *(sys.argv[1:] if argv is None else argv)]
        microservice.main()
    except MnistkitError as e:
        print(f"Error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
