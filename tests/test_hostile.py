"""Hostile input against the launcher (``python -m mnistkit.serve``: Seldon's real microservice
behind mnistkit's guard) on loopback: every class gets a 4xx JSON error saying what is wrong,
never a 5xx or a traceback, and memory stays bounded. The built image gets the same table in
tests/test_faults.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from mnistkit.local.microservice import start_microservice
from mnistkit.serve import MAX_DEPTH, HolderSafeLock, json_depth
from mnistkit.settings import Settings
from support.hostile import CASES, GOOD, Request, send

LARGE = ["body over the limit", "body over the limit, chunked", "47 MB body", "the largest batch, long floats"]


@pytest.fixture(scope="module")
def launcher(trained_run, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("launcher")
    service = start_microservice(
        command=[sys.executable, "-m", "mnistkit.serve"],
        env={"MNISTKIT_MODEL": str(trained_run.artifact), "MNISTKIT_METRICS_INTERVAL": "0"},
        cwd=cwd,
        workers=2,
    )
    yield service
    service.stop()


def check_refusal(resp, req: Request, case: str) -> None:
    assert resp.status == req.status, (case, resp.status, resp.body[:300])
    status = resp.json.get("status", {})
    assert status.get("info") and status.get("reason") and status.get("code") == -1, (case, resp.body[:300])
    assert resp.headers.get("content-type", "").startswith("application/json")
    assert b"Traceback" not in resp.body


@pytest.mark.server
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_request_gets_a_4xx_json_error_saying_what_is_wrong(launcher, case):
    req = CASES[case]
    check_refusal(send("127.0.0.1", launcher.http_port, req), req, case)
    assert send("127.0.0.1", launcher.http_port, GOOD["health ping"]).status == 200


@pytest.mark.server
@pytest.mark.parametrize("case", list(GOOD))
def test_valid_requests_pass_the_guard(launcher, case):
    resp = send("127.0.0.1", launcher.http_port, GOOD[case])
    assert resp.status == 200, (case, resp.body[:300])


@pytest.mark.server
def test_no_traceback_in_the_server_log(launcher):
    for case in CASES:
        send("127.0.0.1", launcher.http_port, CASES[case])
    assert "Traceback" not in launcher.log()


def _tree_rss(pid: int) -> int:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


@pytest.mark.server
def test_memory_stays_bounded_and_health_holds_while_large_bodies_are_sent(launcher):
    """Peak RSS of all serving processes while large bodies (over the limit, chunked, 47 MB,
    the largest accepted batch) are sent again and again, with health checks in between."""
    baseline = _tree_rss(launcher.proc.pid)
    peak, stop = [baseline], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak.append(_tree_rss(launcher.proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for _ in range(3):
            for case in LARGE:
                req = {**CASES, **GOOD}[case]
                assert send("127.0.0.1", launcher.http_port, req).status == req.status, case
                assert send("127.0.0.1", launcher.http_port, GOOD["health ping"]).status == 200
    finally:
        stop.set()
        sampler.join()
    growth = (max(peak) - baseline) / 2**20
    print(
        f"serving processes: RSS {baseline / 2**20:.0f} MB at rest, peak {max(peak) / 2**20:.0f} MB (+{growth:.0f} MB)"
    )
    assert growth < 300  # a 47 MB body parsed whole would cost far more (Python ints, lists)


@pytest.mark.parametrize(
    "text, depth",
    [
        (b"{}", 1),
        (b'{"data": {"ndarray": [[0, 1]]}}', 4),
        (b'{"s": "[[[[[[[[[[", "a": [1]}', 2),  # brackets in strings do not count
        (b'{"s": "\\"[[[[", "a": [[1]]}', 3),  # nor after an escaped quote
        (b"[" * 1000 + b"]" * 1000, 1000),
        (b"[" * 100_000, 100_000),  # unbalanced: still measured, not parsed
    ],
    ids=["empty object", "a request", "brackets in a string", "escaped quote", "1000 deep", "unclosed"],
)
def test_json_depth(text, depth):
    assert json_depth(text) == depth


def test_the_default_body_limit_fits_the_largest_batch():
    import json

    s = Settings()
    widest = json.dumps({"data": {"ndarray": [[254.99999999999997] * 784] * s.max_batch}}).encode()
    assert len(widest) <= s.max_body
    assert json_depth(widest) <= MAX_DEPTH


def test_health_checks_do_not_zero_the_prediction_counters(trained_run, mnist):
    from mnistkit.serving import MnistModel

    model = MnistModel(str(trained_run.artifact), metrics_interval=0)
    probs = model.predict(mnist.test_images[:7].numpy(), [])
    model.health_status()
    model.health_status()
    counts = {m["tags"]["digit"]: m["value"] for m in model.metrics() if m["key"] == "mnistkit_predictions_total"}
    want = np.bincount(probs.argmax(axis=1), minlength=10)
    assert counts == {str(d): int(v) for d, v in enumerate(want) if v}  # 7 predictions, none lost, none added


def test_the_metrics_lock_is_released_when_its_holder_dies():
    """A forked child takes the lock and dies holding it; the parent gets it at once, and the
    lock still excludes: a second child waits while the parent holds it."""
    lock = HolderSafeLock()
    pid = os.fork()
    if pid == 0:
        lock.__enter__()
        os._exit(0)  # no __exit__: as a kill -9 would leave it
    os.waitpid(pid, 0)
    took = time.monotonic()
    with lock:
        assert time.monotonic() - took < 1
        child = os.fork()
        if child == 0:
            with lock:
                os._exit(0)
        time.sleep(0.5)
        assert os.waitpid(child, os.WNOHANG) == (0, 0)  # still waiting for the lock
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_metrics_lock_file_goes_to_the_first_folder_that_takes_it(tmp_path):
    lock = HolderSafeLock(folders=(str(tmp_path / "missing"), str(tmp_path)))
    assert Path(lock.path).parent == tmp_path
    with lock:
        pass
    with pytest.raises(OSError):
        HolderSafeLock(folders=(str(tmp_path / "missing"),))


def test_the_metrics_lock_file_goes_when_its_maker_exits_and_only_then(tmp_path):
    """A worker forked from the maker that exits normally (atexit runs there too) leaves the file
    for the workers that start after it; the maker's own exit removes it."""
    script = f"""
import os, sys
from mnistkit.serve import HolderSafeLock
lock = HolderSafeLock(folders=({str(tmp_path)!r},))
print(lock.path, flush=True)
pid = os.fork()
if pid == 0:
    with lock:
        pass
    sys.exit(0)
os.waitpid(pid, 0)
assert os.path.exists(lock.path), "a worker's exit removed the maker's lock file"
with lock:
    pass
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).parent == tmp_path and list(tmp_path.iterdir()) == []


# --- slow bodies ---------------------------------------------------------------------------------


def _trickle(sock, data: bytes, every: float, stop: threading.Event) -> None:
    """Send ``data`` a byte at a time, one every ``every`` seconds (a slow or hostile client)."""
    for byte in data:
        if stop.wait(every):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


def test_a_body_trickling_in_is_cut_off_at_its_deadline_inside_gunicorns_reader():
    """gunicorn's reader (real, over a socket pair) asks recv() for the rest of a body until it has
    it all, so a byte every 50 ms never trips a socket timeout: the deadline thread shuts the
    socket's read side instead, and the read ends in a TimeoutError at the deadline."""
    import socket

    from gunicorn.http.body import Body, LengthReader
    from gunicorn.http.unreader import SocketUnreader

    from mnistkit.serve import _read_body

    server, client = socket.socketpair()
    stop = threading.Event()
    body = b'{"data": {"ndarray": [[' + b"0, " * 300 + b"0]]}}"
    sender = threading.Thread(target=_trickle, args=(client, body, 0.05, stop), daemon=True)
    with server, client:
        server.settimeout(7.0)  # the worker's own setting, restored afterwards
        sender.start()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            _read_body(
                {"gunicorn.socket": server}, Body(LengthReader(SocketUnreader(server), len(body))), len(body), 1.0
            )
        took = time.monotonic() - started
        stop.set()
        assert 1.0 <= took < 3.0, took  # at the deadline (checked every 0.25 s), not after the 45 s the body takes
        assert server.gettimeout() == 7.0


