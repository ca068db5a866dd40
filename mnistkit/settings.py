"""Every ``MNISTKIT_*`` environment variable, in one typed object read when it is used.

``Settings.from_env()`` reads the environment at call time (never at import), so a test or
a launcher can change a variable and the next call sees it. Each field documents its
variable; the README's table of variables is checked against this class in the tests.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["Settings", "settings", "ENV_PREFIX"]

ENV_PREFIX = "MNISTKIT_"


def _var(default: Any, doc: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"doc": doc}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """mnistkit's environment. Field ``x`` is read from ``MNISTKIT_X``."""

    home: str = _var("~/.mnistkit", "State of the embedded services (dockerd, registry), build caches.")
    data_dir: str | None = _var(None, "Folder holding MNIST/raw/ (default: ./examples/data).")
    polyaxon: str = _var("auto", "Report metrics to Polyaxon: auto (when managed), on, offline or off.")
    registry: str | None = _var(
        None, "Registry host[:port] the MNISTKIT_REGISTRY_USERNAME/PASSWORD are for (default: any)."
    )
    registry_username: str | None = _var(None, "Registry user for pushes (with MNISTKIT_REGISTRY_PASSWORD).")
    registry_password: str | None = _var(None, "Registry password for pushes; never logged.", secret=True)
    model: str = _var("model", "Served model folder (in an image: /microservice/model).")
    runtime: str = _var("auto", "Serving runtime: auto (ONNX when the model has one), onnx or torch.")
    threads: int = _var(1, "Threads per serving process.")
    processes: int = _var(2, "MLServer processes sharing the HTTP port in a V2 image (mnistkit.launch_v2).")
    max_batch: int = _var(256, "Most images in one prediction request.")
    max_body: int = _var(4 * 1024 * 1024, "Largest request body in bytes (413 above it).")
    max_image_pixels: int = _var(4096 * 4096, "Largest encoded image (width x height) a server decodes.")
    metrics_interval: float = _var(1.0, "Seconds between hand-overs of the custom metrics to Seldon.")
    body_timeout: float = _var(
        30.0, "Seconds a v1 server gives a client to send a request's headers, then its body (408 after)."
    )
    host: str = _var(
        "0.0.0.0",
        "Address a v1 server's REST and metrics ports listen on (mnistkit's smoke test, which runs "
        "images on the host network, sets 127.0.0.1).",
    )
    builder_digest: str | None = _var(None, "Set in model images: the digest of the builder image they were built on.")
    image_torch: str = _var("torch==2.13.0+cpu", "torch requirement installed in --runtime torch images.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read every field from ``MNISTKIT_<FIELD>``; raise ``ConfigError`` on a bad value."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw, f.default)
        return cls(**values).validate()

    def validate(self) -> "Settings":
        """Values the type allows but nothing can use: one line naming the variable."""
        choices = {"polyaxon": ("auto", "on", "offline", "off"), "runtime": ("auto", "onnx", "torch")}
        for name, allowed in choices.items():
            if str(getattr(self, name)).lower() not in allowed:
                variable = ENV_PREFIX + name.upper()
                raise ConfigError(f"{variable}={getattr(self, name)!r}: use one of {', '.join(allowed)}")
        for name in ("threads", "processes", "max_batch", "max_body", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()}={getattr(self, name)} must be at least 1")
        if not 0 < self.body_timeout < 86400:  # (and not NaN)
            raise ConfigError(f"{ENV_PREFIX}BODY_TIMEOUT={self.body_timeout} must be more than 0 and under a day")
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ConfigError(
                f"{ENV_PREFIX}HOST={self.host!r} is not an IP address (0.0.0.0: every interface)"
            ) from None
        if not 0 <= self.metrics_interval < 86400:  # (and not NaN)
            raise ConfigError(f"{ENV_PREFIX}METRICS_INTERVAL={self.metrics_interval} must be 0 or more, under a day")
        return self

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser()

    @classmethod
    def variables(cls) -> list[tuple[str, str, str]]:
        """(variable, default, doc) of every setting, for documentation."""
        return [
            (ENV_PREFIX + f.name.upper(), "" if f.default is None else str(f.default), f.metadata["doc"])
            for f in fields(cls)
        ]


def _convert(name: str, raw: str, default: Any) -> Any:
    if default is None or isinstance(default, str):
        return raw
    try:
        return type(default)(raw)
    except ValueError:
        kind = type(default).__name__
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}; unset it or fix it") from None


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings now (the environment is read on every call)."""
    return Settings.from_env(environ)
