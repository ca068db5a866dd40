"""Pushing with credentials: each registry gets only its own credentials (two real registries
with different users and passwords), credentials from the environment and the docker config
work, and the canary passwords appear nowhere mnistkit writes or prints."""

from __future__ import annotations

import base64
import json
import logging
import re
import tarfile
import time

import pytest
from click.testing import CliRunner

from mnistkit.build.model_image import BuildConfig
from mnistkit.build.push import Credentials, find_credentials, push
from mnistkit.cli.build import main as build_main
from mnistkit.errors import PushError
from mnistkit.imageref import ImageRef
from mnistkit.local.registry import LocalRegistry
from mnistkit.settings import settings
from support import CANARY, HOME, USER, free_port

pytestmark = pytest.mark.docker

USER_B = "second-user"
CANARY_B = "canary-B-Pw-51c0d2e8"  # registry B's password; it must never leak, nor reach registry A
CANARIES = (CANARY, CANARY_B)


def _auth(user, password):
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def _docker_config(folder, auths):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"auths": auths}))
    return folder


# -- which credentials go where: the decisions, as a table ---------------------------------

A, B = "127.0.0.1:5000", "registry.example.com:5443"
CONFIG = {
    A: _auth("user-a", "pw-a"),
    f"http://{B}/v2/": _auth("user-b", "pw-b"),  # docker login writes keys with a scheme, too
    "https://index.docker.io/v1/": _auth("hub-user", "pw-hub"),
}
DECISIONS = {  # case -> (image, environment, docker config, explicit user, the user that must be chosen)
    "explicit wins": (f"{A}/m", {"REGISTRY_USERNAME": "env", "REGISTRY_PASSWORD": "x"}, CONFIG, "cli", "cli"),
    "env scoped to A, push to A": (f"{A}/m", {"REGISTRY": A, "REGISTRY_USERNAME": "env"}, CONFIG, None, "env"),
    "env scoped to A, push to B": (f"{B}/m", {"REGISTRY": A, "REGISTRY_USERNAME": "env"}, CONFIG, None, "user-b"),
    "env scoped to A, push to B, no entry": (f"{B}/m", {"REGISTRY": A, "REGISTRY_USERNAME": "env"}, {}, None, None),
    "env unscoped, entry for B wins": (f"{B}/m", {"REGISTRY_USERNAME": "env"}, CONFIG, None, "user-b"),
    "env unscoped, no entry": (f"{B}/m", {"REGISTRY_USERNAME": "env"}, {A: CONFIG[A]}, None, "env"),
    "port without tag is not docker hub": (f"{A}/mnistkit/mnist", {}, CONFIG, None, "user-a"),
    "upper-case host": ("LOCALHOST:5000/m", {}, {"localhost:5000": _auth("lh", "x")}, None, "lh"),
    "localhost without port": ("localhost/m", {}, {"localhost:5000": _auth("lh", "x")}, None, None),
    "docker hub": ("mnistkit/mnist", {}, CONFIG, None, "hub-user"),
    "docker hub, no entry": ("mnistkit/mnist", {}, {A: CONFIG[A]}, None, None),
    "other port of the same host": ("127.0.0.1:5001/m", {}, CONFIG, None, None),
    "digest reference": (f"{A}/m@sha256:{'a' * 64}", {}, CONFIG, None, "user-a"),
}


@pytest.mark.parametrize("case", list(DECISIONS))
def test_credentials_go_only_to_their_own_registry(case, tmp_path, monkeypatch):
    image, env, auths, explicit, chosen = DECISIONS[case]
    for key, value in env.items():
        monkeypatch.setenv(f"MNISTKIT_{key}", value)
    if "REGISTRY_USERNAME" in env:
        monkeypatch.setenv("MNISTKIT_REGISTRY_PASSWORD", "pw-env")
    monkeypatch.setenv("DOCKER_CONFIG", str(_docker_config(tmp_path / "cfg", auths)))
    creds = find_credentials(ImageRef.parse(image), explicit, "pw-cli" if explicit else None)
    assert (creds.username if creds else None) == chosen


