"""Modules the V2 server imports when first used, not as it starts.

MLServer 1.7 imports, as it starts, modules for features that are off unless a setting turns them
on, and pandas for a codec mnistkit's runtime never asks for (it reads its tensors itself):

* pandas, for the ``pd`` request codec (~70 ms, the most of any one import);
* tracing (``MLSERVER_TRACING_SERVER``): opentelemetry's OTLP exporter, and its FastAPI and gRPC
  instrumentation;
* Kafka (``MLSERVER_KAFKA_ENABLED``): aiokafka;
* MLServer's inference pool (``MLSERVER_PARALLEL_WORKERS``).

Together they are ~0.1 s of the ~0.35 s of imports between the container's start and its first
answer, and pages every server process carries. ``defer()`` puts a stand-in for each module in
``sys.modules`` before MLServer is imported. The names MLServer imports from it are forwarders: the
first call of one, or the first read of any other attribute, imports the real module, so each
feature still works when it is switched on; it pays for its import then. The ``pd`` codec stays
registered where MLServer registers it: a ``RequestCodec`` whose methods import the real one.

What a forwarder cannot be is the real object: ``isinstance(x, forwarder)``, subclassing it and
``is`` fail. MLServer 1.7.1 only calls the names deferred here, or reads their attributes;
``tests/test_deferred.py`` holds each feature to working through them.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from collections.abc import Callable, Mapping, Sequence
from importlib.machinery import ModuleSpec, PathFinder
from typing import Any

__all__ = ["DEFERRED", "Forward", "StandIn", "attach", "defer", "deferred"]

_LOCK = threading.Lock()


class StandIn(types.ModuleType):
    """In ``sys.modules`` in place of a module not imported yet."""

    def __init__(
        self, name: str, names: Mapping[str, Callable[[StandIn, str], Any]], spec: ModuleSpec | None = None
    ) -> None:
        super().__init__(name, f"stand-in for {name}, imported when first used (mnistkit.deferred)")
        self.__dict__["_names"] = dict(names)
        self.__spec__ = spec  # the real module's (importlib.util.find_spec answers with it)
        if spec is not None and spec.submodule_search_locations is not None:
            self.__path__ = list(spec.submodule_search_locations)  # a package: its submodules import from its folder

    def load(self) -> types.ModuleType:
        """The real module, imported now if it is not yet. Threads that get here together import
        it once: the first takes the stand-in out of ``sys.modules``, and ``import_module`` makes
        the others wait for a module another thread is still importing."""
        with _LOCK:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
        try:
            return importlib.import_module(self.__name__)
        except BaseException:
            sys.modules.setdefault(self.__name__, self)  # the next use tries again
            raise

    def __getattr__(self, name: str) -> Any:
        make = self.__dict__["_names"].get(name)
        if make is not None:  # a name importers take as they import: a forwarder, made once
            value = make(self, name)
            setattr(self, name, value)
            return value
        if name.startswith("__"):  # importlib's and inspect's probes
            raise AttributeError(name)
        return getattr(self.load(), name)


class Forward:
    """Stands for ``module.name``: calling it, or reading an attribute of it, imports the module."""

    def __init__(self, stand_in: StandIn, name: str) -> None:
        self._stand_in, self._name = stand_in, name

    def target(self) -> Any:
        return getattr(self._stand_in.load(), self._name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.target()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.target(), attr)

    def __repr__(self) -> str:
        return f"<deferred {self._stand_in.__name__}.{self._name}>"


class _DataFrameHint:
    """``PandasCodec.TypeHint``: equal to ``pandas.DataFrame`` without importing pandas (a type
    hint of ``pandas.DataFrame`` exists only once something else has imported pandas)."""

    def __eq__(self, other: object) -> bool:
        pandas = sys.modules.get("pandas")
        real = pandas is not None and not isinstance(pandas, StandIn) and other is pandas.DataFrame
        return other is self or real

    def __hash__(self) -> int:
        return hash("pandas.DataFrame")

    def __repr__(self) -> str:
        return "pandas.DataFrame"


def _real_attribute(module: str, name: str) -> Any:
    """``module.name``, imported (what a pickled lazy codec becomes when unpickled)."""
    return getattr(importlib.import_module(module), name)


def _pandas_codec(stand_in: StandIn, name: str) -> type:
    """MLServer's ``pd`` request codec, registered as ``mlserver.codecs`` imports it (in the
    same place); it acts as the real class does, each of its attributes imported with pandas
    when first read: the real class's classmethods run bound to this class (or a subclass of
    it, whose overrides they then call). Importing the real module registers the real codec
    in this one's place."""
    import copyreg
    import inspect

    from mlserver.codecs.base import RequestCodec, register_request_codec

    def bound(cls: type, attr: str) -> Any:
        real = getattr(stand_in.load(), name)
        value = inspect.getattr_static(real, attr)
        if isinstance(value, classmethod):
            return value.__func__.__get__(cls)
        if isinstance(value, staticmethod):
            return value.__func__
        return getattr(real, attr)

    class Lazy(type(RequestCodec)):  # type: ignore[misc]
        def __getattr__(cls, attr: str) -> Any:  # what the real codec has beyond RequestCodec's API
            if attr.startswith("__"):
                raise AttributeError(attr)
            return bound(cls, attr)

    def forward(attr: str) -> classmethod:  # type: ignore[type-arg]
        return classmethod(lambda cls, *args, **kwargs: bound(cls, attr)(*args, **kwargs))

    def can_encode(cls: type, payload: Any) -> bool:  # no DataFrame exists until pandas is imported
        return "pandas" in sys.modules and bool(bound(cls, "can_encode")(payload))

    body: dict[str, Any] = {
        "__doc__": "MLServer's pandas codec, imported when first used (mnistkit.deferred).",
        "__module__": stand_in.__name__,
        "ContentType": "pd",
        "JsonContentType": "pd_json",
        "TypeHint": _DataFrameHint(),
        "can_encode": classmethod(can_encode),
    }
    # RequestCodec's API and MLServer 1.7.1's PandasCodec.encode_outputs, in the class itself
    # (a subclass's super() finds only those); anything else through the metaclass
    for attr in ("encode_response", "decode_response", "encode_request", "decode_request", "encode_outputs"):
        body[attr] = forward(attr)
    codec = Lazy(name, (RequestCodec,), body)
    copyreg.pickle(Lazy, lambda c: (_real_attribute, (stand_in.__name__, c.__name__)))
    return register_request_codec(codec)  # type: ignore[no-any-return]


