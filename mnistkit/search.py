"""A search space -> trials -> the best run, on this machine.

Each trial is a ``TrainConfig``, written into the group folder and run as its own process
(``python -m mnistkit.train --config FILE``); ``concurrency`` trials run at once and the
machine's cores are split between them. A trial reports through its run folder's
``result.json``, or its error file when it fails. Layout of a group folder::

    <group>/
      group.json      the search as read (format, algorithm, matrix, caps, seed)
      trials/         trial-000.json (its TrainConfig), trial-000/ (its run folder), ...
      logs/           each trial's output, and trial-000.error.json when it failed
      trials.json     every trial: params, status, metrics, duration, error
      trials.csv      the same as a table
      best.json       the chosen trial with its provenance — what mnistkit-build takes
      .lock           held (flock) by the process running the group: one run of a group at a time

A finished trial is reused when the group is run again only if its effective configuration
is identical (where the data folder is, like where runs go, is the machine's and not compared);
anything else is trained again. A reused trial that meets the early-stopping condition stops
the group before anything is launched, as it did the first time.
"""

from __future__ import annotations

import csv
import ctypes
import fcntl
import io
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .config import MACHINE, OPTIONS, PLACEMENT, TrainConfig
from .data import check_mnist
from .errors import ConfigError, SearchError
from .files import os_reason, write_atomic
from .polyaxonfile import (
    BETTER_WHEN_HIGHER,
    RECORDED_METRICS,
    Distribution,
    EarlyStopping,
    SearchSpec,
    check_group_name,
    check_trial_count,
    matrix_flags,
    render,
    without_output_flags,
)

__all__ = [
    "SearchConfig",
    "Trial",
    "GroupResult",
    "TRIAL_OPTIONS",
    "plan_trials",
    "trial_configs",
    "check_overrides",
    "run_group",
    "read_best",
    "spec_from_group",
]

log = logging.getLogger(__name__)

#: The training options a polyaxonfile's command may set (not where runs go, no downloads).
TRIAL_OPTIONS = tuple(n for n in OPTIONS if n not in (*PLACEMENT, "download", "threads"))


@dataclass(frozen=True)
class SearchConfig:
    """How to run a search here (the spec says what to search)."""

    output_dir: str = "runs"
    group_name: str | None = None
    concurrency: int | None = None  # None: the file's value
    seed: int = 1  # sampling seed when the file gives none
    metric: str = "test_accuracy"
    maximize: bool | None = None  # None: the way the metric gets better (accuracy up, loss down)
    train_samples: int | None = None  # caps applied to every trial, for quick runs
    test_samples: int | None = None
    max_epochs: int | None = None
    data_dir: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)  # training options set for every trial
    resume: bool = True  # reuse finished trials whose configuration is identical

    def validate(self) -> "SearchConfig":
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1 (got {self.concurrency})")
        for name in ("train_samples", "test_samples", "max_epochs"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {v})")
        unknown = sorted(set(self.overrides) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"not training options: {', '.join(unknown)}")
        if self.metric not in RECORDED_METRICS:
            raise ConfigError(f"--metric {self.metric!r} is not recorded by a trial; use {', '.join(RECORDED_METRICS)}")
        if self.group_name is not None:
            check_group_name(self.group_name, "--group-name", ConfigError)
        if self.maximize is not None:
            return self
        if self.metric not in BETTER_WHEN_HIGHER:
            raise ConfigError(f"--metric {self.metric} is neither better high nor low: add --minimize or --maximize")
        return replace(self, maximize=BETTER_WHEN_HIGHER[self.metric])  # the way the metric gets better


@dataclass
class Trial:
    index: int
    params: dict[str, Any]
    config: TrainConfig
    status: str = "pending"  # pending, running, done, failed, stopped
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    started: float | None = None
    ended: float | None = None
    run_dir: str | None = None
    artifact_sha256: str | None = None
    reused: bool = False

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

    @property
    def reused(self) -> int:
        return sum(t.reused for t in self.trials)