@pytest.mark.parametrize(
    "config, message",
    [
        ("{not json", "is not valid JSON; fix or remove it"),
        ('{"auths": ["127.0.0.1:5000"]}', "auths must be a mapping of registry to credentials"),
        ('{"auths": {"127.0.0.1:5000": {"auth": 7}}}', "is not valid base64 user:password"),
        ('{"auths": {"127.0.0.1:5000": {"auth": "%%%"}}}', "is not valid base64 user:password"),
    ],
)
def test_a_broken_docker_config_is_one_clear_error(config, message, tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(config)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    with pytest.raises(PushError, match=re.escape(message)):
        find_credentials(ImageRef.parse(f"{A}/m"))


# -- two real registries, pushes through the CLI ------------------------------------------


@pytest.fixture(scope="module")
def registry_b(tmp_path_factory):
    reg = LocalRegistry(tmp_path_factory.mktemp("registry-b"), free_port(), USER_B, CANARY_B, log_level="info")
    reg.start()
    yield reg
    reg.stop()


def _cli(args, stdin=None):
    return CliRunner(mix_stderr=False).invoke(build_main, args, input=stdin)


@pytest.fixture(scope="module")
def pushes(trained_run, docker_engine, builder_image, registry, registry_b, tmp_path_factory):
    """Pushes to A and B with credentials from every source; what each printed and raised."""
    work = tmp_path_factory.mktemp("push-work")
    mp = pytest.MonkeyPatch()
    # A's credentials in the environment, scoped to A; B's in the docker config, beside decoys
    # for A and Docker Hub that must not be used
    mp.setenv("MNISTKIT_REGISTRY", registry.address)
    mp.setenv("MNISTKIT_REGISTRY_USERNAME", USER)
    mp.setenv("MNISTKIT_REGISTRY_PASSWORD", CANARY)
    auths = {registry_b.address: _auth(USER_B, CANARY_B), registry.address: _auth("decoy", "decoy-pw")}
    mp.setenv("DOCKER_CONFIG", str(_docker_config(work / "docker-config", auths)))
    base = [str(trained_run.run_dir), "--docker-host", docker_engine.host, "--work-dir", str(work), "--push", "-v"]
    try:
        out = {
            "env to A": _cli([*base, "--image", f"{registry.address}/mnistkit/mnist:env"]),
            "docker config to B": _cli([*base, "--image", f"{registry_b.address}/mnistkit/mnist:cfg"]),
            "stdin to A": _cli(
                [*base, "--image", f"{registry.address}/mnistkit/mnist:stdin", "--username", USER, "--password-stdin"],
                CANARY + "\n",
            ),
            "source folder": _cli([str(trained_run.run_dir), "--source-only", str(work / "s2i-source")]),
        }
    finally:
        mp.undo()
    return out, work


def test_credentials_from_the_environment_and_the_docker_config_push(pushes, registry, registry_b, docker_client):
    out, _ = pushes
    for case, r in out.items():
        assert r.exit_code == 0, f"{case}: {r.stderr}"
    assert f"pushed {registry.address}/mnistkit/mnist@sha256:" in out["env to A"].stdout
    assert f"pushed {registry_b.address}/mnistkit/mnist@sha256:" in out["docker config to B"].stdout
    assert f"user {USER} from MNISTKIT_REGISTRY_USERNAME/PASSWORD" in out["env to A"].stderr
    assert f"user {USER_B} from " in out["docker config to B"].stderr
    # the registries' own logs: each authenticated only its own user and never saw the other's
    log_a, log_b = (registry.root / "registry.log").read_text(), (registry_b.root / "registry.log").read_text()
    assert _users(log_a)[0] == {USER} and _users(log_a)[1] <= {USER}  # other tests send A wrong passwords
    assert _users(log_b) == ({USER_B}, set())
    # the check would see it: a pair sent to the other registry is refused there, and logged
    name = f"{registry_b.address}/mnistkit/mnist:cfg"
    with pytest.raises(PushError, match="refused the credentials"):
        push(docker_client, ImageRef.parse(name), Credentials(USER, CANARY))
    deadline = time.monotonic() + 20
    while USER not in _users((registry_b.root / "registry.log").read_text())[1] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _users((registry_b.root / "registry.log").read_text()) == ({USER_B}, {USER})


def _users(log):
    """(users the registry authenticated, users it refused), from its own log."""
    ok = set(re.findall(r'auth\.user\.name="?([^" ]+)', log))
    refused = set(re.findall(r'error authenticating user \\?"([^"\\]+)', log))
    return ok, refused


def _scan_layers(client, name, tmp_path):
    """Occurrences of the canaries in every file of every layer of image ``name``."""
    path = tmp_path / "image.tar"
    with open(path, "wb") as f:
        for chunk in client.images.get(name).save():
            f.write(chunk)
    found = []
    with tarfile.open(path) as outer:
        for member in outer:
            data = outer.extractfile(member).read() if member.isfile() else b""
            found += [member.name for c in CANARIES if c.encode() in data]
    path.unlink()
    return found


def _files(*roots, skip=("data", "overlay2", "image", "containers", "wheelhouse")):
    for root in roots:
        for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if p.is_file() and not p.is_symlink() and not set(p.relative_to(root).parts) & set(skip):
                yield p


def _in_files(*roots):
    return [str(p) for p in _files(*roots) for c in CANARIES if c.encode() in p.read_bytes()]


SINKS = [
    "cli output",
    "exceptions",
    "reprs",
    "dockerd log",
    "registry logs and files",
    "docker inspect and history",
    "image layers",
    "s2i source folder and work folder",
    "run folder",
]


@pytest.mark.parametrize("sink", SINKS)
def test_the_canary_passwords_appear_nowhere(
    sink, pushes, trained_run, registry, registry_b, docker_client, docker_engine, tmp_path, monkeypatch
):
    out, work = pushes
    images = [f"{registry.address}/mnistkit/mnist:env", f"{registry_b.address}/mnistkit/mnist:cfg"]
    if sink == "cli output":
        found = [case for case, r in out.items() for c in CANARIES if c in r.stdout + r.stderr]
    elif sink == "exceptions":
        texts = []
        for image, creds in zip(images, (Credentials(USER, CANARY_B), Credentials(USER_B, CANARY)), strict=True):
            try:  # each registry's own user with the other registry's password
                push(docker_client, ImageRef.parse(image), creds)
            except PushError as e:
                texts.append(f"{e} {e!r}")
        assert len(texts) == 2
        found = [t for t in texts for c in CANARIES if c in t]
    elif sink == "reprs":
        monkeypatch.setenv("MNISTKIT_REGISTRY_PASSWORD", CANARY)
        objects = [Credentials(USER, CANARY), registry, registry_b, settings()]
        objects.append(BuildConfig(source=".", username=USER, password=CANARY))
        found = [repr(o) for o in objects for c in CANARIES if c in repr(o)]
    elif sink == "dockerd log":
        found = _in_files(docker_engine.root / "dockerd.log")
    elif sink == "registry logs and files":
        found = _in_files(registry.root, registry_b.root)
    elif sink == "docker inspect and history":
        blobs = {
            n: json.dumps(docker_client.images.get(n).attrs) + json.dumps(docker_client.images.get(n).history())
            for n in images
        }
        found = [n for n, b in blobs.items() for c in CANARIES if c in b]
    elif sink == "image layers":
        found = _scan_layers(docker_client, images[0], tmp_path) + _scan_layers(docker_client, images[1], tmp_path)
    elif sink == "s2i source folder and work folder":
        assert (work / "s2i-source" / "model" / "manifest.json").exists()
        found = _in_files(work, HOME / "work") if (HOME / "work").exists() else _in_files(work)
    else:
        found = _in_files(trained_run.run_dir)
    assert found == []


def test_password_leaks_nowhere_at_debug_level(built, docker_client, registry, caplog):
    logger = logging.getLogger("mnistkit")
    logger.addHandler(caplog.handler)  # the CLI stops propagation; listen on mnistkit's logger itself
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        name = _tagged(docker_client, built, registry)
        push(docker_client, ImageRef.parse(name), Credentials(USER, CANARY))  # right password, debug logs on
        with pytest.raises(PushError) as wrong:
            push(docker_client, ImageRef.parse(name), Credentials(USER, CANARY + "x"))
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)
    assert "pushing" in caplog.text and "refused" in str(wrong.value)
    assert CANARY not in str(wrong.value) and CANARY not in caplog.text


