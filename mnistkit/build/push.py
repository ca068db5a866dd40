"""Push an image with credentials, and read errors out of the docker SDK's stream.

The docker SDK does not raise on a failed push (docker-py#1772): ``images.push`` yields
``{"error": ...}`` items, and every item is checked here. Credentials are looked up for
the image's own registry (an ``ImageRef``), in order: explicit username/password
(``--username`` + ``--password-stdin``), the environment (``MNISTKIT_REGISTRY_USERNAME`` /
``MNISTKIT_REGISTRY_PASSWORD``, for the registry ``MNISTKIT_REGISTRY`` when it is set), or the
docker config file (``$DOCKER_CONFIG/config.json`` or
``~/.docker/config.json``). A password is never logged, never put in an exception or a
repr, and never written anywhere.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PushError
from ..imageref import ImageRef, parse_registry
from ..local.dockerd import engine_errors, engine_failure
from ..settings import settings

__all__ = ["Credentials", "check_registry", "PushResult", "find_credentials", "push", "pull", "publish"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)  # never printed, not even in a repr
    source: str = "explicit"  # where they came from, for messages

    def auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}


@dataclass(frozen=True)
class PushResult:
    image: ImageRef
    digest: str
    size: int | None

    @property
    def reference(self) -> str:
        return str(self.image.with_digest(self.digest))


def _docker_config_path() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"


def _from_docker_config(image: ImageRef) -> Credentials | None:
    path = _docker_config_path()
    if not path.exists():
        return None
    try:
        auths = json.loads(path.read_text()).get("auths", {})
    except (ValueError, OSError, AttributeError):
        raise PushError(f"{path} is not valid JSON; fix or remove it") from None
    if not isinstance(auths, dict):
        raise PushError(f"{path}: auths must be a mapping of registry to credentials; fix or remove it")
    for key, entry in auths.items():
        if not image.serves(key) or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, colon, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
                if not user or not colon:
                    raise ValueError("no user:password")
            except (ValueError, TypeError, UnicodeDecodeError):
                raise PushError(
                    f"the auth entry for {image.host} in {path} is not valid base64 user:password"
                ) from None
            return Credentials(user, password, str(path))
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return Credentials(entry["username"], entry["password"], str(path))
    return None


def find_credentials(image: ImageRef, username: str | None = None, password: str | None = None) -> Credentials | None:
    """Credentials for ``image``'s registry, and only for it: explicit ones; else the
    environment's when ``MNISTKIT_REGISTRY`` names this registry; else the docker config's
    entry for this registry; else the environment's when ``MNISTKIT_REGISTRY`` is unset."""
    if username:
        if password is None:
            raise PushError(f"no password for registry user {username!r}: pipe it to --password-stdin")
        return _chosen(image, Credentials(username, password))
    env = settings()
    from_env = None
    if env.registry_username:
        if env.registry_password is None:
            raise PushError("MNISTKIT_REGISTRY_USERNAME is set but MNISTKIT_REGISTRY_PASSWORD is not; set both")
        from_env = Credentials(env.registry_username, env.registry_password, "MNISTKIT_REGISTRY_USERNAME/PASSWORD")
    if from_env is not None and env.registry is not None:  # scoped: for that registry only
        return _chosen(image, from_env) if image.serves(env.registry) else _chosen(image, _from_docker_config(image))
    # unscoped: an entry stored for this very registry wins over credentials meant for any
    return _chosen(image, _from_docker_config(image) or from_env)


def _chosen(image: ImageRef, credentials: Credentials | None) -> Credentials | None:
    if credentials is None:
        log.debug("no credentials for %s", image.host)
    else:
        log.debug("credentials for %s: user %s from %s", image.host, credentials.username, credentials.source)
    return credentials


def push(client: Any, image: ImageRef, credentials: Credentials | None) -> PushResult:
    """Push ``image`` (by tag); return its digest. Raises ``PushError`` on any error item."""
    import docker

    log.info("pushing %s to %s", image, image.host)
    digest = size = None
    progress = _Progress()
    try:
        stream = client.images.push(
            image.repository,
            tag=image.tag_or_latest,
            stream=True,
            decode=True,
            auth_config=credentials.auth_config() if credentials else None,
        )
        for item in stream:
            if "error" in item or "errorDetail" in item:
                message = (item.get("errorDetail") or {}).get("message") or item.get("error") or "unknown error"
                raise PushError(_explain(message, image.host, credentials is not None))
            aux = item.get("aux")
            if isinstance(aux, dict) and "Digest" in aux:
                digest, size = aux["Digest"], aux.get("Size")
            progress.update(item)
    except docker.errors.APIError as e:
        raise PushError(_explain(str(e.explanation or e), image.host)) from None
    except Exception as e:
        reason = engine_failure(e)
        if reason is None:
            raise
        raise PushError(f"cannot push {image}: {reason}") from None
    if not digest:
        raise PushError(
            f"the registry {image.host} did not report a digest for {image}; the push may not have completed"
        )
    log.info("pushed %s@%s", image.repository, digest)
    return PushResult(image, digest, size)


