"""Training speed and accuracy: the 2018 loop vs mnistkit's, side by side in one run.

The 2018 loop is pytorch/examples' MNIST training as the article ran it: a DataLoader over
torchvision's MNIST with per-sample ToTensor()+Normalize, batch 128, SGD lr 0.01 momentum
0.5, a test pass over the 10,000 test images after each epoch, the model saved with
torch.save after each test. mnistkit trains the same network on the same images.

Four parts, each against the 2018 baseline measured in the same run; every round alternates
the contenders so machine noise hits both, and medians are compared:

epoch   per training epoch (test pass included), in one process, epochs alternating:
        2018 loop vs ``mnistkit.train.fit`` with the same hyper-parameters.
e2e     whole processes, start to saved model: this file as the 2018 script
        (``--as-2018``) vs ``mnistkit-train --epochs E --batch-size 128 --lr 0.01
        --momentum 0.5``; ``python -c "import torch"`` is timed in the same rounds and its
        median taken off both. One seed per round, so it also gives both loops' accuracy
        over the seeds.
fast99  ``mnistkit-train --recipe fast99 --seed S`` as whole processes: wall time,
        accuracy on all 10,000 test images, best epoch; worst and median over the seeds.
        The 2018 loop never reaches 99 % (its fixed lr tops out near 98.7 %); with
        ``--reference-99`` the previous recipe (Adam + one-cycle, lr 0.003, 15 epochs,
        batch 128) runs alongside for comparison.

    python benchmarks/train_bench.py [--seeds 1,2,3,4,5] [--epochs 2] [--epoch-rounds 3]
                                     [--parts epoch,e2e,fast99] [--reference-99]
                                     [--compare-repo OTHER_CHECKOUT] [--quiet PSI] [--json OUT]

Run it from anywhere: it works in this checkout's root (where ``examples/data`` is). The
mnistkit processes run from this checkout (PYTHONPATH is set to it); with
``--compare-repo`` (repeatable) the e2e rounds also run that checkout's mnistkit-train
(before/after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LEGACY_FLAGS = ["--batch-size", "128", "--lr", "0.01", "--momentum", "0.5"]


# --- the 2018 loop -------------------------------------------------------------------------


def epochs_2018(
    root: str, seed: int = 1, samples: int = 60000, save: str | None = None
) -> Iterator[tuple[float, float]]:
    """Yield (seconds, test accuracy) per epoch of the 2018 loop, forever."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from mnistkit.network import Network

    torch.manual_seed(seed)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = datasets.MNIST(root, train=True, download=False, transform=tf)
    test = datasets.MNIST(root, train=False, download=False, transform=tf)
    train_loader = DataLoader(Subset(train, range(min(samples, len(train)))), batch_size=128, shuffle=True)
    test_loader = DataLoader(test, batch_size=1000)
    model = Network()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    while True:
        t0 = time.perf_counter()
        model.train()
        for data, target in train_loader:
            opt.zero_grad()
            F.nll_loss(model(data), target).backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for data, target in test_loader:
                correct += int((model(data).argmax(1) == target).sum())
        if save:
            torch.save(model.state_dict(), save)  # the 2018 test() saved model.dat every epoch
        yield time.perf_counter() - t0, correct / len(test)


