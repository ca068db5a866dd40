"""The error edge: every expected failure is one ``Error:`` line with a hint, exit code 1 and
no traceback, in every command — docker engine errors, registry errors, failing
subprocesses and a full disk, each caused for real (a real tmpfs that is full, real
registries, real dockerds, real servers that are not what the command expects)."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mnistkit.cli.build import main as build_main
from mnistkit.cli.pipeline import main as pipeline_main
from mnistkit.cli.query import main as query_main
from mnistkit.cli.train import main as train_main
from support import REPO, USER, free_port

DIGIT = str(REPO / "mnistkit" / "assets" / "digits" / "87.png")
TINY = ["--epochs", "1", "--train-samples", "64", "--test-samples", "64"]


class Disks:
    """Real tmpfs mounts of 200 KiB, filled to leave ``free`` KiB; unmounted afterwards."""

    def __init__(self, root: Path) -> None:
        self.root, self.mounts = root, []

    def __call__(self, free_kib: int = 0) -> Path:
        path = self.root / f"disk{len(self.mounts)}"
        path.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(path)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here, so no full disk to test: {proc.stderr.decode().strip()}")
        self.mounts.append(path)
        with contextlib.suppress(OSError), open(path / ".filler", "wb") as f:
            f.write(b"\0" * ((200 - free_kib) * 1024))
        return path

    def close(self) -> None:
        for path in self.mounts:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def disk(tmp_path):
    disks = Disks(tmp_path)
    yield disks
    disks.close()


@contextlib.contextmanager
def _http_server(directory):
    """A real HTTP server that is neither a docker engine, a registry nor Seldon."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass  # its request log would go to the stderr the test reads

    handler = lambda *a, **k: Quiet(*a, directory=str(directory), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _tcp_server(reply: bytes | None):
    """A TCP port that answers ``reply`` (not HTTP) to anything, or never answers (None)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held = []

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            held.append(conn)
            if reply is not None:
                conn.recv(65536)
                conn.sendall(reply)
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()
        for c in held:
            c.close()


def _stale_socket(tmp_path):
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nothing listens: an engine that died
    return f"unix://{path}"


class Ctx:
    """What a case may use; docker fixtures are only started for the cases that ask."""

    def __init__(self, request, tmp_path, disk, monkeypatch, stack):
        self.request, self.tmp, self.disk, self.mp, self.stack = request, tmp_path, disk, monkeypatch, stack

    def __getattr__(self, fixture):
        return self.request.getfixturevalue(fixture)

    def home(self):
        self.mp.setenv("MNISTKIT_HOME", str(self.tmp / "home"))
        return self.tmp / "home"

    def run_dir(self):
        return str(self.trained_run.run_dir)

    def image_args(self, *extra):
        return [self.run_dir(), "--docker-host", self.docker_engine.host, "--work-dir", str(self.tmp / "w"), *extra]


def _docker_config(ctx, text):
    (ctx.tmp / "cfg").mkdir()
    (ctx.tmp / "cfg" / "config.json").write_text(text)
    ctx.mp.setenv("DOCKER_CONFIG", str(ctx.tmp / "cfg"))


def _case_no_credentials(ctx):
    _docker_config(ctx, json.dumps({"auths": {}}))
    return ctx.image_args("--image", f"{ctx.registry.address}/mnistkit/mnist:nocreds", "--push")


def _case_not_a_registry(ctx):
    port = ctx.stack.enter_context(_http_server(ctx.tmp))
    return ctx.image_args("--image", f"127.0.0.1:{port}/mnistkit/mnist:nope", "--push")


def _case_bad_docker_config(ctx):
    _docker_config(ctx, "{not json")
    return ctx.image_args("--image", "127.0.0.1:5000/mnistkit/mnist:x", "--push")


def _case_bad_auth_entry(ctx):
    _docker_config(ctx, json.dumps({"auths": {"127.0.0.1:5000": {"auth": "%%%not-base64"}}}))
    return ctx.image_args("--image", "127.0.0.1:5000/mnistkit/mnist:x", "--push")


def _case_env_user_without_password(ctx):
    ctx.mp.setenv("MNISTKIT_REGISTRY_USERNAME", USER)
    return ctx.image_args("--image", "127.0.0.1:5000/mnistkit/mnist:x", "--push")


def _case_wheelhouse_pip_fails(ctx):
    ctx.home()
    for key, value in {"PIP_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple", "PIP_FIND_LINKS": ""}.items():
        ctx.mp.setenv(key, value)
    ctx.mp.setenv("PIP_RETRIES", "0")
    ctx.mp.setenv("PIP_TIMEOUT", "2")
    ctx.builder_image  # noqa: B018 -- the base image is there, so pip is the first thing to run
    return ["builder", "--kind", "tool", "--rebuild", "--docker-host", ctx.docker_engine.host]


def _case_debootstrap_fails(ctx):
    from mnistkit.local.dockerd import LocalDocker

    engine = LocalDocker(ctx.tmp / "fresh-engine").start()  # no base image: debootstrap must run
    ctx.stack.callback(engine.stop)
    ctx.mp.setenv("MNISTKIT_HOME", str(ctx.disk(free_kib=64)))  # debootstrap's rootfs goes here
    return ["builder", "--docker-host", engine.host]


def _case_htpasswd_fails(ctx):
    home = ctx.home()
    (home / "registry").mkdir(parents=True)
    (home / "registry" / "password").write_text("x" * 300 + "\n")  # htpasswd takes at most 255
    return [
        "--docker-host",
        ctx.docker_engine.host,
        "--work-dir",
        str(ctx.tmp / "demo"),
        "--registry-port",
        str(free_port()),
    ]


def _case_pipeline_full_disk(ctx):
    ctx.home()
    ctx.docker_engine  # noqa: B018
    work = ctx.disk(free_kib=0)
    demo = str(REPO / "examples" / "polyaxon" / "demo.yml")
    return [
        "-f",
        demo,
        "--docker-host",
        ctx.docker_engine.host,
        "--work-dir",
        str(work),
        "--registry-port",
        str(free_port()),
    ]


def _case_legacy_full_disk(ctx):
    import torch

    from mnistkit.network import Network

    torch.save(Network().state_dict(), ctx.tmp / "model.dat")
    return ["--import-legacy", str(ctx.tmp / "model.dat"), "--output-dir", str(ctx.disk(free_kib=8))]


def _grid(ctx):
    import yaml

    doc = {
        "version": 1,
        "kind": "group",
        "hptuning": {"concurrency": 1, "grid_search": None, "matrix": {"lr": {"values": [0.1, 0.05]}}},
        "run": {"cmd": "python run.py --lr={{ lr }}"},
    }
    (ctx.tmp / "grid.yml").write_text(yaml.safe_dump(doc))
    return str(ctx.tmp / "grid.yml")


DOCKER = pytest.mark.docker
CASES = {
    # case: (command, arguments from ctx, what the line says, marks)
    # -- the docker engine: not there, not answering, not an engine --------------------------
    "build: engine socket missing": (
        build_main,
        lambda c: [c.run_dir(), "--docker-host", "unix:///nonexistent/docker.sock"],
        "cannot reach the docker engine at unix:///nonexistent/docker.sock; is it running",
        (),
    ),
    "build: engine died (stale socket)": (
        build_main,
        lambda c: [c.run_dir(), "--docker-host", _stale_socket(c.tmp)],
        "cannot reach the docker engine",
        (),
    ),
    "build: DOCKER_HOST refuses connections": (
        build_main,
        lambda c: c.mp.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}") or [c.run_dir()],
        "is it running, and is DOCKER_HOST right?",
        (),
    ),
    "build: DOCKER_HOST is not an engine": (
        build_main,
        lambda c: [c.run_dir(), "--docker-host", f"tcp://127.0.0.1:{c.stack.enter_context(_http_server(c.tmp))}"],
        "cannot reach the docker engine",
        (),
    ),
    "build: DOCKER_HOST malformed": (
        build_main,
        lambda c: [c.run_dir(), "--docker-host", "nonsense://x"],
        "cannot reach the docker engine at nonsense://x",
        (),
    ),
    "builder: engine unreachable": (
        build_main,
        lambda c: ["builder", "--docker-host", f"tcp://127.0.0.1:{free_port()}"],
        "cannot reach the docker engine",
        (),
    ),
    "pipeline: engine unreachable": (
        pipeline_main,
        lambda c: ["--docker-host", "unix:///nonexistent/docker.sock", "--work-dir", str(c.tmp / "demo")],
        "step 'services' failed: cannot reach the docker engine",
        (),
    ),
    # -- registries ----------------------------------------------------------------------------
    "build: no credentials for the registry": (
        build_main,
        _case_no_credentials,
        "wants credentials and none were found for it",
        (DOCKER,),
    ),
    "build: not a registry": (build_main, _case_not_a_registry, "push to 127.0.0.1:", (DOCKER,)),
    "build: docker config not JSON": (
        build_main,
        _case_bad_docker_config,
        "is not valid JSON; fix or remove it",
        (DOCKER,),
    ),
    "build: docker config auth not base64": (build_main, _case_bad_auth_entry, "fix or remove it", (DOCKER,)),
    "build: env user without password": (build_main, _case_env_user_without_password, "set both", (DOCKER,)),
    # -- subprocesses ----------------------------------------------------------------------------
    "builder: pip fails (index unreachable)": (
        build_main,
        _case_wheelhouse_pip_fails,
        "preparing the wheelhouse for tool failed",
        (DOCKER,),
    ),
    "builder: debootstrap fails": (build_main, _case_debootstrap_fails, "debootstrap failed", (DOCKER,)),
    "pipeline: htpasswd fails": (
        pipeline_main,
        _case_htpasswd_fails,
        "step 'services' failed: htpasswd failed",
        (DOCKER,),
    ),
    "build: --use-s2i without s2i": (
        build_main,
        lambda c: c.image_args("--use-s2i", "--image", "mnistkit/mnist:s2i"),
        "the s2i binary is not on PATH",
        (DOCKER,),
    ),
    # -- a full disk -------------------------------------------------------------------------
    "train: run folder on a full disk": (
        train_main,
        lambda c: [*TINY, "--output-dir", str(c.disk(free_kib=0))],
        "the disk is full: free some space or choose another folder",
        (),
    ),
    "train: disk fills while saving the model": (
        train_main,
        lambda c: [*TINY, "--output-dir", str(c.disk(free_kib=40))],
        "the disk is full",
        (),
    ),
    "train -f: group folder on a full disk": (
        train_main,
        lambda c: ["-f", _grid(c), *TINY[2:], "--max-epochs", "1", "--output-dir", str(c.disk(free_kib=0))],
        "the disk is full",
        (),
    ),
    "train -f: disk fills while trials run": (
        train_main,
        lambda c: ["-f", _grid(c), *TINY[2:], "--max-epochs", "1", "--output-dir", str(c.disk(free_kib=24))],
        "the disk is full",
        (),
    ),
    "train: import-legacy onto a full disk": (train_main, _case_legacy_full_disk, "the disk is full", ()),
    "build: source folder on a full disk": (
        build_main,
        lambda c: [c.run_dir(), "--source-only", str(c.disk(free_kib=0) / "src")],
        "the disk is full",
        (),
    ),
    "build: work folder on a full disk": (
        build_main,
        lambda c: [c.run_dir(), "--docker-host", c.docker_engine.host, "--work-dir", str(c.disk(0)), "--image", "m:1"],
        "the disk is full",
        (DOCKER,),
    ),
    "build manifests: out folder on a full disk": (
        build_main,
        lambda c: ["manifests", c.run_dir(), "--image", "r.example/m@sha256:" + "a" * 64, "--out", str(c.disk(0))],
        "the disk is full",
        (),
    ),
    "pipeline: work folder on a full disk": (
        pipeline_main,
        _case_pipeline_full_disk,
        "step 'search' failed: cannot write",
        (DOCKER,),
    ),
    # -- the query client's endpoints ----------------------------------------------------------
    "query: connection refused": (
        query_main,
        lambda c: ["--endpoint", f"127.0.0.1:{free_port()}", "--retries", "0", DIGIT],
        "is the endpoint right and up?",
        (),
    ),
    "query: unknown host": (
        query_main,
        lambda c: ["--endpoint", "no-such-host.invalid:80", "--retries", "0", DIGIT],
        "cannot reach http://no-such-host.invalid:80",
        (),
    ),
    "query: not a Seldon server (501)": (
        query_main,
        lambda c: ["--endpoint", f"127.0.0.1:{c.stack.enter_context(_http_server(c.tmp))}", DIGIT],
        "answered 501",
        (),
    ),
    "query: not HTTP at all": (
        query_main,
        lambda c: [
            "--endpoint",
            f"127.0.0.1:{c.stack.enter_context(_tcp_server(b'SSH-2.0-x'))}",
            "--retries",
            "0",
            DIGIT,
        ],
        "cannot reach",
        (),
    ),
    "query: never answers": (
        query_main,
        lambda c: [
            "--endpoint",
            f"127.0.0.1:{c.stack.enter_context(_tcp_server(None))}",
            "--timeout",
            "1",
            "--retries",
            "0",
            DIGIT,
        ],
        "cannot reach",
        (),
    ),
}


@pytest.mark.parametrize("case", [pytest.param(k, marks=v[3]) for k, v in CASES.items()])
def test_every_expected_failure_is_one_line(case, request, tmp_path, disk, monkeypatch):
    main, make_args, message, _ = CASES[case]
    with contextlib.ExitStack() as stack:
        args = make_args(Ctx(request, tmp_path, disk, monkeypatch, stack))
        r = CliRunner(mix_stderr=False).invoke(main, [*args, "-q"])
    assert isinstance(r.exception, SystemExit), r.exc_info  # not an exception that escaped the edge
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    print(f"{case}: {lines[0]}")  # the line a user sees (pytest -s shows them all)
    assert message in lines[0], lines[0]
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.docker
def test_an_engine_that_dies_mid_pipeline_is_one_line(tmp_path):
    """A real dockerd, stopped while the search runs: the build step says so in one line."""
    from mnistkit.local.dockerd import LocalDocker

    engine = LocalDocker(tmp_path / "engine").start()
    env = {**os.environ, "MNISTKIT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "mnistkit.cli.pipeline", "-q", "--docker-host", engine.host]
    cmd += ["-f", str(tmp_path / "g.yml"), "--work-dir", str(tmp_path / "demo"), "--train-samples", "300"]
    cmd += ["--max-epochs", "1", "--registry-port", str(free_port())]
    (tmp_path / "g.yml").write_text(
        "version: 1\nkind: group\nhptuning:\n  concurrency: 1\n  grid_search:\n  matrix:\n"
        "    lr: {values: [0.1, 0.05]}\nrun:\n  cmd: python run.py --lr={{ lr }}\n"
    )
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        trials = tmp_path / "demo" / "runs"
        deadline = time.monotonic() + 120
        while not (trials.exists() and list(trials.rglob("trial-000.json"))) and time.monotonic() < deadline:
            time.sleep(0.1)
        engine.stop()  # the engine goes away while the search trains
        out, err = proc.communicate(timeout=300)
    finally:
        engine.stop()
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, err
    assert lines[0].startswith("Error: step 'build' failed: ") and "docker engine" in lines[0], lines[0]
    assert "Traceback" not in out + err


def test_a_mount_of_a_real_tmpfs_is_full(disk):
    """The full-disk cases are real: writing to such a folder fails with ENOSPC."""
    path = disk(free_kib=0)
    with pytest.raises(OSError, match="No space left on device"), open(path / "x", "wb") as f:
        f.write(b"\0" * 8192)
        f.flush()
        os.fsync(f.fileno())


@pytest.mark.parametrize(
    "raised, one_line",
    [
        (OSError(28, "No space left on device", "/data/x"), "Error: /data/x: the disk is full"),
        (OSError(122, "Disk quota exceeded"), "Error: a write: the disk quota is used up"),
        (OSError(5, "Input/output error"), None),  # not an expected failure: it keeps its traceback
        (ValueError("a bug"), None),
    ],
    ids=["ENOSPC", "EDQUOT", "EIO", "a bug"],
)
def test_the_edge_turns_only_expected_failures_into_a_line(raised, one_line):
    import click

    from mnistkit.cli._common import errors_to_exit

    @click.command()
    @errors_to_exit
    def cmd():
        raise raised

    r = CliRunner(mix_stderr=False).invoke(cmd, [])
    if one_line is None:
        assert r.exception is raised
    else:
        assert r.exit_code == 1 and r.stderr.splitlines() == [r.stderr.splitlines()[0]]
        assert r.stderr.startswith(one_line)


def test_a_disk_that_fills_at_the_second_save_keeps_the_first_model(disk):
    """A real tmpfs with room for the first epoch's model but not for the second beside it: the
    command fails in one line, the run folder keeps epoch 1's complete model (it loads, its
    manifest says epoch 1), and the warning names the epoch that was saved."""
    from mnistkit.artifact import load_model

    out = disk(free_kib=140)
    args = ["--epochs", "2", "--train-samples", "1000", "--test-samples", "500", "--lr", "0.05", "--momentum", "0.9"]
    result = CliRunner(mix_stderr=False).invoke(train_main, [*args, "--output-dir", str(out), "--run-name", "r"])
    assert result.exit_code == 1 and "the disk is full" in result.stderr and "Traceback" not in result.stderr
    manifest = json.loads((out / "r" / "model" / "manifest.json").read_text())
    assert manifest["metrics"]["epoch"] == 1  # epoch 2 improved (0.56 -> 0.68 here) but could not be saved
    load_model(out / "r" / "model")
    assert "stopped during epoch 2: the best epoch so far (1," in result.stderr, result.stderr
