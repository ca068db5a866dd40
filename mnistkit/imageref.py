"""``ImageRef``: an image reference parsed once, by docker's reference grammar.

    [REGISTRY[:PORT]/]PATH[:TAG][@sha256:DIGEST]

The first component is a registry when it has a ``.`` or a ``:``, is ``localhost``, or has
upper-case letters (docker's own rule); otherwise the image lives on Docker Hub. The
registry decides whose credentials a push may use, so it is never guessed twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .errors import ConfigError

__all__ = ["ImageRef", "DOCKER_HUB", "parse_registry"]

DOCKER_HUB = "docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
)
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")


def _port_ok(host: str) -> bool:
    """A ``host[:port]`` whose port, if any, is 1..65535."""
    _, colon, port = host.rpartition(":")
    return not colon or 1 <= int(port) <= 65535


def _is_registry(first: str) -> bool:
    """Docker's rule for the first component of a reference: a registry, not a Hub account."""
    return "." in first or ":" in first or first == "localhost" or first != first.lower()


def parse_registry(text: str) -> str:
    """A registry to tag and push to (``host[:port]``), checked as docker will read it: a name
    without a dot or a port (``registry``) is a Docker Hub account to docker, so an image tagged
    there, and the credentials chosen for it, would go to Docker Hub."""
    if "://" in text:
        raise ConfigError(
            f"registry {text!r}: give it without a scheme, as host[:port] (e.g. {text.split('://', 1)[1]})"
        )
    if not _DOMAIN.fullmatch(text or "-") or not _port_ok(text):
        raise ConfigError(f"{text!r} is not a registry host[:port]; e.g. localhost:5000 or registry.example.com")
    if not _is_registry(text):
        raise ConfigError(
            f"registry {text!r} has no dot and no port, so docker would push to Docker Hub instead; "
            f"give host:port (e.g. {text}:5000) or a domain name"
        )
    return text


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference. ``registry`` is ``None`` for Docker Hub."""

    registry: str | None
    path: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ImageRef":
        """Parse ``text``; raise ``ConfigError`` saying what is wrong with it."""
        if not text or any(c.isspace() for c in text):
            raise ConfigError(f"{text!r} is not an image reference; use [REGISTRY/]NAME[:TAG][@sha256:DIGEST]")
        rest, _, digest = text.partition("@")
        if digest and not _DIGEST.fullmatch(digest):
            raise ConfigError(f"{text!r}: the digest must be sha256: and 64 hex digits")
        first, slash, remainder = rest.partition("/")
        registry = None
        if slash and _is_registry(first):
            if not _DOMAIN.fullmatch(first) or not _port_ok(first):
                raise ConfigError(f"{text!r}: {first!r} is not a registry host[:port] (a port is 1..65535)")
            registry, rest = first, remainder
        name, colon, tag = rest.rpartition(":") if ":" in rest else (rest, "", "")
        if colon and not _TAG.fullmatch(tag):
            raise ConfigError(f"{text!r}: {tag!r} is not a valid tag")
        for part in name.split("/"):
            if not _COMPONENT.fullmatch(part):
                hint = " (repository names are lower case)" if part.lower() != part else ""
                raise ConfigError(f"{text!r}: {part!r} is not a valid repository name component{hint}")
        if len(name) + len(registry or "") > 255:
            raise ConfigError(f"{text!r} is longer than docker allows (255 characters)")
        return cls(registry, name, tag or None, digest or None)

    @property
    def host(self) -> str:
        """The registry to authenticate against (``docker.io`` for Docker Hub)."""
        return DOCKER_HUB if self.registry is None else self.registry

    @property
    def repository(self) -> str:
        """``[registry/]path``: what ``docker push`` and the SDK call the repository."""
        return self.path if self.registry is None else f"{self.registry}/{self.path}"

    def serves(self, host: str) -> bool:
        """Whether credentials stored for ``host`` (a docker-config key) belong to this registry."""
        key = host.split("://", 1)[-1].split("/", 1)[0].lower()
        if self.registry is None:
            return key in _HUB_ALIASES
        return key == self.registry.lower()

    def with_tag(self, tag: str) -> "ImageRef":
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> "ImageRef":
        return replace(self, tag=None, digest=digest)

    @property
    def tag_or_latest(self) -> str:
        return self.tag or "latest"

    def __str__(self) -> str:
        out = self.repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out