def as_2018(argv: list[str]) -> None:
    """The 2018 script as one process (what ``--as-2018`` runs): train, test, save, print JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--as-2018", action="store_true")
    ap.add_argument("--root", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    loop = epochs_2018(a.root, a.seed, save=str(Path(a.out) / "model.dat"))
    epochs = [next(loop) for _ in range(a.epochs)]
    print(json.dumps({"epochs": epochs, "accuracy": epochs[-1][1]}))


# --- helpers -------------------------------------------------------------------------------


def _env(repo: Path = REPO) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }


def _timed(cmd: list[str], repo: Path = REPO) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=_env(repo), capture_output=True, text=True, cwd=repo)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return wall, p.stdout


def _mnistkit(args: list[str], out: str, repo: Path = REPO) -> tuple[float, dict[str, Any]]:
    wall, stdout = _timed(
        [sys.executable, "-m", "mnistkit.cli.train", *args, "--output-dir", out, "--json", "-q"], repo
    )
    return wall, json.loads(stdout)


def _torch_import() -> float:
    return _timed([sys.executable, "-c", "import torch"])[0]


def _cpu_pressure() -> float | None:
    """Linux PSI: the share of the last 10 s in which some runnable task waited for a CPU."""
    try:
        return float(Path("/proc/pressure/cpu").read_text().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def settle(threshold: float | None, limit: float = 600.0) -> str:
    """Wait (up to ``limit`` s) until CPU pressure is below ``threshold`` %; say how it went.
    On a machine shared with test suites and image builds, rounds taken while others run
    measure them, not us: this keeps each round to a quiet moment (and reports the wait)."""
    if threshold is None:
        return ""
    t0 = time.monotonic()
    while (p := _cpu_pressure()) is not None and p >= threshold and time.monotonic() - t0 < limit:
        time.sleep(5)
    return f" [cpu pressure {p}% after {time.monotonic() - t0:.0f}s wait]"


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def _fmt(xs: list[float], unit: str = "s") -> str:
    return ", ".join(f"{x:.2f}{unit}" for x in xs)


def _pct(xs: list[float]) -> str:
    return ", ".join(f"{100 * x:.2f}" for x in xs)


# --- the parts -----------------------------------------------------------------------------


def part_epoch(root: str, rounds: int, seed: int) -> dict[str, Any]:
    from mnistkit.config import TrainConfig
    from mnistkit.data import load_mnist
    from mnistkit.train import EpochMetrics, fit

    old = epochs_2018(root, seed)
    old_epochs: list[tuple[float, float]] = []

    def after_each_mnistkit_epoch(_: EpochMetrics) -> None:
        old_epochs.append(next(old))  # then one 2018 epoch

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            batch_size=128, lr=0.01, momentum=0.5, epochs=rounds, output_dir=out, run_name="bench", seed=seed
        )
        result = fit(config, load_mnist(), on_epoch=after_each_mnistkit_epoch)
    o, n = [t for t, _ in old_epochs], [m.seconds for m in result.epochs]
    print(f"\n[epoch] seconds per training epoch incl. the 10k test pass, {rounds} alternating epochs, seed {seed}")
    print(f"  2018      {_fmt(o)}  median {_med(o):.2f}s  accuracy after {rounds}: {100 * old_epochs[-1][1]:.2f}%")
    print(
        f"  mnistkit  {_fmt(n)}  median {_med(n):.2f}s  accuracy after {rounds}: {100 * (result.epochs[-1].test_accuracy or 0):.2f}%"
    )
    print(f"  ratio mnistkit / 2018: {_med(n) / _med(o):.3f}")
    return {"2018": o, "mnistkit": n, "ratio": _med(n) / _med(o)}


def part_e2e(
    root: str, seeds: list[int], epochs: int, compare: list[Path] | None = None, quiet: float | None = None
) -> dict[str, Any]:
    imp: list[float] = []
    old: list[tuple[float, float]] = []
    runs: dict[str, list[tuple[float, float, float]]] = {"mnistkit": []}
    repos = {"mnistkit": REPO}
    for i, other in enumerate(compare or []):
        runs[f"compared{i + 1}"], repos[f"compared{i + 1}"] = [], other
    for r, seed in enumerate(seeds):
        waited = settle(quiet)
        with tempfile.TemporaryDirectory() as out:

            def run_old(seed: int = seed) -> None:
                wall, stdout = _timed(
                    [
                        sys.executable,
                        __file__,
                        "--as-2018",
                        "--root",
                        root,
                        "--epochs",
                        str(epochs),
                        "--seed",
                        str(seed),
                        "--out",
                        out,
                    ]
                )
                old.append((wall, json.loads(stdout)["accuracy"]))

            def run_new(name: str, seed: int = seed) -> None:
                wall, res = _mnistkit(["--epochs", str(epochs), *LEGACY_FLAGS, "--seed", str(seed)], out, repos[name])
                runs[name].append((wall, res["epochs"][-1]["test_accuracy"], sum(e["seconds"] for e in res["epochs"])))

            steps = [lambda: imp.append(_torch_import()), run_old, *(lambda n=n: run_new(n) for n in runs)]
            for step in steps if r % 2 == 0 else steps[::-1]:
                step()
        print(
            f"  round {r + 1} (seed {seed}): import torch {imp[-1]:.2f}s  2018 {old[-1][0]:.2f}s ({100 * old[-1][1]:.2f}%)"
            + "".join(f"  {n} {v[-1][0]:.2f}s ({100 * v[-1][1]:.2f}%)" for n, v in runs.items())
            + waited,
            flush=True,
        )
    t = _med(imp)
    o = _med([w for w, _ in old])
    print(f"\n[e2e] whole process, {epochs} epochs, batch 128, SGD lr 0.01 momentum 0.5, seeds {seeds}")
    print(f"  import torch  {_fmt(imp)}  median {t:.2f}s (taken off both)")
    print(
        f"  2018          {_fmt([w for w, _ in old])}  median {o:.2f}s  accuracy {_pct([a for _, a in old])}"
        f"  mean {100 * statistics.mean(a for _, a in old):.2f}%"
    )
    ratios = {}
    for name, v in runs.items():
        n = _med([w for w, _, _ in v])
        ratios[name] = (n - t) / (o - t)
        label = name if name == "mnistkit" else f"{name} ({repos[name]})"
        print(
            f"  {label:13} {_fmt([w for w, _, _ in v])}  median {n:.2f}s  accuracy {_pct([a for _, a, _ in v])}"
            f"  mean {100 * statistics.mean(a for _, a, _ in v):.2f}%"
        )
        print(f"  {'':13} outside its epochs (wall - import torch - epochs): {_fmt([w - t - e for w, _, e in v])}")
        print(f"  {'':13} ratio (wall - import torch) / (2018 - import torch): {ratios[name]:.3f}  (target <= 0.20)")
    return {"import_torch": imp, "2018": old, **runs, "ratio": ratios}


def part_fast99(seeds: list[int], reference: bool, quiet: float | None = None) -> dict[str, Any]:
    runs: dict[str, list[tuple[int, float, float, int]]] = {"fast99": [], "reference": []}
    variants = {"fast99": ["--recipe", "fast99"]}
    if reference:
        variants["reference"] = [
            "--optimizer",
            "adam",
            "--lr",
            "0.003",
            "--scheduler",
            "onecycle",
            "--epochs",
            "15",
            "--batch-size",
            "128",
        ]
    for seed in seeds:
        for name, args in variants.items():
            waited = settle(quiet)
            with tempfile.TemporaryDirectory() as out:
                wall, res = _mnistkit([*args, "--seed", str(seed)], out)
            runs[name].append((seed, wall, res["best_accuracy"], res["best_epoch"]))
            print(
                f"  {name} seed {seed}: {wall:.2f}s  {100 * res['best_accuracy']:.2f}% (best epoch {res['best_epoch']}){waited}",
                flush=True,
            )
    print("\n[fast99] whole `mnistkit-train` processes, start to saved artifact, accuracy on all 10,000 test images")
    print(f"  {'':10} {'seed':>4} {'wall':>7} {'accuracy':>9} {'best epoch':>10}")
    for name, rs in runs.items():
        for seed, wall, acc, ep in rs:
            print(f"  {name:10} {seed:>4} {wall:>6.2f}s {100 * acc:>8.2f}% {ep:>10}")
        if rs:
            walls, accs = [w for _, w, _, _ in rs], [a for _, _, a, _ in rs]
            print(
                f"  {name:10} wall worst {max(walls):.2f}s median {_med(walls):.2f}s;  accuracy worst {100 * min(accs):.2f}%"
                f" median {100 * _med(accs):.2f}%;  all >= 99.0 %: {min(accs) >= 0.99}"
            )
    print("  2018 loop: does not reach 99 % (fixed lr 0.01; see [e2e]/[epoch] for its accuracy per epoch)")
    return runs


def main() -> None:
    if "--as-2018" in sys.argv:
        as_2018(sys.argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated seeds (e2e rounds and fast99 runs)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the e2e command")
    ap.add_argument("--epoch-rounds", type=int, default=3, help="alternating epochs in the per-epoch part")
    ap.add_argument("--parts", default="epoch,e2e,fast99")
    ap.add_argument(
        "--reference-99", action="store_true", help="also run the previous 99 %% recipe (15 epochs) per seed"
    )
    ap.add_argument(
        "--compare-repo",
        type=Path,
        action="append",
        help="another mnistkit checkout to run in the e2e rounds too (before/after); repeatable",
    )
    ap.add_argument(
        "--quiet",
        type=float,
        metavar="PSI",
        help="before each e2e round / fast99 run, wait until Linux CPU pressure (avg10) is below PSI %%",
    )
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    parts = set(args.parts.split(","))
    os.chdir(REPO)  # the default data folder is ./examples/data

    import torch

    from mnistkit.data import _prepare_raw, resolve_data_dir
    from mnistkit.train import bf16_supported

    root = str(_prepare_raw(resolve_data_dir()))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {bf16_supported()}, seeds {seeds}"
    )
    out: dict[str, Any] = {}
    if "epoch" in parts:
        out["epoch"] = part_epoch(root, args.epoch_rounds, seeds[0])
    if "e2e" in parts:
        out["e2e"] = part_e2e(root, seeds, args.epochs, args.compare_repo, args.quiet)
    if "fast99" in parts:
        out["fast99"] = part_fast99(seeds, args.reference_99, args.quiet)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
