"""Reading and writing polyaxonfiles.

Two formats are read into one ``SearchSpec``:

* the 2018 format (polyaxon v0.x, ``version: 1``): ``kind: group`` with ``hptuning``
  (``matrix``, ``grid_search`` / ``random_search``, ``concurrency``, ``early_stopping``,
  ``seed``), ``declarations`` and a ``run.cmd`` template; or ``kind: experiment``;
* the current format (polyaxon v1.1+): ``kind: operation`` with ``matrix: {kind: grid|random}``,
  ``params`` and an inline ``component`` whose container runs ``mnistkit-train``.

Distributions follow Polyaxon's definitions: ``values``/``choice``, ``pvalues``/``pchoice``,
``range`` (numpy arange), ``linspace``, ``logspace``, ``geomspace`` (discrete) and
``uniform``, ``quniform``, ``loguniform`` (exp of a uniform draw), ``qloguniform``,
``normal``, ``qnormal``, ``lognormal``, ``qlognormal`` (continuous); the ``q`` variants
round ``value // q * q``. ``write_v1`` exports a spec as a current polyaxonfile that
``polyaxon check`` accepts.
"""

from __future__ import annotations

import ast
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .errors import MnistkitError, SearchError
from .files import disk_errors, write_atomic

__all__ = [
    "Distribution",
    "EarlyStopping",
    "SearchSpec",
    "read_polyaxonfile",
    "parse_polyaxonfile",
    "parse_distribution",
    "render",
    "without_output_flags",
    "write_v1",
    "DISCRETE",
    "CONTINUOUS",
    "BETTER_WHEN_HIGHER",
    "RECORDED_METRICS",
    "check_group_name",
    "check_trial_count",
    "matrix_flags",
    "MAX_POINTS",
    "MAX_TRIALS",
]

# name -> names of its arguments, in the order of the "a:b:c" string form
DISCRETE = {
    "values": None,
    "pvalues": None,
    "range": ("start", "stop", "step"),
    "linspace": ("start", "stop", "num"),
    "logspace": ("start", "stop", "num", "base"),
    "geomspace": ("start", "stop", "num"),
}
CONTINUOUS = {
    "uniform": ("low", "high"),
    "quniform": ("low", "high", "q"),
    "loguniform": ("low", "high"),
    "qloguniform": ("low", "high", "q"),
    "normal": ("loc", "scale"),
    "qnormal": ("loc", "scale", "q"),
    "lognormal": ("loc", "scale"),
    "qlognormal": ("loc", "scale", "q"),
}
_V1_ALIASES = {"choice": "values", "pchoice": "pvalues"}
_V0_TOP = {
    "version",
    "kind",
    "hptuning",
    "declarations",
    "build",
    "run",
    "environment",
    "logging",
    "tags",
    "name",
    "description",
    "params",
}
_V0_HPTUNING = {"concurrency", "random_search", "grid_search", "matrix", "early_stopping", "seed", "hyperband", "bo"}
_V1_TOP = {
    "version",
    "kind",
    "name",
    "description",
    "tags",
    "matrix",
    "params",
    "component",
    "hubRef",
    "pathRef",
    "urlRef",
    "presets",
    "queue",
    "cache",
    "termination",
    "plugins",
    "isPreset",
    "isApproved",
    "cost",
    "schedule",
    "dependencies",
    "trigger",
    "conditions",
    "skipOnUpstreamSkip",
    "events",
    "hooks",
    "joins",
    "inputs",
    "outputs",
    "run",
    "runPatch",
    "patchStrategy",
}
_TEMPLATE = re.compile(r"\{\{\s*([\w.]+)\s*\}\}")
#: what every finished trial records, so what a search can pick by or stop early on
RECORDED_METRICS = ("test_accuracy", "test_loss", "best_epoch")
#: the recorded metrics that get better one way, and which (a loss picked as the highest would
#: be the worst trial; best_epoch has no such way)
BETTER_WHEN_HIGHER = {"test_accuracy": True, "test_loss": False}
#: a group folder's name: one path component, as Polyaxon's names are (no "/", no "..")
_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: the most values one discrete distribution may give (a grid of more is a typo, not a search)
MAX_POINTS = 10_000
#: the most trials one search may have (more would not finish here; its plan alone fills memory)
MAX_TRIALS = 10_000