def check_registry(client: Any, image: ImageRef, credentials: Credentials | None) -> None:
    """Before a build that ends in a push: the engine logs in to ``image``'s registry with
    ``credentials``, so a registry that is down or refuses them fails now, not after the build
    and smoke test. (Without credentials there is nothing to check before the push.)"""
    import docker

    if credentials is None:
        return
    with engine_errors(f"cannot check the credentials for {image.host}", PushError):
        try:
            client.api.login(credentials.username, credentials.password, registry=image.host, reauth=True)
        except docker.errors.APIError as e:  # the registry's answer, through the engine
            raise PushError(_explain(str(e.explanation or e), image.host)) from None


class _Progress:
    """Logs each layer once when it is pushed (with its size) or found already there."""

    def __init__(self) -> None:
        self.layers: dict[str, str] = {}
        self.totals: dict[str, int] = {}

    def update(self, item: dict[str, Any]) -> None:
        status, layer = item.get("status"), item.get("id")
        if not layer or not status:
            return
        total = (item.get("progressDetail") or {}).get("total")
        if status == "Pushing" and total:
            self.totals[layer] = int(total)
        elif self.layers.get(layer) != status and status.startswith(("Pushed", "Layer already exists", "Mounted from")):
            self.layers[layer] = status
            mb = f" ({self.totals[layer] / 1e6:.1f} MB)" if layer in self.totals else ""
            log.info("  %s: %s%s", layer, status, mb)


def _explain(message: str, registry: str, had_credentials: bool = True) -> str:
    m = message.strip().splitlines()[0] if message.strip() else "unknown error"
    low = m.lower()
    # unreachable first: the message names the address, whose port may hold "401" (127.0.0.1:40155)
    if "connection refused" in low or "no such host" in low or "dial tcp" in low or "timeout" in low:
        return f"cannot reach the registry {registry} ({m}); is it running and is the address right?"
    auth = "unauthorized" in low or "authentication required" in low or re.search(r"(?<![\d:.])401(?!\d)", low)
    if "no basic auth credentials" in low or (auth and not had_credentials):
        return (
            f"the registry {registry} wants credentials and none were found for it ({m}); use --username with "
            "--password-stdin, MNISTKIT_REGISTRY_USERNAME/PASSWORD, or an entry in the docker config file"
        )
    if auth:
        return f"the registry {registry} refused the credentials ({m}); check the username and password"
    return f"push to {registry} failed: {m}; is {registry} a docker registry, and is the image name right?"


def pull(client: Any, image: ImageRef, credentials: Credentials | None) -> str:
    """Pull ``image`` (tag or digest) with ``credentials``; return the local image id."""
    import docker

    log.info("pulling %s", image)
    try:
        img = client.images.pull(
            image.repository,
            tag=image.digest or image.tag_or_latest,
            auth_config=credentials.auth_config() if credentials else None,
        )
    except docker.errors.NotFound:
        raise PushError(f"{image} is not in the registry {image.host}; build and push it first") from None
    except docker.errors.APIError as e:
        raise PushError(_explain(str(e.explanation or e), image.host)) from None
    except Exception as e:
        reason = engine_failure(e)
        if reason is None:
            raise
        raise PushError(f"cannot pull {image}: {reason}") from None
    return str(img.id)


def publish(client: Any, local: str, registry: str, credentials: Credentials | None) -> PushResult:
    """Tag the local image ``local`` (``name:tag``) as the same name at ``registry`` and push it."""
    import docker

    src = ImageRef.parse(local)
    target = ImageRef(parse_registry(registry), src.path, src.tag_or_latest)
    with engine_errors(f"cannot tag {local} as {target}", PushError):
        try:
            client.images.get(local).tag(target.repository, target.tag_or_latest)
        except docker.errors.ImageNotFound:
            raise PushError(f"image {local} not found; build it first") from None
    return push(client, target, credentials)
