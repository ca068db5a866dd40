"""Serving speed: mnistkit's Seldon class on each runtime and worker setting vs a faithful copy
of the 2018 class, side by side in one process, interleaved rounds, medians.

All run in the real seldon-core-microservice with the same weights and get the same load
from wrk (Debian's HTTP load generator): the 2018 client's request, one 28x28 image of raw
int pixels as a flattened tensor. The 2018 class gets one fix so it runs at all on current
torchvision (``.float()`` before ``Normalize``, see ENVIRONMENT.md); everything else is as in
the article, printing included. mnistkit runs through the image's launcher
(``python -m mnistkit.serve``) with ONNX Runtime (the default image) at 1-4 gunicorn workers
and 2 workers x 2 threads, and with torch at 2 workers (the torch image). The memory column is
the summed RSS (and PSS) of all the server's processes right after its last round.

    python benchmarks/serve_bench.py [--seconds 8] [--connections 4,16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import torch

from mnistkit.artifact import save_artifact
from mnistkit.data import load_mnist
from mnistkit.local.microservice import start_microservice
from mnistkit.network import Network

CLASS_2018 = """
import torch
from mnistkit.network import Network
from torchvision import datasets, transforms


class Mnist2018(object):

    def __init__(self):
        self.model = Network()
        self.model.load_state_dict(torch.load("./model.dat", weights_only=True))

    def predict(self, X, feature_names):
        tensor = torch.from_numpy(X).view(-1, 28, 28).float()  # .float(): the one fix
        t = transforms.Normalize((0.1307,), (0.3081,))
        tensor_norm = t(tensor)
        tensor_norm = tensor_norm.unsqueeze(0)
        out = self.model(tensor_norm.float())
        predictions = torch.nn.functional.softmax(out)
        print(predictions)
        return predictions.detach().numpy()
"""

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{body}]]
"""