def _tagged(client, built, registry):
    name = f"{registry.address}/mnistkit/mnist:ci"
    client.images.get(built.reference).tag(name)
    return name


def test_push_with_credentials_from_the_docker_config_file(built, docker_client, registry, tmp_path, monkeypatch):
    folder = _docker_config(tmp_path / "docker-config", {registry.address: _auth(USER, CANARY)})
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    creds = find_credentials(ImageRef.parse(f"{registry.address}/mnistkit/mnist"))
    assert creds is not None and creds.username == USER
    name = _tagged(docker_client, built, registry)
    assert push(docker_client, ImageRef.parse(name), creds).digest == built.digest
    assert find_credentials(ImageRef.parse("other.example.com/x")) is None


@pytest.mark.parametrize(
    ("message", "had_credentials", "says"),
    [
        # found by CI: a registry on port 40155 read as "401", so "connection refused" was called bad credentials
        (
            'Get "http://127.0.0.1:40155/v2/": dial tcp 127.0.0.1:40155: connect: connection refused',
            True,
            "cannot reach",
        ),
        ("unauthorized: authentication required", True, "refused the credentials"),
        ("received unexpected HTTP status: 401 Unauthorized", True, "refused the credentials"),
        ("received unexpected HTTP status: 401 Unauthorized", False, "wants credentials and none were found"),
        ("manifest blob unknown at 127.0.0.1:4010", True, "push to 127.0.0.1:4010 failed"),
    ],
)
def test_a_push_failure_is_explained_by_what_it_says_not_by_its_port(message, had_credentials, says):
    from mnistkit.build.push import _explain

    registry = "127.0.0.1:4010" if "4010" in message else "127.0.0.1:40155"
    assert says in _explain(message, registry, had_credentials)