#: seconds trials get to end by themselves after a Ctrl-C before they are sent SIGTERM
INTERRUPT_GRACE = 5.0


def plan_trials(spec: SearchSpec, seed: int = 1) -> list[dict[str, Any]]:
    """The parameter sets of every trial, in order (reproducible from the seed). A search of
    more than ``MAX_TRIALS`` is refused before any is made."""
    if spec.algorithm == "single":
        return [dict(spec.params)]
    n = check_trial_count(spec)
    if spec.algorithm == "grid":
        keys = list(spec.matrix)
        combos = itertools.islice(itertools.product(*(spec.matrix[k].points() for k in keys)), n)
        return [{**spec.params, **dict(zip(keys, c, strict=False))} for c in combos]
    rng = np.random.default_rng(spec.seed if spec.seed is not None else seed)
    assert spec.n_runs is not None
    return [{**spec.params, **{k: d.sample(rng) for k, d in spec.matrix.items()}} for _ in range(spec.n_runs)]


def _trial_config(
    spec: SearchSpec, params: dict[str, Any], config: SearchConfig, threads: int, where: str
) -> TrainConfig:
    """The effective TrainConfig of one trial: the file's flags, then the caps and overrides."""
    try:
        values = TrainConfig.parse_args(without_output_flags(render(spec.args, params)), allowed=TRIAL_OPTIONS)
        trial = TrainConfig(**values).with_values(config.overrides)
        caps: dict[str, Any] = {"threads": threads}
        for name in ("train_samples", "test_samples", "data_dir"):
            if getattr(config, name):
                caps[name] = getattr(config, name)
        if config.max_epochs:
            caps["epochs"] = min(trial.epochs, config.max_epochs)
        return replace(trial, **caps).validate()
    except ConfigError as e:
        raise SearchError(f"the training command of {where} is not valid: {e}") from None


def check_overrides(spec: SearchSpec, overrides: Mapping[str, Any]) -> None:
    """Refuse an override of a flag the matrix varies: every trial would train with the one
    value, while the tables showed the matrix's."""
    clash = [f for f in matrix_flags(spec) if f in {OPTIONS[k].flag for k in overrides if k in OPTIONS}]
    if clash:
        raise ConfigError(
            f"{', '.join(clash)} {'is' if len(clash) == 1 else 'are'} the search's to vary (its matrix); "
            "given here too (or by --recipe or --config), every trial would train with this one value: drop it "
            "here or from the matrix"
        )


def trial_configs(spec: SearchSpec, config: SearchConfig, threads: int = 1) -> list[tuple[dict[str, Any], TrainConfig]]:
    """(params, effective TrainConfig) of every trial, checked before anything runs."""
    check_overrides(spec, config.overrides)
    return [
        (p, _trial_config(spec, p, config, threads, f"trial {i}")) for i, p in enumerate(plan_trials(spec, config.seed))
    ]


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n", error=SearchError)


def _write_tables(group_dir: Path, trials: list[Trial], metric: str) -> None:
    rows = [
        {
            "trial": t.name,
            "status": t.status,
            "params": t.params,
            "test_accuracy": t.metrics.get("test_accuracy"),
            "test_loss": t.metrics.get("test_loss"),
            metric: t.metrics.get(metric),
            "best_epoch": t.metrics.get("best_epoch"),
            "seconds": None if t.duration is None else round(t.duration, 2),
            "started": t.started,
            "ended": t.ended,
            "run_dir": t.run_dir,
            "artifact_sha256": t.artifact_sha256,
            "error": t.error,
            "reused": t.reused,
            "args": t.config.to_args(),
        }
        for t in trials
    ]
    _write_json(group_dir / "trials.json", rows)
    keys = sorted({k for t in trials for k in t.params})
    with io.StringIO(newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "status", *keys, "test_accuracy", "test_loss", "best_epoch", "seconds", "error"])
        for r, t in zip(rows, trials, strict=False):
            w.writerow(
                [
                    t.name,
                    t.status,
                    *(t.params.get(k) for k in keys),
                    r["test_accuracy"],
                    r["test_loss"],
                    r["best_epoch"],
                    r["seconds"],
                    t.error or "",
                ]
            )
        write_atomic(group_dir / "trials.csv", f.getvalue(), error=SearchError)