def test_a_body_that_arrives_in_time_is_read_whole():
    import socket

    from gunicorn.http.body import Body, LengthReader
    from gunicorn.http.unreader import SocketUnreader

    from mnistkit.serve import _read_body

    server, client = socket.socketpair()
    body = b"x" * 40
    sender = threading.Thread(target=_trickle, args=(client, body, 0.005, threading.Event()), daemon=True)
    with server, client:
        sender.start()
        got = _read_body(
            {"gunicorn.socket": server}, Body(LengthReader(SocketUnreader(server), len(body))), len(body), 5.0
        )
    assert got == body


@pytest.mark.parametrize(
    "worker_timeout, expected",
    [(None, 30.0), (0, 30.0), (5000, 30.0), (61, 30.0), (60, 29.5), (5, 2.0), (2, 0.5), (1, 0.1)],
)
def test_the_deadlines_fit_inside_gunicorns_worker_timeout(worker_timeout, expected):
    """Headers and body each get half the worker timeout less half a second (each deadline is
    noticed up to 0.25 s late), never more than MNISTKIT_BODY_TIMEOUT, never under 0.1 s;
    Seldon's default worker timeout (5000 s, its default rest-timeout read as seconds) cuts nothing."""
    from mnistkit.serve import GuardLimits, deadline_within

    assert deadline_within(30.0, worker_timeout) == expected
    limits = GuardLimits(max_body=10).within(worker_timeout)
    assert limits.body_seconds == expected
    assert (limits.worker_timeout is None) == (expected == 30.0)


