"""A search space -> trials -> the best run, on this machine.

Each trial is its own ``mnistkit-train`` process with its own run folder under the
group folder; ``concurrency`` trials run at once and the machine's cores are split
between them. Layout of a group folder::

    <group>/
      group.json      the search as read (format, algorithm, matrix, caps, seed)
      trials/         one run folder per trial (trial-000, ...)
      logs/           each trial's stderr
      trials.json     every trial: params, status, metrics, duration, error
      trials.csv      the same as a table
      best.json       the chosen trial with its provenance — what mnistkit-build takes
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ConfigError, SearchError
from .polyaxonfile import SearchSpec, render, without_output_flags

__all__ = ["SearchConfig", "Trial", "GroupResult", "plan_trials", "run_group", "read_best", "spec_from_group", "check_flags"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchConfig:
    """How to run a search here (the spec says what to search)."""

    output_dir: str = "runs"
    group_name: str | None = None
    concurrency: int | None = None  # None: the file's value
    seed: int = 1  # sampling seed when the file gives none
    metric: str = "test_accuracy"
    maximize: bool = True
    train_samples: int | None = None  # caps applied to every trial, for quick runs
    test_samples: int | None = None
    max_epochs: int | None = None
    data_dir: str | None = None
    extra_args: tuple[str, ...] = ()  # more training flags for every trial
    resume: bool = True  # reuse finished trials found in the group folder

    def validate(self) -> "SearchConfig":
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1 (got {self.concurrency})")
        for name in ("train_samples", "test_samples", "max_epochs"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {v})")
        return self


@dataclass
class Trial:
    index: int
    params: dict[str, Any]
    args: list[str]
    status: str = "pending"  # pending, running, done, failed, stopped
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    started: float | None = None
    ended: float | None = None
    run_dir: str | None = None
    artifact_sha256: str | None = None

    @property
    def name(self) -> str:
        return f"trial-{self.index:03d}"

    @property
    def duration(self) -> float | None:
        return None if self.started is None or self.ended is None else self.ended - self.started


@dataclass(frozen=True)
class GroupResult:
    group_dir: Path
    trials: list[Trial]
    best: Trial | None
    seconds: float


def plan_trials(spec: SearchSpec, seed: int = 1) -> list[dict[str, Any]]:
    """The parameter sets of every trial, in order (reproducible from the seed)."""
    if spec.algorithm == "single":
        return [dict(spec.params)]
    if spec.algorithm == "grid":
        keys = list(spec.matrix)
        combos = itertools.product(*(spec.matrix[k].points() for k in keys))
        plans = [{**spec.params, **dict(zip(keys, c))} for c in combos]
        return plans[: spec.n_runs] if spec.n_runs else plans
    rng = np.random.default_rng(spec.seed if spec.seed is not None else seed)
    assert spec.n_runs is not None
    return [{**spec.params, **{k: d.sample(rng) for k, d in spec.matrix.items()}} for _ in range(spec.n_runs)]


def check_flags(args: list[str]) -> dict[str, Any]:
    """Parse training flags exactly as ``mnistkit-train`` does; raise ``SearchError`` on
    an unknown flag or a bad value, before anything runs."""
    import click

    from .cli.train import main as train_command

    try:
        ctx = train_command.make_context("mnistkit-train", list(args), resilient_parsing=False)
    except click.exceptions.Exit:
        raise SearchError("the command asks for --help; remove it") from None
    except click.UsageError as e:
        raise SearchError(f"the training command is not valid for mnistkit-train: {e.format_message()}") from None
    return dict(ctx.params)


def _cap(args: list[str], config: SearchConfig, threads: int) -> list[str]:
    out = without_output_flags(args) + list(config.extra_args)
    if config.train_samples:
        out.append(f"--train-samples={config.train_samples}")
    if config.test_samples:
        out.append(f"--test-samples={config.test_samples}")
    if config.data_dir:
        out.append(f"--data-dir={config.data_dir}")
    out.append(f"--threads={threads}")
    if config.max_epochs:
        epochs = check_flags(out)["epochs"]
        out.append(f"--epochs={min(epochs, config.max_epochs)}")
    return out


def _error_line(log_path: Path) -> str:
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    for line in reversed(lines):
        if line.startswith("Error: "):
            return line[len("Error: "):]
    return lines[-1][:300] if lines else "no output"


def _write_tables(group_dir: Path, trials: list[Trial], metric: str) -> None:
    rows = []
    for t in trials:
        rows.append({
            "trial": t.name, "status": t.status, "params": t.params,
            "test_accuracy": t.metrics.get("test_accuracy"), "test_loss": t.metrics.get("test_loss"),
            metric: t.metrics.get(metric), "best_epoch": t.metrics.get("best_epoch"),
            "seconds": None if t.duration is None else round(t.duration, 2),
            "started": t.started, "ended": t.ended, "run_dir": t.run_dir,
            "artifact_sha256": t.artifact_sha256, "error": t.error, "args": t.args,
        })
    tmp = group_dir / ".trials.json.tmp"
    tmp.write_text(json.dumps(rows, indent=2, default=str) + "\n")
    os.replace(tmp, group_dir / "trials.json")
    keys = sorted({k for t in trials for k in t.params})
    with open(group_dir / ".trials.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "status", *keys, "test_accuracy", "test_loss", "best_epoch", "seconds", "error"])
        for r, t in zip(rows, trials):
            w.writerow([t.name, t.status, *(t.params.get(k) for k in keys), r["test_accuracy"], r["test_loss"],
                        r["best_epoch"], r["seconds"], t.error or ""])
    os.replace(group_dir / ".trials.csv.tmp", group_dir / "trials.csv")


def _finished_result(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None


def _absorb(trial: Trial, result: dict[str, Any]) -> None:
    trial.status = "done"
    trial.run_dir = result["run_dir"]
    trial.artifact_sha256 = result["artifact_sha256"]
    trial.metrics = {"test_accuracy": result["best_accuracy"], "test_loss": result["best_test_loss"],
                     "best_epoch": result["best_epoch"]}


def run_group(
    spec: SearchSpec,
    config: SearchConfig | None = None,
    *,
    on_update: Callable[[list[Trial]], None] | None = None,
) -> GroupResult:
    """Run every trial of ``spec``, pick the best by ``config.metric`` and record it.

    Failed trials are recorded and the group goes on; ``SearchError`` only when every
    trial failed. On Ctrl-C running trials are stopped, finished ones kept, the tables
    written, and ``KeyboardInterrupt`` re-raised.
    """
    config = (config or SearchConfig()).validate()
    started = time.monotonic()
    concurrency = config.concurrency or spec.concurrency
    threads = max(1, (os.cpu_count() or 1) // concurrency)
    plans = plan_trials(spec, config.seed)
    trials = []
    for i, params in enumerate(plans):
        args = _cap(render(spec.args, params), config, threads)
        check_flags(args)  # every trial's flags are valid before the first one runs
        trials.append(Trial(i, params, args))

    name = config.group_name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    group_dir = Path(config.output_dir) / name
    try:
        (group_dir / "trials").mkdir(parents=True, exist_ok=True)
        (group_dir / "logs").mkdir(exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create group folder {group_dir}: {e.strerror}; choose a writable --output-dir") from None
    (group_dir / "group.json").write_text(json.dumps({
        "name": name, "spec_name": spec.name, "format": spec.source_format, "algorithm": spec.algorithm,
        "args": list(spec.args), "n_runs_spec": spec.n_runs, "concurrency_spec": spec.concurrency, "seed_spec": spec.seed,
        "matrix": {k: asdict(d) for k, d in spec.matrix.items()}, "params": spec.params,
        "n_runs": len(trials), "concurrency": concurrency, "threads_per_trial": threads,
        "seed": spec.seed if spec.seed is not None else config.seed,
        "early_stopping": [asdict(e) for e in spec.early_stopping], "config": asdict(config),
    }, indent=2, default=str) + "\n")

    if config.resume:
        for t in trials:
            result = _finished_result(group_dir / "trials" / t.name)
            if result is not None:
                _absorb(t, result)
                log.info("%s: reusing the finished run", t.name)

    running: dict[int, subprocess.Popen[bytes]] = {}
    pending = [t for t in trials if t.status == "pending"]
    stop_reason: str | None = None

    def launch(t: Trial) -> None:
        run_dir = group_dir / "trials" / t.name
        if run_dir.exists():  # an unfinished earlier attempt
            import shutil

            shutil.rmtree(run_dir)
        cmd = [sys.executable, "-m", "mnistkit.cli.train", *t.args,
               f"--output-dir={group_dir / 'trials'}", f"--run-name={t.name}", "--json", "-q"]
        with open(group_dir / "logs" / f"{t.name}.log", "wb") as err:
            running[t.index] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        t.status, t.started = "running", time.time()
        log.debug("%s: %s", t.name, " ".join(t.args))

    def reap(t: Trial, proc: subprocess.Popen[bytes]) -> None:
        out = proc.stdout.read() if proc.stdout else b""
        t.ended = time.time()
        if proc.returncode == 0:
            try:
                _absorb(t, json.loads(out))
            except (ValueError, KeyError):
                t.status, t.error = "failed", "the trial printed no result"
        elif proc.returncode < 0:
            t.status, t.error = "failed", f"killed by signal {-proc.returncode}"
        else:
            t.status, t.error = "failed", _error_line(group_dir / "logs" / f"{t.name}.log")

    try:
        while pending or running:
            while pending and len(running) < concurrency and stop_reason is None:
                launch(pending.pop(0))
            if on_update:
                on_update(trials)
            time.sleep(0.1)
            for idx, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[idx]
                t = trials[idx]
                reap(t, proc)
                _log_trial(t, trials, spec.matrix or t.params)
                _write_tables(group_dir, trials, config.metric)
                hit = next((e for e in spec.early_stopping if t.status == "done" and e.reached(t.metrics)), None)
                if hit and stop_reason is None:
                    stop_reason = f"{t.name} reached {hit.metric} {'>=' if hit.optimization == 'maximize' else '<='} {hit.value}"
                    log.info("early stopping: %s", stop_reason)
            if stop_reason is not None:
                for t in pending:
                    t.status, t.error = "stopped", f"early stopping: {stop_reason}"
                pending = []
                for idx, proc in list(running.items()):
                    proc.send_signal(signal.SIGTERM)
                    proc.wait()
                    del running[idx]
                    trials[idx].status, trials[idx].ended = "stopped", time.time()
                    trials[idx].error = f"early stopping: {stop_reason}"
    except KeyboardInterrupt:
        for proc in running.values():
            proc.send_signal(signal.SIGTERM)
        for idx, proc in running.items():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            trials[idx].status, trials[idx].ended, trials[idx].error = "stopped", time.time(), "interrupted"
        for t in pending:
            t.status, t.error = "stopped", "interrupted"
        _write_tables(group_dir, trials, config.metric)
        _record_best(group_dir, trials, config, spec)
        raise
    _write_tables(group_dir, trials, config.metric)
    if on_update:
        on_update(trials)
    best = _record_best(group_dir, trials, config, spec)
    if best is None:
        errors = sorted({t.error or "?" for t in trials if t.status == "failed"})
        raise SearchError(f"every trial failed ({'; '.join(errors)[:300]}); see {group_dir / 'logs'}")
    return GroupResult(group_dir, trials, best, time.monotonic() - started)


def _log_trial(t: Trial, trials: list[Trial], keys: Any) -> None:
    done = sum(x.status == "done" for x in trials)
    failed = sum(x.status == "failed" for x in trials)
    running = sum(x.status == "running" for x in trials)
    best = max((x.metrics.get("test_accuracy", 0) for x in trials if x.status == "done"), default=None)
    params = ", ".join(f"{k}={_short(t.params[k])}" for k in keys if k in t.params)
    outcome = f"accuracy {100 * t.metrics['test_accuracy']:.2f}%" if t.status == "done" else f"FAILED: {t.error}"
    log.info(
        "%s %s (%s) in %.1fs  [%d done, %d running, %d failed of %d%s]",
        t.name, outcome, params, t.duration or 0, done, running, failed, len(trials),
        f", best {100 * best:.2f}%" if best is not None else "",
    )


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _record_best(group_dir: Path, trials: list[Trial], config: SearchConfig, spec: SearchSpec) -> Trial | None:
    done = [t for t in trials if t.status == "done" and isinstance(t.metrics.get(config.metric), (int, float))]
    if not done:
        return None
    pick = max if config.maximize else min
    best = pick(done, key=lambda t: t.metrics[config.metric])
    record = {
        "trial": best.name,
        "metric": config.metric,
        "optimization": "maximize" if config.maximize else "minimize",
        "value": best.metrics[config.metric],
        "params": best.params,
        "metrics": best.metrics,
        "run_dir": best.run_dir,
        "artifact": str(Path(best.run_dir or "") / "model"),
        "artifact_relative": f"trials/{best.name}/model",
        "artifact_sha256": best.artifact_sha256,
        "group": group_dir.name,
        "chosen": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = group_dir / ".best.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, group_dir / "best.json")
    return best


def spec_from_group(group_dir: str | os.PathLike[str]) -> SearchSpec:
    """The search a group folder ran, rebuilt from its ``group.json``."""
    from .polyaxonfile import Distribution, EarlyStopping

    try:
        g = json.loads((Path(group_dir) / "group.json").read_text())
        return SearchSpec(
            g["algorithm"],
            matrix={k: Distribution(d["kind"], tuple(d["args"]), tuple(tuple(v) if isinstance(v, list) else v for v in d["values"]))
                    for k, d in g["matrix"].items()},
            params=g["params"], args=tuple(g["args"]), n_runs=g["n_runs_spec"], concurrency=g["concurrency_spec"],
            seed=g["seed"], early_stopping=tuple(EarlyStopping(**e) for e in g["early_stopping"]),
            name=g["spec_name"], source_format=g["format"],
        )
    except (OSError, ValueError, KeyError, TypeError):
        raise SearchError(f"{group_dir}/group.json is missing or from another mnistkit version; re-run the search") from None


def read_best(group_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The recorded best trial of a group folder (``best.json``)."""
    path = Path(group_dir) / "best.json"
    try:
        record = json.loads(path.read_text())
    except OSError:
        raise SearchError(f"{group_dir} has no best.json; is it a finished mnistkit search group?") from None
    except ValueError:
        raise SearchError(f"{path} is damaged (not JSON)") from None
    # the group folder may have moved since: prefer the path relative to it
    rel = Path(group_dir) / record.get("artifact_relative", "")
    if rel.is_dir():
        record["artifact"] = str(rel)
    return record
