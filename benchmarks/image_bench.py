"""Lean image (issue #14): the ONNX Runtime image against the torch image, side by side in one run.

Both images are built here from the same trained model (``mnistkit-build --runtime onnx`` and
``--runtime torch``) and run on loopback with their own settings (2 gunicorn workers). Rounds
alternate between the images; figures are medians:

* image size (``docker image inspect``);
* cold start: ``docker run`` until the first correct answer to a real digit;
* throughput with the 2018 request (one 784-int image) from wrk at 4 and 16 connections, p50/p99;
* resident memory of all the container's processes under load (summed RSS and PSS, and the
  container's cgroup working set; the peak while wrk runs with 16 connections);
* with ``--from-nothing``: the builder images from nothing (debootstrap base under its own
  name, empty wheelhouse cache, Dockerfile), each kind timed.

    python benchmarks/image_bench.py [--rounds 3] [--seconds 8] [--from-nothing] [--source RUN]

Needs a docker engine (DOCKER_HOST, the machine's, or an embedded dockerd under MNISTKIT_HOME).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import requests
from serve_bench import wrk

from mnistkit.build.builder_image import BASE_IMAGE, KINDS, build_kind, ensure_image, make_base_image
from mnistkit.build.model_image import BuildConfig, build_model
from mnistkit.build.verify import serve_image
from mnistkit.data import load_mnist
from mnistkit.local.dockerd import connect_docker, mnistkit_home

RUNTIMES = ("torch", "onnx")


def builders(client, from_nothing: bool, work: Path) -> tuple[dict[str, str], dict[str, float]]:
    """The builder of each runtime, and how long each took when built from nothing."""
    seconds: dict[str, float] = {}
    base = BASE_IMAGE
    if from_nothing:
        base = "mnistkit/base:bench"
        try:
            client.images.remove(base, force=True)
        except Exception:  # not there yet
            pass
        started = time.monotonic()
        make_base_image(client, base, workdir=work)
        seconds["base (debootstrap)"] = time.monotonic() - started
    tags = {}
    for runtime in RUNTIMES:
        kind = KINDS[f"seldon-{runtime}"]
        started = time.monotonic()
        if from_nothing:
            tags[runtime] = build_kind(client, kind, cache_dir=work / runtime, base=base)
        else:
            tags[runtime] = ensure_image(client, kind, cache_dir=mnistkit_home(), base=base)
        seconds[f"seldon-{runtime} (wheelhouse + Dockerfile)"] = time.monotonic() - started
    return tags, seconds


def train(folder: Path) -> str:
    from mnistkit.config import TrainConfig
    from mnistkit.train import fit

    run = fit(
        TrainConfig(epochs=1, lr=0.1, momentum=0.5, train_samples=10000, output_dir=str(folder), run_name="bench")
    )
    return str(run.run_dir)


def tree_memory(container) -> tuple[float, float]:
    """Summed RSS and PSS (MB) of every process of a running container."""
    container.reload()
    top = psutil.Process(container.attrs["State"]["Pid"])
    rss = pss = 0
    for p in [top, *top.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            rss, pss = rss + info.rss, pss + info.pss
        except psutil.Error:
            pass
    return rss / 2**20, pss / 2**20


def working_set(container) -> float:
    """The container's cgroup working set (MB): usage less inactive file pages, shared pages
    counted once; what a Kubernetes memory limit counts."""
    stats = container.stats(stream=False)["memory_stats"]
    return (stats.get("usage", 0) - stats.get("stats", {}).get("inactive_file", 0)) / 2**20


def cold_start(client, image: str, digit: np.ndarray, label: int) -> tuple[float, object, str]:
    """Seconds from ``docker run`` to the first correct answer; the container keeps running."""
    started = time.monotonic()
    container, url = serve_image(client, image, timeout=120)
    body = {"data": {"tensor": {"shape": [784], "values": digit.ravel().tolist()}}}
    while True:
        try:
            r = requests.post(f"{url}/api/v1.0/predictions", json=body, timeout=5)
            if r.status_code == 200 and int(np.argmax(r.json()["data"]["tensor"]["values"])) == label:
                return time.monotonic() - started, container, url
        except requests.RequestException:
            pass
        if time.monotonic() - started > 120:
            raise RuntimeError(f"{image} gave no correct answer within 120 s")
        time.sleep(0.01)


def under_load(url: str, body: str, seconds: int, container, folder: Path) -> tuple[dict, tuple[float, float, float]]:
    """wrk at 16 connections while sampling the container's memory; (wrk result, peak RSS,
    PSS and cgroup working set)."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(wrk(url, body, seconds, 16, folder)))
    thread.start()
    peak = (0.0, 0.0, 0.0)
    while thread.is_alive():
        rss, pss = tree_memory(container)
        peak = (max(peak[0], rss), max(peak[1], pss), max(peak[2], working_set(container)))
        time.sleep(0.25)
    thread.join()
    return result, peak