def _one_worker(trained_run, tmp_path):
    """The launcher (as the image runs it) with one sync worker and MNISTKIT_BODY_TIMEOUT=1."""
    return start_microservice(
        command=[sys.executable, "-m", "mnistkit.serve"],
        env={"MNISTKIT_MODEL": str(trained_run.artifact), "MNISTKIT_BODY_TIMEOUT": "1"},
        cwd=tmp_path,
        workers=1,
    )


@pytest.mark.server
def test_idle_and_slow_header_connections_do_not_hold_the_worker(trained_run, tmp_path):
    """One worker, MNISTKIT_BODY_TIMEOUT=1: a connection that sends nothing and one that sends
    a header a byte every 0.1 s; a prediction behind them is answered once they are cut off.
    Before, gunicorn read headers with no time limit and the prediction waited indefinitely."""
    import socket

    service = _one_worker(trained_run, tmp_path)
    stop = threading.Event()
    try:
        idle = socket.create_connection(("127.0.0.1", service.http_port), timeout=30)
        slow = socket.create_connection(("127.0.0.1", service.http_port), timeout=30)
        head = b"POST /api/v1.0/predictions HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 1000
        threading.Thread(target=_trickle, args=(slow, head, 0.1, stop), daemon=True).start()
        started = time.monotonic()
        ok = send("127.0.0.1", service.http_port, GOOD["the 2018 request"], timeout=20)
        took = time.monotonic() - started
        assert ok.status == 200 and took < 8, (ok.status, took)
        for s in (idle, slow):  # each was closed by the server (a reset if bytes came after)
            s.settimeout(10)
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
            s.close()
    finally:
        stop.set()
        service.stop()


