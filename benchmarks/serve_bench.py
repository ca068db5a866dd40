"""Serving speed: mnistkit's Seldon class vs a faithful copy of the 2018 class, side by side.

Both run in the real seldon-core-microservice with the same weights and get the same load
from wrk (Debian's HTTP load generator): the 2018 client's request, one 28x28 image of raw
int pixels as a flattened tensor. The 2018 class gets one fix so it runs at all on current
torchvision (``.float()`` before ``Normalize``, see ENVIRONMENT.md); everything else is as in
the article, printing included. mnistkit runs with the settings its image uses
(2 gunicorn workers, 1 thread each, 1 torch thread per worker) and, for reference, with one.

    python benchmarks/serve_bench.py [--seconds 8] [--connections 4]
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
    script = folder / "post.lua"
    script.write_text(WRK_SCRIPT.format(body=body))
    exe = shutil.which("wrk") or "/usr/bin/wrk"
    out = subprocess.run(
        [exe, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {"rps": rps, "p50_ms": pct("50"), "p99_ms": pct("99"), "errors": int(non2xx.group(1)) if non2xx else 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    pixels = load_mnist().test_images[0].numpy().astype(int).ravel().tolist()
    body = json.dumps({"data": {"names": [], "tensor": {"shape": [784], "values": pixels}}})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        net = Network()
        save_artifact(folder / "model", net.state_dict())
        torch.save(net.state_dict(), folder / "model.dat")
        (folder / "Mnist2018.py").write_text(CLASS_2018)
        setups = [
            ("2018 class, 1 worker (default)", "Mnist2018", 1, {}),
            ("mnistkit, 1 worker", "mnistkit.serving.MnistModel", 1, {"MNISTKIT_MODEL": str(folder / "model")}),
            (
                "mnistkit, 2 workers (image setting)",
                "mnistkit.serving.MnistModel",
                2,
                {"MNISTKIT_MODEL": str(folder / "model")},
            ),
        ]
        runs: dict[str, list[dict[str, float]]] = {label: [] for label, *_ in setups}
        with ExitStack() as stack:
            services = {}
            for label, interface, workers, env in setups:  # idle servers cost nothing; all up at once
                ms = stack.enter_context(
                    start_microservice(
                        interface, cwd=folder, workers=workers, env=env, log_path=folder / f"{len(services)}.log"
                    )
                )
                services[label] = f"{ms.url}/api/v1.0/predictions"
                wrk(services[label], body, 2, args.connections, folder)  # warm-up
            for _ in range(args.rounds):  # interleaved rounds: machine noise hits every setup
                for label in services:
                    runs[label].append(wrk(services[label], body, args.seconds, args.connections, folder))
        results = {}
        for label in runs:
            results[label] = {k: statistics.median(r[k] for r in runs[label]) for k in ("rps", "p50_ms", "p99_ms")}
            errors = sum(r["errors"] for r in runs[label])
            r = results[label]
            each = ", ".join(f"{x['rps']:.0f}" for x in runs[label])
            print(
                f"{label:<38} {r['rps']:>8.0f} req/s   p50 {r['p50_ms']:>6.2f} ms   p99 {r['p99_ms']:>6.2f} ms"
                f"   non-2xx {errors}   (median of {each})",
                flush=True,
            )
    base = results[setups[0][0]]["rps"]
    for label, *_ in setups[1:]:
        print(f"ratio {label} / 2018: {results[label]['rps'] / base:.2f}x")
    print(
        f"(wrk -t1 -c{args.connections} -d{args.seconds}s x {args.rounds} rounds, one 784-pixel tensor per request, torch {torch.__version__})"
    )
    sys.exit(0)


if __name__ == "__main__":
    main()