def one_round(client, image: str, args, mnist, folder: Path) -> dict[str, float]:
    digit, label = mnist.test_images[0].numpy(), int(mnist.test_labels[0])
    body = json.dumps({"data": {"names": [], "tensor": {"shape": [784], "values": digit.astype(int).ravel().tolist()}}})
    start, container, url = cold_start(client, image, digit, label)
    try:
        predict = f"{url}/api/v1.0/predictions"
        wrk(predict, body, 2, 16, folder)  # warm-up
        c4 = wrk(predict, body, args.seconds, 4, folder)
        c16, (rss, pss, cgroup) = under_load(predict, body, args.seconds, container, folder)
    finally:
        container.remove(force=True)
    return {
        "cold_start_s": start,
        "c4_rps": c4["rps"],
        "c4_p50_ms": c4["p50_ms"],
        "c4_p99_ms": c4["p99_ms"],
        "c16_rps": c16["rps"],
        "c16_p50_ms": c16["p50_ms"],
        "c16_p99_ms": c16["p99_ms"],
        "rss_mb": rss,
        "pss_mb": pss,
        "cgroup_mb": cgroup,
    }


def report(sizes: dict[str, float], medians: dict[str, dict[str, float]], build_seconds: dict[str, float]) -> None:
    t, o = medians["torch"], medians["onnx"]
    rows = [("image size (MB)", sizes["torch"], sizes["onnx"])]
    rows += [(k, t[k], o[k]) for k in t]
    print(f"{'figure':<24} {'torch':>10} {'onnx':>10} {'onnx/torch':>11}")
    for name, a, b in rows:
        print(f"{name:<24} {a:>10.2f} {b:>10.2f} {b / a if a else float('nan'):>10.2f}x")
    for name, s in build_seconds.items():
        print(f"builder {name}: {s:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--from-nothing", action="store_true", help="also time the builder images from nothing")
    ap.add_argument("--source", help="a run folder to package (default: train a small model here)")
    args = ap.parse_args()
    mnist = load_mnist()
    client, embedded = connect_docker(home=mnistkit_home())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            tags, build_seconds = builders(client, args.from_nothing, folder)
            source = args.source or train(folder / "runs")
            images, sizes = {}, {}
            for runtime in RUNTIMES:
                config = BuildConfig(
                    source=source,
                    image=f"mnistkit/mnist:bench-{runtime}",
                    builder=tags[runtime],
                    runtime=runtime,
                    work_dir=str(folder),
                )
                built = build_model(config, client)
                images[runtime], sizes[runtime] = built.image, (built.size or 0) / 1e6
            rounds: dict[str, list[dict[str, float]]] = {r: [] for r in RUNTIMES}
            for i in range(args.rounds):  # alternate: machine noise hits both images
                for runtime in RUNTIMES if i % 2 == 0 else reversed(RUNTIMES):
                    rounds[runtime].append(one_round(client, images[runtime], args, mnist, folder))
                    print(runtime, {k: round(v, 2) for k, v in rounds[runtime][-1].items()}, flush=True)
        medians = {r: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for r, rs in rounds.items()}
        report(sizes, medians, build_seconds)
        out = Path("benchmarks/out")
        out.mkdir(parents=True, exist_ok=True)
        (out / "image_bench.json").write_text(
            json.dumps({"sizes_mb": sizes, "medians": medians, "rounds": rounds, "builders_s": build_seconds}, indent=2)
        )
    finally:
        if embedded:
            embedded.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