def _slow_post(port: int, body: bytes, stop: threading.Event) -> tuple[bytes, float]:
    """POST ``body`` a byte every 0.1 s; the answer and the seconds it took from the headers."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        head = f"POST /api/v1.0/predictions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        s.sendall(head.encode())
        started = time.monotonic()
        threading.Thread(target=_trickle, args=(s, body, 0.1, stop), daemon=True).start()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            part = s.recv(65536)
            if not part:
                break
            answer += part
        took = time.monotonic() - started
    stop.set()
    return answer, took


@pytest.mark.server
def test_a_slow_body_gets_408_and_frees_the_worker(trained_run, tmp_path, mnist):
    """The launcher with one sync worker and MNISTKIT_BODY_TIMEOUT=1: a client sending a byte
    every 0.1 s gets a 408 after about a second, and the same worker then answers a prediction."""
    import json

    service = _one_worker(trained_run, tmp_path)
    stop = threading.Event()
    try:
        body = json.dumps({"data": {"ndarray": mnist.test_images[:1].numpy().reshape(1, -1).tolist()}}).encode()
        answer, took = _slow_post(service.http_port, body, stop)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"did not arrive within 1 s" in answer and took < 5, (took, answer[-300:])
        ok = send("127.0.0.1", service.http_port, GOOD["the 2018 request"], timeout=10)
        assert ok.status == 200, ok.body[:300]
    finally:
        stop.set()
        service.stop()


@pytest.mark.server
def test_the_launcher_listens_on_mnistkit_host_only(trained_run, tmp_path):
    """On the host network (the smoke test, the demo's serve step) the model's REST and metrics
    ports listened on every interface of the machine; they listen on MNISTKIT_HOST (127.0.0.1
    where mnistkit starts a server for itself), and 0.0.0.0 stays the default for clusters."""
    service = _one_worker(trained_run, tmp_path)
    try:
        group = psutil.Process(service.proc.pid)
        pids = {group.pid, *(c.pid for c in group.children(recursive=True))}
        listening = {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids
        }
        ports = {port for _, port in listening}
        assert {service.http_port, service.metrics_port} <= ports, listening
        assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
    finally:
        service.stop()


#: the launcher, reading Seldon's pod annotations from a file of the test's instead of the
#: downward-API path seldon-core hard-codes (``/etc/podinfo/annotations``); all else as in the image
_ANNOTATED = (
    "import sys, seldon_core.microservice as m; m.ANNOTATIONS_FILE = sys.argv.pop(1); "
    "from mnistkit.serve import main; main()"
)


@pytest.mark.server
def test_a_rest_timeout_shorter_than_the_body_deadline_still_gets_a_408_not_a_killed_worker(
    trained_run, tmp_path, mnist
):
    """``seldon.io/rest-timeout: 2000`` makes gunicorn kill a worker silent for 2 s. With the
    default 30 s body deadline a slow client's worker was killed mid-request (a reset, then a
    replacement worker); the deadlines are now cut to fit: a 408 in about half a second, the
    same worker answers the next prediction, and the start-up log says why."""
    import json

    annotations = tmp_path / "annotations"
    annotations.write_text('seldon.io/rest-timeout="2000"\n')
    service = start_microservice(
        command=[sys.executable, "-c", _ANNOTATED, str(annotations)],
        env={"MNISTKIT_MODEL": str(trained_run.artifact)},
        cwd=tmp_path,
        workers=1,
    )
    stop = threading.Event()
    try:
        arbiter = re.search(r"\[(\d+)\] \[INFO\] Using worker: mnistkit.serve.DrainingSyncWorker", service.log())
        assert arbiter, service.log()[-2000:]
        workers = psutil.Process(int(arbiter.group(1))).children()
        body = json.dumps({"data": {"ndarray": mnist.test_images[:1].numpy().reshape(1, -1).tolist()}}).encode()
        answer, took = _slow_post(service.http_port, body, stop)
        assert answer.startswith(b"HTTP/1.1 408"), (took, answer[:300], service.log()[-2000:])
        assert b"within 0.5 s (under half the worker timeout of 2 s" in answer and took < 1.5, (took, answer[-300:])
        ok = send("127.0.0.1", service.http_port, GOOD["the 2018 request"], timeout=10)
        assert ok.status == 200, ok.body[:300]
        assert psutil.Process(int(arbiter.group(1))).children() == workers  # the same one worker
        log = service.log()
        assert "WORKER TIMEOUT" not in log, log[-2000:]
        assert "deadlines cut from 30 s (MNISTKIT_BODY_TIMEOUT) to 0.5 s" in log
    finally:
        stop.set()
        service.stop()
