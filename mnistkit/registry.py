"""Push an image with credentials, and read errors out of the docker SDK's stream.

The docker SDK does not raise on a failed push (docker-py#1772): ``images.push`` yields
``{"error": ...}`` items. Every item is checked here. Credentials come from, in order:
explicit username/password (``--username`` + ``--password-stdin``), the environment
(``MNISTKIT_REGISTRY_USERNAME`` / ``MNISTKIT_REGISTRY_PASSWORD``), or the docker config
file (``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``). Passwords are never
logged, never put in an exception and never written anywhere.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PushError

__all__ = ["Credentials", "PushResult", "find_credentials", "registry_of", "push"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)  # never printed, not even in a repr

    def auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}


@dataclass(frozen=True)
class PushResult:
    repository: str
    tag: str
    digest: str
    size: int | None

    @property
    def reference(self) -> str:
        return f"{self.repository}@{self.digest}"


def registry_of(repository: str) -> str:
    """The registry host of an image reference (docker's rule: a first part with '.' or ':', or localhost)."""
    first, sep, _ = repository.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _from_docker_config(registry: str) -> Credentials | None:
    folder = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    path = Path(folder) / "config.json"
    if not path.exists():
        return None
    try:
        auths = json.loads(path.read_text()).get("auths", {})
    except (ValueError, OSError):
        raise PushError(f"{path} is not valid JSON; fix or remove it") from None
    for key, entry in auths.items():
        host = key.split("://", 1)[-1].split("/", 1)[0]
        if host != registry or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise PushError(f"the auth entry for {registry} in {path} is not valid base64 user:password") from None
            return Credentials(user, password)
        if entry.get("username") and entry.get("password"):
            return Credentials(entry["username"], entry["password"])
    return None


def find_credentials(repository: str, username: str | None = None, password: str | None = None) -> Credentials | None:
    """Credentials for the registry of ``repository``: explicit, environment, docker config."""
    if username:
        if password is None:
            raise PushError("--username needs a password: pipe it to --password-stdin")
        return Credentials(username, password)
    env_user = os.environ.get("MNISTKIT_REGISTRY_USERNAME")
    if env_user:
        return Credentials(env_user, os.environ.get("MNISTKIT_REGISTRY_PASSWORD", ""))
    return _from_docker_config(registry_of(repository))


def push(client: Any, image: str, credentials: Credentials | None) -> PushResult:
    """Push ``image`` (``repo:tag``); return its digest. Raises ``PushError`` on any error item."""
    import docker

    repository, _, tag = image.rpartition(":")
    if not repository or "/" in tag:
        repository, tag = image, "latest"
    registry = registry_of(repository)
    log.info("pushing %s:%s to %s", repository, tag, registry)
    digest = size = None
    layers: dict[str, str] = {}
    totals: dict[str, int] = {}
    try:
        stream = client.images.push(repository, tag=tag, stream=True, decode=True,
                                    auth_config=credentials.auth_config() if credentials else None)
        for item in stream:
            if "error" in item or "errorDetail" in item:
                message = (item.get("errorDetail") or {}).get("message") or item.get("error") or "unknown error"
                raise PushError(_explain(message, registry))
            aux = item.get("aux")
            if isinstance(aux, dict) and "Digest" in aux:
                digest, size = aux["Digest"], aux.get("Size")
            status, layer = item.get("status"), item.get("id")
            if layer and status == "Pushing" and item.get("progressDetail", {}).get("total"):
                totals[layer] = int(item["progressDetail"]["total"])
                log.debug("  %s: %s", layer, item.get("progress", ""))
            elif layer and status and layers.get(layer) != status and status.startswith(("Pushed", "Layer already exists", "Mounted from")):
                layers[layer] = status
                mb = f" ({totals[layer] / 1e6:.1f} MB)" if layer in totals else ""
                log.info("  %s: %s%s", layer, status, mb)
    except docker.errors.APIError as e:
        raise PushError(_explain(str(e.explanation or e), registry)) from None
    except docker.errors.DockerException as e:
        raise PushError(f"cannot push {image}: {type(e).__name__}") from None
    if not digest:
        raise PushError(f"the registry {registry} did not report a digest for {image}; the push may not have completed")
    log.info("pushed %s@%s", repository, digest)
    return PushResult(repository, tag, digest, size)


def _explain(message: str, registry: str) -> str:
    m = message.strip().splitlines()[0] if message.strip() else "unknown error"
    low = m.lower()
    if "unauthorized" in low or "authentication required" in low or "401" in low:
        return f"the registry {registry} refused the credentials ({m}); check the username and password"
    if "connection refused" in low or "no such host" in low or "dial tcp" in low or "timeout" in low:
        return f"cannot reach the registry {registry} ({m}); is it running and is the address right?"
    return f"push to {registry} failed: {m}"