def _finished(run_dir: Path, config: TrainConfig) -> tuple[dict[str, Any] | None, str]:
    """(result, "") of a finished run whose recorded configuration is ``config`` and whose model
    verifies; else (None, why not: "" when it never finished)."""
    from .artifact import read_manifest
    from .errors import ArtifactError

    try:
        recorded = json.loads((run_dir / "config.json").read_text())["config"]
        result = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None, ""
    if not isinstance(recorded, dict) or not isinstance(result, dict):  # not assert: python -O drops it
        return None, ""
    # where it ran (folders, and the data folder however it is spelled) changes nothing
    want = {k: v for k, v in config.to_json().items() if k not in MACHINE}
    changed = sorted(k for k in set(want) | set(recorded) if k not in MACHINE and recorded.get(k) != want.get(k))
    if changed:
        k = changed[0]
        return None, f"{k} {recorded.get(k)} -> {want.get(k)}"
    try:
        if read_manifest(run_dir / "model")[1] != result.get("artifact_sha256"):
            return None, "its model is not the one it recorded"
    except ArtifactError as e:
        return None, f"its model does not verify ({e})"
    return result, ""


def _absorb(trial: Trial, result: dict[str, Any]) -> None:
    trial.status = "done"
    trial.run_dir = result["run_dir"]
    trial.artifact_sha256 = result["artifact_sha256"]
    trial.metrics = {
        "test_accuracy": result["best_accuracy"],
        "test_loss": result["best_test_loss"],
        "best_epoch": result["best_epoch"],
    }


