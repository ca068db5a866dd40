"""ImageRef: docker's reference grammar, one table of the hard cases."""

from __future__ import annotations

import re

import pytest

from mnistkit.errors import ConfigError
from mnistkit.imageref import ImageRef

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "text, registry, path, tag, digest, host",
    [
        (
            "127.0.0.1:5000/mnistkit/mnist",
            "127.0.0.1:5000",
            "mnistkit/mnist",
            None,
            None,
            "127.0.0.1:5000",
        ),  # a port, no tag
        ("127.0.0.1:5000/mnistkit/mnist:v1", "127.0.0.1:5000", "mnistkit/mnist", "v1", None, "127.0.0.1:5000"),
        (f"127.0.0.1:5000/mnistkit/mnist@{D}", "127.0.0.1:5000", "mnistkit/mnist", None, D, "127.0.0.1:5000"),
        (f"registry.example.com/a/b:t@{D}", "registry.example.com", "a/b", "t", D, "registry.example.com"),
        ("localhost/x", "localhost", "x", None, None, "localhost"),
        ("localhost:5000/x:latest", "localhost:5000", "x", "latest", None, "localhost:5000"),
        ("Registry.Example.com/x", "Registry.Example.com", "x", None, None, "Registry.Example.com"),  # upper-case host
        ("mnistkit/mnist:v1", None, "mnistkit/mnist", "v1", None, "docker.io"),  # Docker Hub
        ("ubuntu", None, "ubuntu", None, None, "docker.io"),
        (f"name@{D}", None, "name", None, D, "docker.io"),
        ("a.b/c__d/e-f.g:1.0_rc-2", "a.b", "c__d/e-f.g", "1.0_rc-2", None, "a.b"),
    ],
)
def test_parses_the_hard_cases(text, registry, path, tag, digest, host):
    ref = ImageRef.parse(text)
    assert (ref.registry, ref.path, ref.tag, ref.digest, ref.host) == (registry, path, tag, digest, host)
    assert str(ref) == text and ImageRef.parse(str(ref)) == ref


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "not an image reference"),
        ("Bad Name", "not an image reference"),
        ("mnistkit/Model", "lower case"),
        ("reg.io/x:tag with space", "not an image reference"),
        ("reg.io/x:", "is not a valid tag"),
        ("reg.io/x@sha256:123", "64 hex digits"),
        ("reg.io//x", "not a valid repository name component"),
        ("reg.io/x:" + "t" * 129, "is not a valid tag"),
        ("-x/y", "not a valid repository name component"),
    ],
)
def test_refuses_what_docker_refuses(text, message):
    with pytest.raises(ConfigError, match=message):
        ImageRef.parse(text)


@pytest.mark.parametrize(
    "text, key, serves",
    [
        ("127.0.0.1:5000/m", "127.0.0.1:5000", True),
        ("127.0.0.1:5000/m", "127.0.0.1", False),  # the port is part of the registry
        ("127.0.0.1:5000/m", "https://index.docker.io/v1/", False),
        ("mnistkit/m", "https://index.docker.io/v1/", True),
        ("mnistkit/m", "docker.io", True),
        ("mnistkit/m", "127.0.0.1:5000", False),
        ("Registry.Example.com/x", "registry.example.com", True),  # host names are case-insensitive
        ("registry.example.com/x", "http://registry.example.com/v2/", True),
    ],
)
def test_credentials_belong_to_one_registry(text, key, serves):
    assert ImageRef.parse(text).serves(key) is serves


def test_repository_and_retagging():
    ref = ImageRef.parse("127.0.0.1:5000/mnistkit/mnist")
    assert ref.repository == "127.0.0.1:5000/mnistkit/mnist" and ref.tag_or_latest == "latest"
    assert str(ref.with_digest(D)) == f"127.0.0.1:5000/mnistkit/mnist@{D}"
    assert str(ref.with_tag("abc")) == "127.0.0.1:5000/mnistkit/mnist:abc"


@pytest.mark.parametrize("text", ["localhost", "localhost:5000", "127.0.0.1:5000", "registry.example.com", "reg:443"])
def test_registries_are_what_docker_reads_as_registries(text):
    from mnistkit.imageref import parse_registry

    assert parse_registry(text) == text
    assert ImageRef.parse(f"{text}/mnistkit/mnist:1").registry == text  # docker reads it the same way


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "registry",
            "no dot and no port, so docker would push to Docker Hub instead; give host:port (e.g. registry:5000)",
        ),
        ("http://reg:5000", "without a scheme, as host[:port] (e.g. reg:5000)"),
        ("reg:port", "is not a registry host[:port]"),
        ("", "is not a registry host[:port]"),
        ("reg:99999", "is not a registry host[:port]"),  # found by a new-user trial: ports past 65535 and 0
        ("reg:0", "is not a registry host[:port]"),
    ],
)
def test_a_registry_docker_would_read_as_a_hub_account_is_refused(text, message):
    """An image tagged ``registry/mnistkit/x`` goes to Docker Hub's account "registry", and with
    it the credentials found for the host "registry": refused before anything is tagged."""
    from mnistkit.imageref import parse_registry

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_registry(text)


@pytest.mark.parametrize("port", ["0", "99999"])
def test_an_image_at_a_port_no_registry_can_have_is_refused(port):
    with pytest.raises(ConfigError, match="a port is 1..65535"):
        ImageRef.parse(f"reg:{port}/mnistkit/mnist:1")
