"""Where metrics and outputs go: always a local run folder, and Polyaxon when managed.

Polyaxon is detected from the job's environment (``POLYAXON_RUN_INSTANCE``, which
Polyaxon sets in every managed job, or ``POLYAXON_IS_MANAGED``) and reported to through
the current ``polyaxon`` tracking client, an optional extra (``pip install
mnistkit[polyaxon]``). ``MNISTKIT_POLYAXON=on|off|auto`` overrides the detection.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError, TrainingError
from .files import write_failed

__all__ = ["Tracker", "LocalTracker", "PolyaxonTracker", "polyaxon_managed", "open_tracker", "read_metrics"]

log = logging.getLogger(__name__)


class Tracker(Protocol):
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None: ...
    def close(self) -> None: ...


def _clean(value: Any) -> Any:
    # JSON has no NaN/Infinity; record them as strings rather than write invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class LocalTracker:
    """Appends one JSON object per step to ``<run>/metrics.jsonl``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        try:
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise write_failed(e, self.path, TrainingError) from None

    def log_params(self, params: Mapping[str, Any]) -> None:
        # The parameters live in config.json beside the metrics.
        pass

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        try:
            self._file.write(json.dumps(row, sort_keys=True) + "\n")
            self._file.flush()
        except OSError as e:
            raise write_failed(e, self.path, TrainingError) from None

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # only after a failed write, which log_metrics already reported


class PolyaxonTracker:
    """Reports to Polyaxon through ``polyaxon.tracking`` (offline when asked)."""

    def __init__(self, *, offline: bool = False, artifacts_path: str | None = None) -> None:
        try:
            from polyaxon import tracking
        except ImportError:
            raise ConfigError(
                "this job is managed by Polyaxon but the polyaxon client is not installed; "
                "pip install 'mnistkit[polyaxon]' or set MNISTKIT_POLYAXON=off"
            ) from None
        self._tracking = tracking
        kwargs: dict[str, Any] = {"is_offline": offline, "track_code": False, "track_env": False, "track_logs": False}
        if artifacts_path:
            kwargs["artifacts_path"] = artifacts_path
        if offline:
            kwargs.setdefault("project", "mnistkit")
        try:
            tracking.init(**kwargs)
        except Exception as e:  # the client's own errors: no project, no API, not managed
            said = " ".join(str(e).split())[:300] or type(e).__name__
            raise ConfigError(
                f"Polyaxon tracking could not start ({said}); outside a Polyaxon job set MNISTKIT_POLYAXON=offline or off"
            ) from None

    def outputs_path(self) -> str | None:
        try:
            return str(self._tracking.get_outputs_path())
        except Exception:  # the client raises various errors when no outputs path is configured
            return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._tracking.log_inputs(**{k: v for k, v in params.items() if v is not None})

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        finite = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self._tracking.log_metrics(step=step, **finite)  # type: ignore[arg-type]

    def close(self) -> None:
        # end() flushes the event writers and marks the run done (it needs pandas)
        self._tracking.end()


class _Fanout:
    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def log_params(self, params: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_params(params)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        for t in self.trackers:
            t.log_metrics(step, metrics)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


def polyaxon_managed(environ: Mapping[str, str] | None = None) -> bool:
    """True when this process runs inside a Polyaxon-managed job (or is told so)."""
    from .settings import Settings

    env = os.environ if environ is None else environ
    mode = Settings.from_env(env).polyaxon.lower()
    if mode in ("on", "offline"):
        return True
    if mode == "off":
        return False
    return bool(env.get("POLYAXON_RUN_INSTANCE")) or env.get("POLYAXON_IS_MANAGED", "").lower() in ("1", "true")


def open_tracker(run_dir: Path, *, polyaxon: bool | None = None) -> tuple[Tracker, "PolyaxonTracker | None"]:
    """Open the local tracker, plus Polyaxon's when managed. Returns (fan-out, polyaxon)."""
    trackers: list[Tracker] = [LocalTracker(run_dir)]
    px = None
    if polyaxon if polyaxon is not None else polyaxon_managed():
        from .settings import settings

        offline = settings().polyaxon.lower() == "offline" or os.environ.get("POLYAXON_IS_OFFLINE", "").lower() in (
            "1",
            "true",
        )
        try:
            px = PolyaxonTracker(offline=offline, artifacts_path=str(run_dir / "polyaxon") if offline else None)
        except BaseException:
            trackers[0].close()  # its file, in a run folder about to go
            raise
        trackers.append(px)
        log.info("reporting metrics to Polyaxon%s", " (offline)" if offline else "")
    return _Fanout(trackers), px


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a run folder's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # blank, or the torn last line of a run killed mid-write
    return rows