class _Group:
    """Runs the trials of one group folder: launching, reaping, stopping."""

    def __init__(
        self,
        group_dir: Path,
        trials: list[Trial],
        spec: SearchSpec,
        config: SearchConfig,
        concurrency: int,
        on_update: Callable[[list[Trial]], None] | None,
    ) -> None:
        self.dir, self.trials, self.spec, self.config = group_dir, trials, spec, config
        self.concurrency, self.on_update = concurrency, on_update
        self.running: dict[int, subprocess.Popen[bytes]] = {}
        self.stop_reason: str | None = None

    def paths(self, t: Trial) -> tuple[Path, Path, Path, Path]:
        """(config file, run folder, log, error file) of a trial."""
        return (
            self.dir / "trials" / f"{t.name}.json",
            self.dir / "trials" / t.name,
            self.dir / "logs" / f"{t.name}.log",
            self.dir / "logs" / f"{t.name}.error.json",
        )

    def resume(self) -> None:
        """Reuse every finished trial whose effective configuration is identical; say how many."""
        stale: list[str] = []
        for t in self.trials:
            result, why = _finished(self.paths(t)[1], t.config)
            if result is not None:
                _absorb(t, result)
                t.reused = True
            elif why:
                stale.append(f"{t.name}: {why}")
        reused = sum(t.reused for t in self.trials)
        if reused or stale:
            log.info(
                "reusing %d of %d trials (finished, same configuration)%s",
                reused,
                len(self.trials),
                f"; {len(stale)} finished with another configuration run again ({stale[0]})" if stale else "",
            )
        for t in self.trials:  # a group that stopped early stays stopped: launch nothing more
            if t.reused:
                self.stop_early(t)

    def stop_early(self, t: Trial) -> None:
        """Stop the group when finished trial ``t`` meets an early-stopping condition."""
        hit = next((e for e in self.spec.early_stopping if t.status == "done" and e.reached(t.metrics)), None)
        if hit and self.stop_reason is None:
            op = ">=" if hit.optimization == "maximize" else "<="
            self.stop(f"early stopping: {t.name} reached {hit.metric} {op} {hit.value}")

    def launch(self, t: Trial) -> None:
        config_file, run_dir, log_file, error_file = self.paths(t)
        try:
            if run_dir.exists():  # an unfinished (or differently configured) earlier attempt
                shutil.rmtree(run_dir)
            error_file.unlink(missing_ok=True)
            t.config.save(config_file)
            cmd = [
                sys.executable,
                "-m",
                "mnistkit.train",
                "--config",
                str(config_file),
                "--error-file",
                str(error_file),
            ]
            with open(log_file, "wb") as out:
                self.running[t.index] = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with(os.getpid())
                )
        except (OSError, ConfigError) as e:
            why = os_reason(e) if isinstance(e, OSError) else str(e)
            raise SearchError(f"cannot start {t.name} in {self.dir}: {why}") from None
        t.status, t.started = "running", time.time()
        log.debug("%s: %s", t.name, " ".join(t.config.to_args()))

    def reap(self, t: Trial, proc: subprocess.Popen[bytes]) -> None:
        _, run_dir, log_file, error_file = self.paths(t)
        t.ended = time.time()
        result = _finished(run_dir, t.config)[0] if proc.returncode == 0 else None
        if result is not None:
            _absorb(t, result)
        elif proc.returncode is not None and proc.returncode < 0:
            t.status, t.error = "failed", f"killed by signal {-proc.returncode}"
        else:
            t.status, t.error = "failed", _error_of(error_file, log_file)

    def poll(self) -> None:
        for idx, proc in list(self.running.items()):
            if proc.poll() is None:
                continue
            del self.running[idx]
            t = self.trials[idx]
            self.reap(t, proc)
            _log_trial(t, self.trials, self.spec.matrix or t.params)
            _write_tables(self.dir, self.trials, self.config.metric)
            self.stop_early(t)

    def stop(self, reason: str, *, grace: float = 0) -> None:
        """Stop every running trial (SIGTERM, then SIGKILL) and every pending one. ``grace``:
        seconds the trials get to end by themselves first (after a Ctrl-C, which the terminal
        sent them too: a SIGTERM straight after it interrupted their own clean-up, and left a
        trial folder half removed)."""
        self.stop_reason = reason
        log.info("%s", reason)
        until = time.monotonic() + grace
        while time.monotonic() < until and any(proc.poll() is None for proc in self.running.values()):
            time.sleep(0.05)
        for proc in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for idx, proc in self.running.items():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            t = self.trials[idx]
            t.status, t.ended, t.error = "stopped", time.time(), reason
        self.running.clear()
        for t in self.trials:
            if t.status == "pending":
                t.status, t.error = "stopped", reason

    def run(self) -> None:
        pending = [t for t in self.trials if t.status == "pending"]
        try:
            while (pending or self.running) and self.stop_reason is None:
                while pending and len(self.running) < self.concurrency:
                    self.launch(pending.pop(0))
                if self.on_update:
                    self.on_update(self.trials)
                time.sleep(0.1)
                self.poll()
        except KeyboardInterrupt as e:  # Ctrl-C reached the trials too; SIGTERM (a subclass) did not
            self.stop("interrupted", grace=INTERRUPT_GRACE if type(e) is KeyboardInterrupt else 0)
            self.finish()
            raise
        except BaseException:
            self.stop("the group failed")  # no trial outlives the group
            raise
        self.finish()

    def finish(self) -> Trial | None:
        _write_tables(self.dir, self.trials, self.config.metric)
        if self.on_update:
            self.on_update(self.trials)
        return _record_best(self.dir, self.trials, self.config)