#: module -> the names MLServer 1.7.1 imports from it as it starts, and how each is stood for
DEFERRED: dict[str, dict[str, Callable[[StandIn, str], Any]]] = {
    "mlserver.codecs.pandas": {"PandasCodec": _pandas_codec},
    "mlserver.tracing": {"get_tracer_provider": Forward},
    "opentelemetry.instrumentation.fastapi": {"FastAPIInstrumentor": Forward},
    "opentelemetry.instrumentation.grpc": {"aio_server_interceptor": Forward, "filters": Forward},
    "mlserver.kafka": {"KafkaServer": Forward},
    "mlserver.parallel": {"InferencePoolRegistry": Forward},
}


def _find(name: str) -> ModuleSpec | None:
    """The spec of module ``name`` on ``sys.path``, found without running its packages' code
    (``mlserver``'s would import all of MLServer); namespace packages, which have none, are
    imported on the way."""
    parts = name.split(".")
    path: Sequence[str] | None = None
    spec = None
    for i in range(len(parts)):
        here = ".".join(parts[: i + 1])
        spec = PathFinder.find_spec(here, None if path is None else list(path))
        if spec is None:
            return None
        path = spec.submodule_search_locations
        if i < len(parts) - 1:
            if path is None:  # a module, not a package: nothing below it
                return None
            if spec.origin is None:  # a namespace package: its children's specs need it imported
                path = importlib.import_module(here).__path__
    return spec


def defer(modules: Mapping[str, Mapping[str, Callable[[StandIn, str], Any]]] = DEFERRED) -> list[str]:
    """Put a stand-in in ``sys.modules`` for each module that is installed and not imported yet
    (another version of MLServer may lack one); returns their names."""
    done = []
    for name, names in modules.items():
        spec = None if name in sys.modules else _find(name)
        if spec is not None:
            sys.modules[name] = StandIn(name, names, spec)
            done.append(name)
    return done


def attach() -> None:
    """Make each stand-in an attribute of its package, once that is imported, as importing the
    real module would (``import mlserver.parallel; mlserver.parallel.X`` then works)."""
    for name in deferred():
        parent, _, child = name.rpartition(".")
        package = sys.modules.get(parent)
        if package is not None and child not in vars(package):
            setattr(package, child, sys.modules[name])


def deferred() -> list[str]:
    """The modules whose stand-ins are still in ``sys.modules`` (not imported yet)."""
    return sorted(name for name, module in sys.modules.items() if isinstance(module, StandIn))