def wrk(url: str, body: str, seconds: int, connections: int, folder: Path) -> dict[str, float]:
    """wrk (one thread) posting ``body``: req/s, p50 and p99 in ms, ``errors`` (non-2xx answers)
    and ``failed`` (those plus socket errors). The one wrk runner of the benchmarks."""
    script = folder / "post.lua"
    script.write_text(WRK_SCRIPT.format(body=body))
    exe = shutil.which("wrk") or "/usr/bin/wrk"
    out = subprocess.run(
        [exe, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = int(non2xx.group(1)) if non2xx else 0
    failed = errors + (sum(map(int, sockets.groups())) if sockets else 0)
    return {"rps": float(rps.group(1)), "p50_ms": pct("50"), "p99_ms": pct("99"), "errors": errors, "failed": failed}


def memory_mb(pid: int) -> tuple[float, float]:
    """Summed RSS and PSS (MB) of a process and all its children."""
    import psutil

    rss = pss = 0
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            info = p.memory_full_info()
            rss, pss = rss + info.rss, pss + info.pss
        except psutil.Error:
            pass
    return rss / 2**20, pss / 2**20


def setups(folder: Path) -> list[tuple[str, str, int, int, dict[str, str], list[str] | None]]:
    """(label, interface, workers, threads, environment, command) of every server compared."""
    launcher = [sys.executable, "-m", "mnistkit.serve"]
    onnx = {"MNISTKIT_MODEL": str(folder / "onnx"), "MNISTKIT_RUNTIME": "onnx"}
    torch_env = {"MNISTKIT_MODEL": str(folder / "model"), "MNISTKIT_RUNTIME": "torch"}
    model = "mnistkit.serving.MnistModel"
    return [
        ("2018 class, 1 worker (default)", "Mnist2018", 1, 1, {}, None),
        ("torch, 2 workers (torch image)", model, 2, 1, torch_env, launcher),
        ("onnx, 1 worker", model, 1, 1, onnx, launcher),
        ("onnx, 2 workers", model, 2, 1, onnx, launcher),
        ("onnx, 3 workers", model, 3, 1, onnx, launcher),
        ("onnx, 4 workers", model, 4, 1, onnx, launcher),
        ("onnx, 2 workers x 2 threads", model, 2, 2, onnx, launcher),
    ]


def prepare(folder: Path) -> None:
    """Random weights (speed does not depend on them) as a torch artifact, a 2018 model.dat,
    and a copy with model.onnx attached as the image build does."""
    from mnistkit.export import attach_onnx

    torch.manual_seed(0)
    net = Network()
    save_artifact(folder / "model", net.state_dict())
    shutil.copytree(folder / "model", folder / "onnx")
    attach_onnx(folder / "onnx")
    torch.save(net.state_dict(), folder / "model.dat")
    (folder / "Mnist2018.py").write_text(CLASS_2018)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", default="4,16", help="comma-separated wrk connection counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", help="run only the setups whose label contains this text (and the 2018 class)")
    args = ap.parse_args()
    pixels = load_mnist().test_images[0].numpy().astype(int).ravel().tolist()
    body = json.dumps({"data": {"names": [], "tensor": {"shape": [784], "values": pixels}}})
    conns = [int(c) for c in args.connections.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder)
        chosen = [s for s in setups(folder) if not args.only or args.only in s[0] or s[1] == "Mnist2018"]
        runs: dict[tuple[str, int], list[dict[str, float]]] = {(s[0], c): [] for s in chosen for c in conns}
        memory: dict[str, tuple[float, float]] = {}
        with ExitStack() as stack:
            services = {}
            for label, interface, workers, threads, env, command in chosen:  # idle servers cost nothing
                ms = stack.enter_context(
                    start_microservice(
                        interface,
                        cwd=folder,
                        workers=workers,
                        threads=threads,
                        env={**env, "GRPC_WORKERS": "0"},
                        command=command,
                        log_path=folder / f"{len(services)}.log",
                    )
                )
                services[label] = (f"{ms.url}/api/v1.0/predictions", ms.proc.pid)
                wrk(services[label][0], body, 2, max(conns), folder)  # warm-up
            for _ in range(args.rounds):  # interleaved rounds: machine noise hits every setup
                for c in conns:
                    for label, (url, pid) in services.items():
                        runs[(label, c)].append(wrk(url, body, args.seconds, c, folder))
                        memory[label] = memory_mb(pid)
        report(runs, memory, conns, args)
    sys.exit(0)


def report(runs: dict, memory: dict, conns: list[int], args: argparse.Namespace) -> None:
    results = {}
    for (label, c), rs in runs.items():
        results[(label, c)] = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms")}
        errors = sum(r["errors"] for r in rs)
        r = results[(label, c)]
        each = ", ".join(f"{x['rps']:.0f}" for x in rs)
        rss, pss = memory[label]
        print(
            f"c={c:<3} {label:<34} {r['rps']:>7.0f} req/s  p50 {r['p50_ms']:>6.2f} ms  p99 {r['p99_ms']:>6.2f} ms"
            f"  non-2xx {errors}  RSS {rss:>5.0f} MB PSS {pss:>5.0f} MB  (median of {each})",
            flush=True,
        )
    labels = list(dict.fromkeys(label for label, _ in runs))
    for c in conns:
        base = results[(labels[0], c)]["rps"]
        torch_rps = results.get(("torch, 2 workers (torch image)", c), {}).get("rps")
        for label in labels[1:]:
            vs_torch = f", {results[(label, c)]['rps'] / torch_rps:.2f}x torch image" if torch_rps else ""
            print(f"c={c} {label}: {results[(label, c)]['rps'] / base:.2f}x the 2018 class{vs_torch}")
    print(
        f"(wrk -t1 -c{args.connections} -d{args.seconds}s x {args.rounds} rounds, one 784-pixel tensor per request, "
        f"torch {torch.__version__})"
    )


if __name__ == "__main__":
    main()
