"""The V2 image (MLServer) against the v1 image (seldon-core-microservice), side by side, one run.

Both images are built here from the same artifact (fixed random weights) by mnistkit's own s2i
builders and run as containers on the host network of the embedded dockerd, as the smoke tests
run them. Each round, for each setup in turn (so machine noise hits all of them):

* cold start: container start -> the first 200 answer to the 2018 request (polled every 20 ms);
* wrk (one thread) with the 2018 request — one 28x28 image of raw int pixels: v1 ``data.tensor``
  ``[784]``, V2 an INT32 ``pixels`` tensor ``[1, 784]`` — at 4 and at 16 connections;
* memory under load (16 connections): the container's cgroup working set (usage - inactive
  file, what a memory limit counts, shared pages once) and the sum of its processes' RSS, peaks;
* image size (v1 and V2, each with ONNX Runtime, the default, and with torch);
* hostile payloads (tests/support/v2.py's table for V2, the reliability issue's classes for
  v1): how many got a 5xx.

    python benchmarks/v2_bench.py [--rounds 3] [--seconds 8] [--setups v1,v2,v2-1proc,v2-pool2]

Medians over the rounds; the machine is shared and noisy, so read ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from serve_bench import wrk

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the hostile payload table the V2 tests use


V1_HOSTILE = {
    "malformed json": b"{bad",
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "strings": b'{"data": {"ndarray": [["a"]]}}',
    "NaN": b'{"data": {"ndarray": [[NaN]]}}',
    "1e400": b'{"data": {"tensor": {"shape": [1], "values": [1e400]}}}',
    "out of range": json.dumps({"data": {"tensor": {"shape": [784], "values": [300] * 784}}}).encode(),
    "ragged": b'{"data": {"ndarray": [[1, 2], [3]]}}',
    "shape mismatch": b'{"data": {"tensor": {"shape": [784], "values": [1, 2]}}}',
    "huge shape": b'{"data": {"tensor": {"shape": [1000000000], "values": [1]}}}',
    "empty": b'{"data": {"ndarray": []}}',
    "not an image": b'{"binData": "aGVsbG8="}',
    "strData": b'{"strData": "hello"}',
    "jsonData": b'{"jsonData": {"a": 1}}',
    "over the limit": b"x" * (5 * 1024 * 1024),
}


def make_model(folder: Path) -> Path:
    import torch

    from mnistkit.artifact import save_artifact
    from mnistkit.network import Network

    torch.manual_seed(0)
    save_artifact(folder / "model", Network().state_dict())
    return folder / "model"


def build_images(client: Any, model: Path, work: Path) -> dict[str, str]:
    from mnistkit.build.model_image import BuildConfig, build_model

    out = {}
    for server in ("seldon", "mlserver"):
        for runtime in ("onnx", "torch"):
            cfg = BuildConfig(
                source=str(model),
                image=f"mnistkit-bench/{server}-{runtime}:latest",
                server=server,
                runtime=runtime,
                work_dir=str(work),
            )
            summary = build_model(cfg, client)
            out[f"{server}-{runtime}"] = summary.image
            print(f"built {summary.image} ({(summary.size or 0) / 1e6:.0f} MB)", flush=True)
    return out


def setups(images: dict[str, str], pixels: list[int]) -> dict[str, dict[str, Any]]:
    v1_body = json.dumps({"data": {"names": [], "tensor": {"shape": [784], "values": pixels}}})
    v2_body = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "INT32", "data": pixels}]})
    v2 = {"image": images["mlserver-onnx"], "body": v2_body, "path": "/v2/models/mnist/infer", "protocol": "v2"}
    v1 = {"image": images["seldon-onnx"], "body": v1_body, "path": "/api/v1.0/predictions", "protocol": "v1", "env": {}}
    return {
        "v1": v1,
        "v1-torch": {**v1, "image": images["seldon-torch"]},
        "v2": {**v2, "env": {}},
        "v2-torch": {**v2, "image": images["mlserver-torch"], "env": {}},
        "v2-1proc": {**v2, "env": {"MNISTKIT_PROCESSES": "1"}},
        # MLServer's own inference pool instead of whole processes: requests are pickled to 2 workers
        # (hostile payloads skipped: deep nesting is known to hang the pool's pickling)
        "v2-pool2": {**v2, "env": {"MNISTKIT_PROCESSES": "1", "MLSERVER_PARALLEL_WORKERS": "2"}, "hostile": False},
    }


def _free_port() -> int:
    from mnistkit.local._proc import free_port

    return free_port()


def start(client: Any, setup: dict[str, Any]) -> tuple[Any, str, float]:
    """Run the image on free ports; return (container, url, seconds to the first good answer)."""
    http = _free_port()
    if setup["protocol"] == "v1":
        env = {
            "PREDICTIVE_UNIT_HTTP_SERVICE_PORT": str(http),
            "PREDICTIVE_UNIT_GRPC_SERVICE_PORT": str(_free_port()),
            "PREDICTIVE_UNIT_METRICS_SERVICE_PORT": str(_free_port()),
        }
    else:
        env = {"MLSERVER_HTTP_PORT": str(http), "MLSERVER_GRPC_PORT": str(_free_port())}
        env["MLSERVER_METRICS_PORT"] = str(_free_port())
    url = f"http://127.0.0.1:{http}{setup['path']}"
    started = time.monotonic()
    container = client.containers.run(
        setup["image"], detach=True, network_mode="host", environment={**env, **setup["env"]}
    )
    while time.monotonic() - started < 120:
        if _post(url, setup["body"].encode(), timeout=2) == 200:
            return container, url, time.monotonic() - started
        time.sleep(0.02)
    container.remove(force=True)
    raise RuntimeError(f"{setup['image']} did not answer within 120 s")


def _post(url: str, body: bytes, timeout: float = 30) -> int | None:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        e.read()
        return int(e.code)
    except OSError:
        return None


class MemorySampler(threading.Thread):
    """Peak cgroup working set and peak sum of RSS of a container's processes, while it runs."""

    def __init__(self, container: Any) -> None:
        super().__init__(daemon=True)
        self.container, self.stop_event = container, threading.Event()
        self.cgroup_mb = self.rss_mb = 0.0

    def run(self) -> None:
        while not self.stop_event.is_set():
            stats = self.container.stats(stream=False)["memory_stats"]
            inactive = stats.get("stats", {}).get("inactive_file", 0)
            self.cgroup_mb = max(self.cgroup_mb, (stats.get("usage", 0) - inactive) / 2**20)
            self.rss_mb = max(self.rss_mb, sum(_rss_kb(int(p[1])) for p in self.container.top()["Processes"]) / 1024)
            self.stop_event.wait(0.5)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def hostile(url: str, protocol: str) -> tuple[int, int]:
    """(how many hostile payloads got a 5xx or no answer, how many were sent)."""
    if protocol == "v2":
        from support.v2 import HOSTILE

        bodies = {k: v[0] if isinstance(v[0], bytes) else json.dumps(v[0]).encode() for k, v in HOSTILE.items()}
    else:
        bodies = V1_HOSTILE
    bad = sum(1 for body in bodies.values() if (_post(url, body) or 599) >= 500)
    return bad, len(bodies)


