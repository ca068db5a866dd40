"""The V2 image's server: ``python -m mnistkit.launch_v2 FOLDER`` runs MLServer on one port.

FOLDER holds ``model-settings.json`` (the s2i build writes it beside ``model/``). The
launcher reserves the HTTP port; a template process imports MLServer and the runtime, forks
``MNISTKIT_PROCESSES`` MLServer processes and exits, so they share the imported pages; each
listens on the port with its own SO_REUSEPORT socket (the kernel spreads connections), so two
cores serve in parallel without MLServer's inference pool (``parallel_workers: 0``: no pickling
between processes). Each process:

* loads and warms the model *before* it listens, so no request meets a half-started process;
* answers with a guard in front of MLServer's app: a body over ``MNISTKIT_MAX_BODY`` (also
  after gzip) gets 413, and schema, JSON and routing errors get V2 ``{"error": ...}`` bodies
  (400/404/405) that never echo the input or a traceback;
* refuses MLServer's repository API's load and unload (403): the image's model stays loaded;
* runs with MLServer's ``debug`` off (it defaults to on: access logs and tracebacks), gzip off
  and the ``httptools`` parser;
* serves the Swagger UI of ``/v2/docs`` (and each model's ``/docs``) from the image, under
  ``/v2/docs/swagger-ui/`` (the ``swagger-ui-bundle-v2`` package), not from a CDN: it works
  offline and in clusters without egress.

Metrics: every process counts into one ``prometheus_client`` multiprocess folder and the
first one serves them all on ``MLSERVER_METRICS_PORT``. gRPC: every process binds
``MLSERVER_GRPC_PORT`` too (gRPC sets SO_REUSEPORT), so the kernel spreads those as well.
The parent, which imports none of that, supervises: SIGTERM/SIGINT go to every process and it
exits once they have finished their requests; a process that dies after serving is replaced.
Ports come from the platform's variables:
``MLSERVER_HTTP_PORT`` (Seldon sets 9000), else ``PORT`` (Knative), else 8080.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import shutil
import socket
import sys
import tempfile
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, replace
from typing import Any

from .errors import ConfigError, MnistkitError, ServingError
from .settings import settings
from .supervisor import Supervisor

__all__ = ["LaunchConfig", "BodyGuard", "main"]

log = logging.getLogger("mnistkit.launch_v2")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: where the docs pages load Swagger UI's script, style and icon from (this server)
SWAGGER_UI = "/v2/docs/swagger-ui"
#: an over-limit body is read and dropped up to this many times the limit before the 413
DRAIN_FACTOR = 16
SERVER_DEFAULTS = {"MLSERVER_DEBUG": "false", "MLSERVER_GZIP_ENABLED": "false", "MLSERVER_PARALLEL_WORKERS": "0"}


@dataclass(frozen=True)
class LaunchConfig:
    folder: str = "."
    host: str = "0.0.0.0"
    port: int = 8080
    processes: int = 2
    max_body: int = 4 * 1024 * 1024
    #: MLServer's other ports by variable (0: none): every process binds gRPC's (with
    #: SO_REUSEPORT, so a second server would silently join it), the first the metrics one
    other_ports: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_env(cls, folder: str = ".", environ: MutableMapping[str, str] | None = None) -> "LaunchConfig":
        env = os.environ if environ is None else environ
        s = settings(env)
        port = _port(
            env.get("MLSERVER_HTTP_PORT") or env.get("PORT") or "8080", "the HTTP port", "MLSERVER_HTTP_PORT, else PORT"
        )
        others = tuple(
            (name, _port(env.get(name) or default, name, "MLServer's"))
            for name, default in (("MLSERVER_GRPC_PORT", "8081"), ("MLSERVER_METRICS_PORT", "8082"))
        )
        host = env.get("MLSERVER_HOST") or "0.0.0.0"
        return cls(folder, host, port, max(1, s.processes), s.max_body, tuple(o for o in others if o[1]))


def _port(value: str, what: str, where: str) -> int:
    if not value.isdigit() or not 0 <= int(value) < 65536:
        raise ConfigError(f"{what} {value!r} ({where}) is not a port number")
    return int(value)


def _check_folder(folder: str) -> None:
    """Refuse, before anything starts, a folder with no model to serve: MLServer would serve
    none, its readiness saying 200 while every inference got a 404."""
    if not os.path.isdir(folder):
        raise ServingError(f"{folder} is not a folder; give the V2 source folder (model-settings.json beside model/)")
    for _, _, files in os.walk(folder):
        if "model-settings.json" in files:
            return
    raise ServingError(
        f"{folder} holds no model-settings.json, so there is no model to serve; give the folder that "
        "'mnistkit-build SOURCE --server mlserver --source-only DIR' writes"
    )


async def _json_error(send: Send, status: int, message: str) -> None:
    import orjson

    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyGuard:
    """ASGI middleware: 413 for a body over ``max_body`` bytes, by its Content-Length, as it
    streams in, or once gunzipped (MLServer would gunzip it without a limit)."""

    def __init__(self, app: Any, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        encoding = headers.get(b"content-encoding", b"identity").lower()
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await self._drain(receive)
            return await _json_error(send, 413, self._too_large(int(length)))
        if length is not None and encoding == b"identity":
            return await self.app(scope, receive, send)  # the server enforces Content-Length
        body = await self._read(receive)  # chunked, or compressed: read it here, bounded
        if body is None:
            await self._drain(receive)
            return await _json_error(send, 413, self._too_large())
        if encoding != b"identity":
            if encoding not in (b"gzip", b"x-gzip"):
                name = encoding.decode(errors="replace")
                return await _json_error(send, 415, f"Content-Encoding {name!r} is not supported; use gzip or none")
            unzipped = self._gunzip(body)
            if unzipped is None:
                return await _json_error(send, 413, self._too_large(what="once decompressed"))
            drop = (b"content-encoding", b"content-length")
            body, scope = unzipped, {**scope, "headers": [(k, v) for k, v in scope["headers"] if k not in drop]}
        await self.app(scope, _replay(body), send)

    def _too_large(self, size: int | None = None, what: str = "") -> str:
        got = f" of {size} bytes" if size is not None else ""
        return f"request body{got} is over the limit of {self.max_body} bytes{' ' + what if what else ''}; send fewer images per request"

    async def _read(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _drain(self, receive: Receive) -> None:
        """Read and drop the rest of an over-limit body (up to DRAIN_FACTOR times the limit), so
        the client reads the 413 instead of a connection reset; nothing is kept in memory."""
        left = DRAIN_FACTOR * self.max_body
        while left > 0:
            message = await receive()
            left -= len(message.get("body", b""))
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                return

    def _gunzip(self, body: bytes) -> bytes | None:
        try:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = d.decompress(body, self.max_body + 1)
        except zlib.error:
            return body  # not gzip after all: the JSON parser will say the body is invalid
        return None if len(out) > self.max_body or d.unconsumed_tail else out


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _error_handlers(app: Any) -> None:
    """V2 ``{"error": ...}`` bodies for FastAPI's own errors, without echoing the input."""
    from fastapi.exceptions import RequestValidationError
    from mlserver.rest.responses import Response
    from starlette.exceptions import HTTPException

    async def invalid(request: Any, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
        detail = (first.get("ctx") or {}).get("error") or ""
        why = f"{first.get('msg', 'invalid')}{f' ({detail})' if detail else ''}"
        return Response({"error": f"not a V2 inference request: {where}: {why}"}, status_code=400)

    async def http_error(request: Any, exc: HTTPException) -> Response:
        return Response({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)


def _offline_docs(app: Any) -> None:
    """Serve Swagger UI's files from the swagger-ui-bundle-v2 package at ``SWAGGER_UI`` and
    point MLServer's docs pages there (they name a CDN otherwise); MLServer's pages stay as
    they are where the package is not installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return
    import mlserver.rest.endpoints
    from fastapi.openapi.docs import get_swagger_ui_html
    from starlette.staticfiles import StaticFiles

    mlserver.rest.endpoints.get_swagger_ui_html = functools.partial(
        get_swagger_ui_html,
        swagger_js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER_UI}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER_UI}/favicon-32x32.png",
    )
    app.mount(SWAGGER_UI, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")


def _shared_metrics(server: Any, serve: bool) -> None:
    """All processes count into PROMETHEUS_MULTIPROC_DIR; only the first serves the sum."""
    from mlserver.metrics.prometheus import PrometheusEndpoint
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    class Endpoint(PrometheusEndpoint):  # type: ignore[misc]
        @property
        def _registry(self) -> CollectorRegistry:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return registry

    metrics = server._metrics_server
    if metrics is None:
        return
    if not serve:
        server._metrics_server = None
        return
    metrics._endpoint = Endpoint(server._settings)
    metrics._app = metrics._get_app()


async def _load_settings(folder: str) -> tuple[Any, list[Any]]:
    """``mlserver.cli.serve.load_settings`` (MLServer 1.7.1) without importing ``mlserver.cli``,
    whose ``main`` pulls in tritonclient, aiohttp and gevent (~90 ms and ~15 MB per process)
    for the batch-processing command, which a server never runs."""
    from mlserver.repository.factory import ModelRepositoryFactory
    from mlserver.settings import Settings

    sys.path.insert(0, ".")  # as MLServer does: runtimes beside the settings can be imported
    sys.path.insert(0, folder)
    path = os.path.join(folder, "settings.json")
    server_settings = Settings.parse_file(path) if os.path.isfile(path) else Settings()
    server_settings.model_repository_root = folder
    models: list[Any] = []
    if server_settings.load_models_at_startup:
        models = await ModelRepositoryFactory.resolve_model_repository(server_settings).list()
    return server_settings, models


async def _serve(cfg: LaunchConfig, index: int) -> None:
    from mlserver import MLServer

    server_settings, models = await _load_settings(cfg.folder)
    server = MLServer(server_settings)
    _read_only_repository(server)
    app = server._rest_server._app
    _error_handlers(app)
    _offline_docs(app)
    app.add_middleware(BodyGuard, max_body=cfg.max_body)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _shared_metrics(server, serve=index == 0)
    for model in models:  # ready before listening: no request meets a half-started process
        await server._model_registry.load(model)
    sock = _bind(cfg)  # this process's own socket on the shared port
    server_settings._custom_rest_server_settings = {
        "fd": sock.fileno(),
        "http": "httptools",
        "timeout_graceful_shutdown": 20,
    }
    await server.start([])


def _read_only_repository(server: Any) -> None:
    """The image serves the model it was built with. MLServer's repository API (REST
    ``/v2/repository/models/<name>/load|unload``, and gRPC) would let any client unload it from
    one process, which then answers 404 while its readiness stays 200 and nothing restarts it.
    Loading and unloading are refused (403) on every route; the index still lists the model."""
    from mlserver.errors import MLServerError

    async def refuse(name: str) -> bool:
        raise MLServerError(
            f"model {name!r} is the one this server was started with; the repository API cannot load or unload "
            "models here (restart the server to change it)",
            status_code=403,
        )

    server._model_repository_handlers.load = refuse
    server._model_repository_handlers.unload = refuse


def _child(cfg: LaunchConfig, index: int) -> int:
    import asyncio

    from mlserver.utils import install_uvloop_event_loop

    install_uvloop_event_loop()
    try:
        asyncio.run(_serve(cfg, index))
    except MnistkitError as e:  # a model that cannot load: say why in one line, exit non-zero
        log.error("server process %d failed: %s", index, e)
        return 1
    except Exception as e:  # MLServer's own errors (a bad settings file) keep their traceback
        log.error("server process %d failed: %s", index, e, exc_info=True)
        return 1
    return 0


def _bind(cfg: LaunchConfig, *, reuse_port: bool = True, listen: bool = True) -> socket.socket:
    """A socket on the HTTP port. Every serving process listens on its own, with SO_REUSEPORT,
    and the kernel spreads new connections over them by address hash. With one shared socket,
    whichever process woke first took every connection that arrived together (measured: a
    fresh server gave all 4, or all 16, keep-alive connections to one process in 1 start of
    3 to 5, and served at half speed)."""
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as e:
        sock.close()
        raise ServingError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror}") from None
    if listen:
        sock.listen(2048)
    return sock


def _reserve(cfg: LaunchConfig) -> tuple[LaunchConfig, list[socket.socket]]:
    """The supervisor's hold on the port, before anything starts, held while serving:

    * a plain bind first, which fails while anything listens there (another server, or servers
      a killed supervisor left behind; a SO_REUSEPORT bind would join them);
    * a lock, an abstract Unix socket named for the port (per network namespace, as the port
      is), which fails while another launcher holds that port and is still starting;
    * a SO_REUSEPORT socket that does not listen, on the port the probe got (port 0 chooses)."""
    probe = _bind(cfg, reuse_port=False, listen=False)
    cfg = replace(cfg, port=probe.getsockname()[1])
    probe.close()
    for name, port in cfg.other_ports:
        try:
            _bind(replace(cfg, port=port), reuse_port=False, listen=False).close()
        except ServingError as e:
            raise ServingError(f"{e} ({name})") from None
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0mnistkit-launch-v2:{cfg.port}")
    except OSError:
        lock.close()
        raise ServingError(
            f"cannot listen on {cfg.host}:{cfg.port}: another mnistkit V2 server is starting there"
        ) from None
    return cfg, [lock, _bind(cfg, listen=False)]


#: imported before forking too: what every process imports anyway when it starts and loads the model
PRELOAD = (
    "mlserver.repository.factory",
    "mlserver.utils",
    "uvloop",
    "mnistkit.runtime",
    "mnistkit.serving",
    "PIL.PngImagePlugin",
)


def _preload() -> None:
    """Import the heavy modules once, before forking, so the processes share their pages.

    The collector is off while they import: the imports make ~200,000 objects and almost no
    garbage, so its passes over them (and a ``gc.collect`` before the freeze) only cost time,
    ~0.1 s on the path to the first answer; a few hundred import-time cycles stay frozen."""
    import importlib.util

    from .deferred import attach, defer

    gc.disable()
    try:
        defer()  # features that are off, and pandas: imported when first used (~0.1 s, see mnistkit.deferred)
        import mnistkit.serving_v2  # noqa: F401  (mlserver, fastapi, pydantic, prometheus_client)

        attach()

        for name in ("torch", "onnxruntime"):
            if importlib.util.find_spec(name):
                importlib.import_module(name)
        for name in PRELOAD:
            importlib.import_module(name)
    finally:
        gc.freeze()  # the collector then never touches (and so copies) the objects the processes share
        gc.enable()


def main(argv: list[str] | None = None) -> int:
    """Serve the model-settings folder ``argv[0]`` (default ``.``) until SIGTERM."""
    args = sys.argv[1:] if argv is None else argv
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(levelname)s - %(message)s"))
    mnistkit_log = logging.getLogger("mnistkit")
    mnistkit_log.addHandler(handler)
    mnistkit_log.setLevel(logging.INFO)
    for key, value in SERVER_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        cfg = LaunchConfig.from_env(args[0] if args else ".")
        cfg, reservation = _reserve(cfg)
        _check_folder(cfg.folder)
    except MnistkitError as e:  # a wrong setting: one line, no traceback
        log.error("%s", e)
        return 2
    metrics = None
    if cfg.processes > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mnistkit-metrics-")
    supervisor = Supervisor(cfg.processes, _preload, functools.partial(_child, cfg), keep=reservation)
    log.info("serving %s on %s:%d with %d processes", cfg.folder, cfg.host, cfg.port, cfg.processes)
    try:
        return supervisor.run()
    finally:
        if metrics is not None:  # the folder it made (one the platform set stays)
            shutil.rmtree(metrics, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