def _die_with(parent: int) -> Callable[[], None] | None:
    """Run in a trial process before it starts: on Linux the kernel kills it when the group
    process dies, even by ``kill -9``, so no orphan keeps writing into the group folder."""
    if not sys.platform.startswith("linux"):
        return None

    def setup() -> None:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the group died before prctl took effect
            os._exit(1)

    return setup


def _error_of(error_file: Path, log_file: Path) -> str:
    """A failed trial's error: its structured error file, else the last line it printed."""
    try:
        return str(json.loads(error_file.read_text())["error"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        lines = [x for x in log_file.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no output"
    return lines[-1][:300] if lines else "no output"


@contextmanager
def _lock(group_dir: Path) -> Iterator[None]:
    """Hold the group folder's ``.lock`` (an exclusive flock) for the block: a second process
    running the same group would take the first's running trials for unfinished ones and delete
    them. The kernel lets go of it when this process ends, however it ends."""
    path = group_dir / ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise SearchError(f"cannot open {path}: {os_reason(e)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise SearchError(
                f"group {group_dir} is being run by another process{pid}; wait for it to end, "
                "or give this run another --group-name"
            ) from None
        except OSError as e:
            raise SearchError(f"cannot lock {path}: {os_reason(e)}") from None
        try:  # who holds it, for the second run's message; a full disk only loses that
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


@contextmanager
def _open_group(
    spec: SearchSpec, config: SearchConfig, name: str, n_trials: int, concurrency: int, threads: int
) -> Iterator[Path]:
    """The group folder, made and locked for the block, with its ``group.json``."""
    group_dir = Path(config.output_dir) / name
    try:
        (group_dir / "trials").mkdir(parents=True, exist_ok=True)
        (group_dir / "logs").mkdir(exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create group folder {group_dir}: {os_reason(e)} (--output-dir)") from None
    with _lock(group_dir):
        _write_group_json(group_dir, spec, config, name, n_trials, concurrency, threads)
        yield group_dir


def _write_group_json(
    group_dir: Path, spec: SearchSpec, config: SearchConfig, name: str, n_trials: int, concurrency: int, threads: int
) -> None:
    _write_json(
        group_dir / "group.json",
        {
            "name": name,
            "spec_name": spec.name,
            "format": spec.source_format,
            "algorithm": spec.algorithm,
            "args": list(spec.args),
            "n_runs_spec": spec.n_runs,
            "concurrency_spec": spec.concurrency,
            "seed_spec": spec.seed,
            "matrix": {k: asdict(d) for k, d in spec.matrix.items()},
            "params": spec.params,
            "n_runs": n_trials,
            "concurrency": concurrency,
            "threads_per_trial": threads,
            "seed": spec.seed if spec.seed is not None else config.seed,
            "early_stopping": [asdict(e) for e in spec.early_stopping],
            "config": asdict(config),
        },
    )


def run_group(
    spec: SearchSpec, config: SearchConfig | None = None, *, on_update: Callable[[list[Trial]], None] | None = None
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
    planned = trial_configs(spec, config, threads)  # every trial's flags are valid before the first one runs
    check_mnist(planned[0][1].data_dir)  # and the data they all read is there
    name = config.group_name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with _open_group(spec, config, name, len(planned), concurrency, threads) as group_dir:
        trials = [
            Trial(i, p, replace(c, output_dir=str(group_dir / "trials"), run_name=f"trial-{i:03d}"))
            for i, (p, c) in enumerate(planned)
        ]
        dropped = sorted(
            {a.split("=", 1)[0] for a in set(spec.args) - set(without_output_flags(spec.args)) if a[:2] == "--"}
        )
        if dropped:  # the 2018 files name Polyaxon's output path; here the group decides
            log.info("ignoring %s of the polyaxonfile: trials run in %s", ", ".join(dropped), group_dir / "trials")
        group = _Group(group_dir, trials, spec, config, concurrency, on_update)
        if config.resume:
            group.resume()
        group.run()
        best = _record_best(group_dir, trials, config)
        if best is None:
            (group_dir / "best.json").unlink(missing_ok=True)  # a rerun's old pick may name a trial redone since
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
        t.name,
        outcome,
        params,
        t.duration or 0,
        done,
        running,
        failed,
        len(trials),
        f", best {100 * best:.2f}%" if best is not None else "",
    )


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _record_best(group_dir: Path, trials: list[Trial], config: SearchConfig) -> Trial | None:
    done = [t for t in trials if t.status == "done" and isinstance(t.metrics.get(config.metric), (int, float))]
    if not done:
        return None
    pick = max if config.maximize else min
    best = pick(done, key=lambda t: t.metrics[config.metric])
    _write_json(
        group_dir / "best.json",
        {
            "trial": best.name,
            "metric": config.metric,
            "optimization": "maximize" if config.maximize else "minimize",
            "value": best.metrics[config.metric],
            "params": best.params,  # as the file gives them; "caps" says what this group capped
            "caps": {k: v for k in ("max_epochs", "train_samples", "test_samples") if (v := getattr(config, k))},
            "metrics": best.metrics,
            "run_dir": best.run_dir,
            "artifact": str(Path(best.run_dir or "") / "model"),
            "artifact_relative": f"trials/{best.name}/model",
            "artifact_sha256": best.artifact_sha256,
            "group": group_dir.name,
            "chosen": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return best


def spec_from_group(group_dir: str | os.PathLike[str]) -> SearchSpec:
    """The search a group folder ran, rebuilt from its ``group.json``."""
    try:
        g = json.loads((Path(group_dir) / "group.json").read_text())
        return SearchSpec(
            g["algorithm"],
            matrix={
                k: Distribution(
                    d["kind"], tuple(d["args"]), tuple(tuple(v) if isinstance(v, list) else v for v in d["values"])
                )
                for k, d in g["matrix"].items()
            },
            params=g["params"],
            args=tuple(g["args"]),
            n_runs=g["n_runs_spec"],
            concurrency=g["concurrency_spec"],
            seed=g["seed"],
            early_stopping=tuple(EarlyStopping(**e) for e in g["early_stopping"]),
            name=g["spec_name"],
            source_format=g["format"],
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise SearchError(
            f"{group_dir}/group.json is missing or from another mnistkit version; re-run the search"
        ) from None


def read_best(group_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The recorded best trial of a group folder (``best.json``)."""
    path = Path(group_dir) / "best.json"
    try:
        record = json.loads(path.read_text())
    except OSError:
        raise SearchError(f"{group_dir} has no best.json; is it a finished mnistkit search group?") from None
    except ValueError:
        raise SearchError(f"{path} is damaged (not JSON); re-run the group to record its best trial again") from None
    why = _damage(record, Path(group_dir))
    if why:
        raise SearchError(f"{path} is damaged ({why}); re-run the group to record its best trial again")
    # the group folder may have moved since: prefer the path relative to it
    rel = Path(group_dir) / record["artifact_relative"]
    if rel.is_dir():
        record["artifact"] = str(rel)
    return record


#: the fields of best.json its readers use, each a string
_BEST_FIELDS = ("trial", "artifact", "artifact_relative", "artifact_sha256")


def _damage(record: Any, group_dir: Path) -> str:
    """What is wrong with a best.json record ("" when nothing is)."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    bad = [k for k in _BEST_FIELDS if not isinstance(record.get(k), str) or not record[k]]
    if bad:
        return f"{', '.join(bad)} missing or not text"
    rel = Path(record["artifact_relative"])
    try:
        inside = group_dir.resolve()
        escapes = rel.is_absolute() or not (inside / rel).resolve().is_relative_to(inside)
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        escapes = True
    if escapes:
        return f"artifact_relative {record['artifact_relative']!r} points outside the group folder"
    return ""