@dataclass(frozen=True)
class Distribution:
    """One matrix entry: a discrete set of values or a continuous distribution."""

    kind: str
    args: tuple[Any, ...] = ()
    values: tuple[Any, ...] = ()  # for values/pvalues (pvalues: (value, p) pairs)

    @property
    def discrete(self) -> bool:
        return self.kind in DISCRETE

    def points(self) -> list[Any]:
        """All values of a discrete distribution (grid search)."""
        if self.kind == "values":
            return list(self.values)
        if self.kind == "pvalues":
            return [v for v, _ in self.values]
        if not self.discrete:
            raise SearchError(f"{self.kind} is a continuous distribution; a grid search needs discrete values")
        with np.errstate(all="ignore"):  # an overflow is an inf, refused where the file is read
            if self.kind == "range":
                out = np.arange(*self.args)
            elif self.kind == "linspace":
                out = np.linspace(*self.args)
            elif self.kind == "logspace":  # start:stop:num[:base]; numpy's 4th argument is endpoint
                start, stop, num = self.args[:3]
                out = np.logspace(start, stop, num, base=self.args[3] if len(self.args) > 3 else 10.0)
            else:
                out = np.geomspace(*self.args)
        return [_py(v) for v in out]

    def sample(self, rng: np.random.Generator) -> Any:
        """One random draw (random search). An overflow gives inf (no warning), which the
        trial's training options then refuse in one line."""
        with np.errstate(all="ignore"):
            return self._sample(rng)

    def _sample(self, rng: np.random.Generator) -> Any:
        if self.kind == "pvalues":
            values, probs = zip(*self.values, strict=False)
            return _py(values[int(rng.choice(len(values), p=np.asarray(probs, dtype=float) / sum(probs)))])
        if self.discrete:
            pts = self.points()
            return _py(pts[int(rng.integers(len(pts)))])
        a = self.args
        if self.kind in ("uniform", "quniform"):
            v = rng.uniform(a[0], a[1])
        elif self.kind in ("loguniform", "qloguniform"):
            v = np.exp(rng.uniform(a[0], a[1]))
        elif self.kind in ("normal", "qnormal"):
            v = rng.normal(a[0], a[1])
        else:  # lognormal, qlognormal
            v = rng.lognormal(a[0], a[1])
        if self.kind.startswith("q"):
            q = a[2]
            v = np.round(v // q) * q
        return _py(v)

    def to_v1(self) -> dict[str, Any]:
        kind = {"values": "choice", "pvalues": "pchoice"}.get(self.kind, self.kind)
        if self.kind == "values":
            return {"kind": kind, "value": list(self.values)}
        if self.kind == "pvalues":
            return {"kind": kind, "value": [list(p) for p in self.values]}
        return {"kind": kind, "value": ":".join(_fmt(x) for x in self.args)}


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _fmt(x: Any) -> str:
    return repr(x) if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class EarlyStopping:
    metric: str
    value: float
    optimization: str = "maximize"

    def reached(self, metrics: Mapping[str, Any]) -> bool:
        v = metrics.get(self.metric)
        if not isinstance(v, (int, float)):
            return False
        return v >= self.value if self.optimization == "maximize" else v <= self.value


@dataclass(frozen=True)
class SearchSpec:
    """A search, whatever format it came from."""

    algorithm: str  # "grid", "random" or "single"
    matrix: dict[str, Distribution] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # fixed values (declarations / params)
    args: tuple[str, ...] = ()  # training flags, possibly with {{ name }} templates
    n_runs: int | None = None
    concurrency: int = 1
    seed: int | None = None
    early_stopping: tuple[EarlyStopping, ...] = ()
    name: str = "mnist"
    source_format: str = "v1"

    @property
    def n_trials(self) -> int:
        """How many trials the search has, counted without building them (a grid: the product
        of its matrix's lengths, or fewer when the file caps it)."""
        if self.algorithm == "grid":
            size = math.prod(len(d.points()) for d in self.matrix.values())
            return min(size, self.n_runs) if self.n_runs else size
        if self.algorithm == "random":
            return self.n_runs or 0
        return 1


def _number(text: Any, where: str) -> Any:
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return text
    try:
        v = ast.literal_eval(str(text).strip())
    except (ValueError, SyntaxError):
        v = None
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise SearchError(f"{where}: {text!r} is not a number")
    return v


def parse_distribution(kind: str, value: Any, where: str) -> Distribution:
    """Build a distribution from Polyaxon's forms: 'a:b:c', [a, b, c] or {name: a, ...}."""
    kind = _V1_ALIASES.get(kind, kind)
    if kind == "values":
        if not isinstance(value, list) or not value:
            raise SearchError(f"{where}: 'values' needs a non-empty list")
        return Distribution(kind, values=tuple(value))
    if kind == "pvalues":
        if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
            raise SearchError(f"{where}: 'pvalues' needs a list of [value, probability] pairs")
        probs = [_number(p[1], where) for p in value]
        if any(p < 0 for p in probs) or abs(sum(probs) - 1) > 1e-6:
            raise SearchError(f"{where}: 'pvalues' probabilities must be >= 0 and sum to 1")
        return Distribution(kind, values=tuple((p[0], pr) for p, pr in zip(value, probs, strict=False)))
    names = DISCRETE.get(kind) or CONTINUOUS.get(kind)
    if names is None:
        known = ", ".join([*DISCRETE, *CONTINUOUS])
        raise SearchError(f"{where}: unknown distribution {kind!r}; known: {known}")
    if isinstance(value, str):
        parts = value.split(":")
    elif isinstance(value, list):
        parts = value
    elif isinstance(value, dict):
        extra = set(value) - set(names)
        if extra:
            raise SearchError(f"{where}: {kind} takes {', '.join(names)}; unknown {', '.join(sorted(extra))}")
        parts = [value[n] for n in names if n in value]
    else:
        raise SearchError(f"{where}: {kind} expects 'a:b' text, a list or a mapping")
    required = len(names) - (1 if kind == "logspace" else 0)
    if len(parts) not in (required, len(names)):
        raise SearchError(f"{where}: {kind} needs {':'.join(names[:required])}, got {value!r}")
    args = tuple(_number(p, where) for p in parts)
    if not all(_finite(a) for a in args):
        raise SearchError(f"{where}: {kind} needs finite numbers, got {value!r}")
    if kind in DISCRETE or kind in ("uniform", "quniform", "loguniform", "qloguniform"):
        if args[0] >= args[1]:
            raise SearchError(f"{where}: {kind} needs {names[0]} < {names[1]}, got {value!r}")
    if kind in ("normal", "qnormal", "lognormal", "qlognormal") and args[1] <= 0:
        raise SearchError(f"{where}: {kind} needs a positive scale, got {value!r}")
    if len(args) > 2 and names[2] in ("step", "num", "q") and args[2] <= 0:
        raise SearchError(f"{where}: {kind} needs a positive {names[2]}, got {value!r}")
    if kind in ("linspace", "logspace", "geomspace"):
        if args[2] != int(args[2]):
            raise SearchError(f"{where}: {kind} needs a whole number of points, got {args[2]}")
        args = (args[0], args[1], int(args[2]), *args[3:])
    if kind == "geomspace" and (0 in args[:2] or (args[0] < 0) != (args[1] < 0)):
        raise SearchError(f"{where}: geomspace needs start and stop of the same sign, neither 0, got {value!r}")
    if kind == "logspace" and len(args) > 3 and args[3] <= 0:
        raise SearchError(f"{where}: logspace needs a positive base, got {value!r}")
    if kind in ("uniform", "quniform", "loguniform", "qloguniform") and not _finite(float(args[1]) - float(args[0])):
        raise SearchError(f"{where}: {kind} {value!r} spans more than a float can hold")
    return _checked(Distribution(kind, args=args), value, where)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an int past the largest float
        return False


def _checked(dist: Distribution, value: Any, where: str) -> Distribution:
    """``dist`` when a discrete one gives at most ``MAX_POINTS`` finite values (counted before
    they are made); else a one-line error."""
    if not dist.discrete:
        return dist
    a = dist.args
    count = (float(a[1]) - float(a[0])) / float(a[2]) if dist.kind == "range" else a[2]  # inf when it overflows
    if not count <= MAX_POINTS:
        shown = math.ceil(count) if math.isfinite(count) else "more than a float can count"
        raise SearchError(f"{where}: {dist.kind} {value!r} gives {shown} values; at most {MAX_POINTS}")
    try:
        points = dist.points()
    except (ArithmeticError, ValueError, TypeError) as e:  # e.g. an int range numpy cannot hold
        raise SearchError(f"{where}: {dist.kind} {value!r} cannot be computed ({e})") from None
    if not all(_finite(p) for p in points):
        raise SearchError(f"{where}: {dist.kind} {value!r} gives values too large for a number (inf)")
    return dist


def _cmd_args(cmd: Any, where: str) -> tuple[str, ...]:
    if isinstance(cmd, list):
        # an argument list (v1 command + args): each item is one argument already
        words = [str(w) for w in cmd]
    elif isinstance(cmd, str):
        # YAML folds "\" + newline continuations into "\ "; templates may hold spaces
        text = re.sub(r"\\\s+", " ", cmd)
        slots: list[str] = []

        def hide(m: re.Match[str]) -> str:
            slots.append(m.group(0))
            return f"\x00{len(slots) - 1}\x00"

        try:
            words = shlex.split(_TEMPLATE.sub(hide, text))
        except ValueError as e:
            raise SearchError(f"{where}: cannot parse the command ({e})") from None
        words = [re.sub(r"\x00(\d+)\x00", lambda m: slots[int(m.group(1))], w) for w in words]
    else:
        raise SearchError(f"{where}: expected a command string")
    # "python run.py", "python -m mnistkit.cli.train" or "mnistkit-train" name the 2018 script or ours
    while words and (not words[0].startswith("-") or words[0] == "-m"):
        words.pop(0)
    return tuple(words)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    """``value`` when it is a mapping (nothing: an empty one); else a one-line error."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SearchError(f"{where} must be a mapping, not {type(value).__name__}")
    return value


def _list(value: Any, where: str, example: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SearchError(f"{where} must be a list, e.g. {example}")
    return value


def _whole(value: Any, where: str) -> int:
    v = _number(value, where)
    if not math.isfinite(v) or v != int(v):
        raise SearchError(f"{where}: {value!r} is not a whole number")
    return int(v)


def _seed(value: Any, where: str) -> int | None:
    if value is None:
        return None
    v = _whole(value, where)
    if v < 0:
        raise SearchError(f"{where}: the seed must be 0 or more, got {value!r}")
    return v


def check_group_name(name: str, where: str = "the group name", error: type[MnistkitError] = SearchError) -> str:
    """``name`` when it can name a group folder: one path component (no "/", no ".."), as
    Polyaxon's names are; else a one-line ``error``."""
    if not isinstance(name, str) or not _GROUP_NAME.fullmatch(name):
        raise error(
            f"{where} {name!r} must be letters, digits, '-', '_' or '.', starting with a letter or digit "
            "(it names the group folder)"
        )
    return name


def _check_keys(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise SearchError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")


def _parse_v0(doc: dict[str, Any], name: str) -> SearchSpec:
    _check_keys(doc, _V0_TOP, "polyaxonfile")
    kind = doc.get("kind")
    if kind not in ("group", "experiment"):
        raise SearchError(f"polyaxonfile: kind {kind!r} cannot run here; use 'group' or 'experiment'")
    run = doc.get("run") or {}
    if not isinstance(run, dict) or "cmd" not in run:
        raise SearchError("polyaxonfile: run.cmd is missing")
    declarations = doc.get("declarations") or doc.get("params") or {}
    if not isinstance(declarations, dict):
        raise SearchError("polyaxonfile: declarations must be a mapping")
    args = _cmd_args(run["cmd"], "run.cmd")
    if kind == "experiment":
        if "hptuning" in doc:
            raise SearchError("polyaxonfile: an experiment has no hptuning; use kind: group")
        return SearchSpec("single", params=dict(declarations), args=args, n_runs=1, name=name, source_format="v0")
    hp = doc.get("hptuning")
    if not isinstance(hp, dict):
        raise SearchError("polyaxonfile: a group needs hptuning")
    _check_keys(hp, _V0_HPTUNING, "hptuning")
    for unsupported in ("hyperband", "bo"):
        if unsupported in hp:
            raise SearchError(f"hptuning: {unsupported} search is not supported here; use grid_search or random_search")
    matrix = _v0_matrix(hp.get("matrix"))
    algorithm, n_runs = _v0_algorithm(hp)
    stops = []
    example = "[{metric: test_accuracy, value: 0.99}]"
    for i, es in enumerate(_list(hp.get("early_stopping"), "hptuning.early_stopping", example)):
        if not isinstance(es, dict):
            raise SearchError(f"hptuning.early_stopping[{i}] must be a mapping")
        _check_keys(es, {"metric", "value", "optimization", "policy"}, f"hptuning.early_stopping[{i}]")
        stops.append(_early_stop(es, f"hptuning.early_stopping[{i}]"))
    return SearchSpec(
        algorithm,
        matrix=matrix,
        params=dict(declarations),
        args=args,
        n_runs=n_runs,
        concurrency=_whole(hp.get("concurrency", 1), "hptuning.concurrency"),
        seed=_seed(hp.get("seed"), "hptuning.seed"),
        early_stopping=tuple(stops),
        name=name,
        source_format="v0",
    )


def _v0_matrix(matrix_doc: Any) -> dict[str, Distribution]:
    if not isinstance(matrix_doc, dict) or not matrix_doc:
        raise SearchError("hptuning: matrix is missing or empty")
    matrix = {}
    for key, spec in matrix_doc.items():
        if not isinstance(spec, dict) or len(spec) != 1:
            raise SearchError(f"hptuning.matrix.{key}: give exactly one distribution (e.g. linspace: 0.001:0.1:5)")
        ((dist, value),) = spec.items()
        matrix[key] = parse_distribution(dist, value, f"hptuning.matrix.{key}")
    return matrix


def _v0_algorithm(hp: dict[str, Any]) -> tuple[str, int | None]:
    """(grid or random, number of experiments) of a 2018 hptuning section."""
    if "random_search" in hp and "grid_search" in hp:
        raise SearchError("hptuning: choose one of random_search and grid_search")
    if "random_search" in hp:
        rs = _mapping(hp["random_search"], "hptuning.random_search")
        _check_keys(rs, {"n_experiments"}, "hptuning.random_search")
        if "n_experiments" not in rs:
            raise SearchError("hptuning.random_search: n_experiments is required")
        return "random", _whole(rs["n_experiments"], "hptuning.random_search.n_experiments")
    gs = _mapping(hp.get("grid_search"), "hptuning.grid_search")
    _check_keys(gs, {"n_experiments"}, "hptuning.grid_search")
    if "n_experiments" in gs:
        return "grid", _whole(gs["n_experiments"], "hptuning.grid_search.n_experiments")
    return "grid", None


def _early_stop(es: Mapping[str, Any], where: str) -> EarlyStopping:
    if "metric" not in es or "value" not in es:
        raise SearchError(f"{where}: needs metric and value")
    if es["metric"] not in RECORDED_METRICS:
        raise SearchError(f"{where}: metric {es['metric']!r} is not recorded; use {', '.join(RECORDED_METRICS)}")
    # unsaid: the way the metric gets better (a loss that "maximizes" stopped the group at once)
    opt = str(es.get("optimization", "maximize" if BETTER_WHEN_HIGHER.get(es["metric"], True) else "minimize")).lower()
    if opt not in ("maximize", "minimize"):
        raise SearchError(f"{where}: optimization must be maximize or minimize")
    return EarlyStopping(str(es["metric"]), float(_number(es["value"], where)), opt)


def _parse_v1(doc: dict[str, Any], name: str) -> SearchSpec:
    _check_keys(doc, _V1_TOP, "polyaxonfile")
    kind = doc.get("kind")
    component = doc if kind == "component" else doc.get("component")
    if kind not in ("operation", "component") or not isinstance(component, dict):
        raise SearchError("polyaxonfile: expected kind: operation with an inline component, or kind: component")
    if doc.get("name") is not None:
        name = check_group_name(doc["name"], "polyaxonfile: name")
    run = _mapping(component.get("run"), "component.run")
    container = run.get("container")
    if not isinstance(container, dict):
        raise SearchError("polyaxonfile: component.run.container is missing")
    where = "component.run.container"
    command = _list(container.get("command"), f"{where}.command", "[mnistkit-train]")
    args = _cmd_args([*command, *_list(container.get("args"), f"{where}.args", '["--lr={{ lr }}"]')], where)
    params: dict[str, Any] = {}
    for i, inp in enumerate(_list(component.get("inputs"), "component.inputs", "[{name: lr, type: float}]")):
        if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
            raise SearchError(f"component.inputs[{i}] must be a mapping with a name")
        if "value" in inp:
            params[inp["name"]] = inp["value"]
    for key, p in _mapping(doc.get("params"), "params").items():
        if not isinstance(p, dict) or "value" not in p:
            raise SearchError(f"params.{key}: expected {{value: ...}}")
        params[key] = p["value"]
    matrix_doc = _mapping(doc.get("matrix"), "matrix") if kind == "operation" else {}
    if not matrix_doc:
        return SearchSpec("single", params=params, args=args, n_runs=1, name=name)
    mkind = matrix_doc.get("kind")
    if mkind not in ("grid", "random"):
        raise SearchError(f"matrix.kind {mkind!r} is not supported here; use grid or random")
    _check_keys(matrix_doc, {"kind", "params", "numRuns", "concurrency", "seed", "earlyStopping"}, "matrix")
    matrix = {}
    for key, spec in _mapping(matrix_doc.get("params"), "matrix.params").items():
        if not isinstance(spec, dict) or "kind" not in spec or "value" not in spec:
            raise SearchError(f"matrix.params.{key}: expected {{kind: ..., value: ...}}")
        matrix[key] = parse_distribution(spec["kind"], spec["value"], f"matrix.params.{key}")
    if not matrix:
        raise SearchError("matrix.params is empty")
    if mkind == "random" and "numRuns" not in matrix_doc:
        raise SearchError("matrix: a random matrix needs numRuns")
    stops = []
    for i, es in enumerate(
        _list(matrix_doc.get("earlyStopping"), "matrix.earlyStopping", "[{metric: test_accuracy, value: 0.99}]")
    ):
        stops.append(_early_stop(_mapping(es, f"matrix.earlyStopping[{i}]"), f"matrix.earlyStopping[{i}]"))
    n = matrix_doc.get("numRuns")
    return SearchSpec(
        mkind,
        matrix=matrix,
        params=params,
        args=args,
        n_runs=_whole(n, "matrix.numRuns") if n is not None else None,
        concurrency=_whole(matrix_doc.get("concurrency", 1), "matrix.concurrency"),
        seed=_seed(matrix_doc.get("seed"), "matrix.seed"),
        early_stopping=tuple(stops),
        name=name,
    )


def parse_polyaxonfile(doc: Any, name: str = "mnist") -> SearchSpec:
    """Parse an already-loaded polyaxonfile of either format."""
    if not isinstance(doc, dict):
        raise SearchError("polyaxonfile: expected a YAML mapping at the top")
    version = doc.get("version")
    if doc.get("kind") in ("group", "experiment") or version in (1, "1") and "hptuning" in doc:
        spec = _parse_v0(doc, name)
    else:
        spec = _parse_v1(doc, name)
    if spec.concurrency < 1:
        raise SearchError("concurrency must be at least 1")
    if spec.n_runs is not None and spec.n_runs < 1:
        raise SearchError("the number of experiments must be at least 1")
    if spec.algorithm == "grid":
        for key, dist in spec.matrix.items():
            if not dist.discrete:
                raise SearchError(
                    f"matrix.{key}: {dist.kind} is continuous; a grid search needs discrete values (values, range, linspace, logspace, geomspace)"
                )
    used = {m.split(".")[0] for a in spec.args for m in _TEMPLATE.findall(a)}
    missing = sorted(used - set(spec.matrix) - set(spec.params) - {"globals"})
    if missing:
        raise SearchError(f"the command uses {', '.join('{{ ' + m + ' }}' for m in missing)} but nothing declares it")
    _check_matrix_used(spec)
    check_trial_count(spec)
    return spec


def _check_matrix_used(spec: SearchSpec) -> None:
    """Refuse a matrix parameter no training flag of the command takes: every trial would train
    without it, while the tables and best.json reported its values."""
    used = {m.split(".")[0] for a in without_output_flags(spec.args) for m in _TEMPLATE.findall(a)}
    unused = [k for k in spec.matrix if k not in used]
    if unused:
        s = "s" if len(unused) > 1 else ""
        raise SearchError(
            f"the command never uses matrix parameter{s} {', '.join(unused)}: every trial would train without it; "
            f"give it to a training flag (e.g. --{unused[0].replace('_', '-')}={{{{ {unused[0]} }}}}) "
            "or remove it from the matrix"
        )


def matrix_flags(spec: SearchSpec) -> list[str]:
    """The flags of the command (``--lr``) whose values come from the matrix: ``--lr={{ lr }}``
    or ``--lr {{ lr }}``."""
    args, flags = without_output_flags(spec.args), []
    for i, a in enumerate(args):
        if any(m.split(".")[0] in spec.matrix for m in _TEMPLATE.findall(a)):
            flag = (
                a.split("=", 1)[0] if a.startswith("--") else args[i - 1] if i and args[i - 1].startswith("--") else ""
            )
            if flag and flag not in flags:
                flags.append(flag)
    return flags


def check_trial_count(spec: SearchSpec) -> int:
    """The number of trials of ``spec``, counted before any is planned; a one-line
    ``SearchError`` past ``MAX_TRIALS``."""
    n = spec.n_trials
    if n > MAX_TRIALS:
        knob = "n_experiments" if spec.source_format == "v0" else "numRuns"
        what = "the grid" if spec.algorithm == "grid" else knob
        raise SearchError(
            f"the search has {n:,} trials; at most {MAX_TRIALS:,} run here: make {what} smaller"
            + (f" (or set {knob})" if spec.algorithm == "grid" else "")
        )
    return n


def read_polyaxonfile(path: str | Path) -> SearchSpec:
    """Read a polyaxonfile (2018 v0.x or current v1.1 format)."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError as e:
        raise SearchError(f"cannot read {p}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise SearchError(f"{p} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SearchError(f"{p} is not valid YAML{where}") from None
    return parse_polyaxonfile(doc, name=re.sub(r"[^a-z0-9-]+", "-", p.stem.lower()).strip("-") or "mnist")


def render(args: tuple[str, ...], values: Mapping[str, Any]) -> list[str]:
    """Fill ``{{ name }}`` templates in command arguments."""

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key.startswith("globals."):
            return ""
        if key not in values:
            raise SearchError(f"the command uses {{{{ {key} }}}} but nothing declares it")
        return str(values[key])

    return [_TEMPLATE.sub(sub, a) for a in args]


_INPUT_TYPES = {bool: "bool", int: "int", float: "float", str: "str"}


_OUTPUT_FLAGS = ("--output-dir", "--run-name")


def without_output_flags(args: tuple[str, ...] | list[str]) -> list[str]:
    """Drop --output-dir/--run-name (and their values): where runs go is decided by the runner."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a in _OUTPUT_FLAGS:
            skip = True
            continue
        if a.split("=", 1)[0] in _OUTPUT_FLAGS:
            continue
        out.append(a)
    return out


def write_v1(
    spec: SearchSpec,
    path: str | Path,
    *,
    image: str,
    extra_args: tuple[str, ...] = (),
    volumes: tuple[tuple[str, str, bool], ...] = (),
    output_dir: str = "{{ globals.run_outputs_path }}",
    run_name: str = "model",
) -> Path:
    """Write ``spec`` as a current polyaxonfile: an operation with a matrix whose job runs
    ``mnistkit-train`` in ``image`` with the spec's own flags. ``volumes`` are
    (PVC claim, mount path, read-only); each trial's run folder is ``output_dir/run_name``
    (Polyaxon fills ``{{ globals.* }}``)."""
    names = list(spec.matrix) + [k for k in spec.params if k not in spec.matrix]
    inputs = []
    for key in names:
        sample = spec.params.get(key)
        if key in spec.matrix:
            d = spec.matrix[key]
            sample = d.points()[0] if d.discrete else d.args[0]
        entry: dict[str, Any] = {"name": key, "type": _INPUT_TYPES.get(type(sample), "str")}
        if key not in spec.matrix:
            entry.update(value=spec.params[key], isOptional=True)
        inputs.append(entry)
    args = [*without_output_flags(spec.args), *extra_args, f"--output-dir={output_dir}", f"--run-name={run_name}"]
    container: dict[str, Any] = {"image": image, "command": ["mnistkit-train"], "args": args}
    job: dict[str, Any] = {"kind": "job", "container": container}
    if volumes:
        container["volumeMounts"] = [
            {"name": c, "mountPath": m, **({"readOnly": True} if ro else {})} for c, m, ro in volumes
        ]
        job["volumes"] = [{"name": c, "persistentVolumeClaim": {"claimName": c}} for c, _, _ in volumes]
    doc: dict[str, Any] = {"version": 1.1, "kind": "operation", "name": spec.name}
    if spec.algorithm in ("grid", "random"):
        doc["matrix"] = _v1_matrix(spec)
    doc["component"] = {"version": 1.1, "kind": "component", "name": "mnistkit-train", "inputs": inputs, "run": job}
    out = Path(path)
    with disk_errors(SearchError, f"cannot write {out}"):
        out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, yaml.safe_dump(doc, sort_keys=False), error=SearchError)
    return out


def _v1_matrix(spec: SearchSpec) -> dict[str, Any]:
    matrix: dict[str, Any] = {"kind": spec.algorithm}
    if spec.n_runs:
        matrix["numRuns"] = spec.n_runs
    matrix["concurrency"] = spec.concurrency
    if spec.algorithm == "random" and spec.seed is not None:
        matrix["seed"] = spec.seed
    matrix["params"] = {k: d.to_v1() for k, d in spec.matrix.items()}
    if spec.early_stopping:
        matrix["earlyStopping"] = [
            {"kind": "metric_early_stopping", "metric": e.metric, "value": e.value, "optimization": e.optimization}
            for e in spec.early_stopping
        ]
    return matrix