def one_round(client: Any, name: str, setup: dict[str, Any], seconds: int, folder: Path) -> dict[str, float]:
    container, url, cold = start(client, setup)
    try:
        wrk(url, setup["body"], 2, 4, folder)  # warm-up
        c4 = wrk(url, setup["body"], seconds, 4, folder)
        sampler = MemorySampler(container)
        sampler.start()
        c16 = wrk(url, setup["body"], seconds, 16, folder)
        sampler.stop()
        bad, sent = hostile(url, setup["protocol"]) if setup.get("hostile", True) else (0, 0)
    finally:
        container.remove(force=True)
    return {
        "cold_s": cold,
        "rps4": c4["rps"],
        "p99_4": c4["p99_ms"],
        "rps16": c16["rps"],
        "p99_16": c16["p99_ms"],
        "failed": c4["failed"] + c16["failed"],
        "cgroup_mb": sampler.cgroup_mb,
        "rss_mb": sampler.rss_mb,
        "hostile_5xx": bad,
        "hostile_sent": sent,
    }


def report(runs: dict[str, list[dict[str, float]]]) -> None:
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
    print(
        f"\n{'setup':<10} {'c=4 req/s':>10} {'p99':>8} {'c=16 req/s':>11} {'p99':>8} {'cgroup MB':>10} "
        f"{'RSS MB':>8} {'cold s':>7} {'failed':>7} {'hostile 5xx':>12}"
    )
    for n, m in med.items():
        print(
            f"{n:<10} {m['rps4']:>10.0f} {m['p99_4']:>7.1f}ms {m['rps16']:>11.0f} {m['p99_16']:>7.1f}ms "
            f"{m['cgroup_mb']:>10.0f} {m['rss_mb']:>8.0f} {m['cold_s']:>7.2f} {m['failed']:>7.0f} "
            f"{m['hostile_5xx']:>5.0f} of {m['hostile_sent']:.0f}"
        )
    for n, rs in runs.items():
        print(
            f"  {n}: c=16 rounds "
            + ", ".join(f"{r['rps16']:.0f}" for r in rs)
            + "; c=4 "
            + ", ".join(f"{r['rps4']:.0f}" for r in rs)
        )
    for a, b in (("v2", "v1"), ("v2", "v1-torch"), ("v2-torch", "v1-torch")):
        if a in med and b in med:
            x, y = med[a], med[b]
            print(
                f"\n{a} / {b}: throughput c=16 {x['rps16'] / y['rps16']:.2f}x (goal >= 1.0), c=4 {x['rps4'] / y['rps4']:.2f}x; "
                f"memory (cgroup) {x['cgroup_mb'] / y['cgroup_mb']:.2f}x, (sum RSS) {x['rss_mb'] / y['rss_mb']:.2f}x "
                f"(goal <= 0.35); cold start {x['cold_s'] / y['cold_s']:.2f}x (goal <= 1.0)"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--setups", default="v1,v2,v1-torch,v2-torch,v2-1proc,v2-pool2")
    args = ap.parse_args()
    from mnistkit.data import load_mnist
    from mnistkit.local.dockerd import LocalDocker, mnistkit_home

    pixels = load_mnist().test_images[0].numpy().astype(int).ravel().tolist()
    engine = LocalDocker(mnistkit_home() / "docker").start()
    try:
        client = engine.client()
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            images = build_images(client, make_model(folder), folder / "work")
            for name, image in images.items():
                print(f"image {name}: {client.images.get(image).attrs['Size'] / 1e6:.0f} MB", flush=True)
            chosen = {n: s for n, s in setups(images, pixels).items() if n in args.setups.split(",")}
            runs: dict[str, list[dict[str, float]]] = {n: [] for n in chosen}
            for r in range(args.rounds):
                for name, setup in chosen.items():  # interleaved: noise hits every setup
                    runs[name].append(one_round(client, name, setup, args.seconds, folder))
                    print(
                        f"round {r + 1} {name}: {json.dumps({k: round(v, 2) for k, v in runs[name][-1].items()})}",
                        flush=True,
                    )
        report(runs)
        print(
            f"(wrk -t1 -d{args.seconds}s, {args.rounds} interleaved rounds, medians; one 784-pixel image per request)"
        )
    finally:
        engine.stop()


if __name__ == "__main__":
    main()
