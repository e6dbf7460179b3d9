"""Search spaces as YAML data, and the one interpreter that turns them into Optuna define-by-run functions.

A space file (format in docs/spaces.md)::

    sources: ["Gulrajani et al. 2017 (WGAN-GP)"]
    params:
      loss: {choice: [hinge, wgan_gp]}
      lr_g: {float: [1.0e-5, 1.0e-3], log: true}
      gp_lambda: {float: [1, 20], when: {loss: wgan_gp}}
      z_dim: 128

Parameters are sampled in file order, so a `when` may only name earlier parameters; a parameter whose
condition is false is neither suggested nor present in the config. Everything is checked when the file is
loaded, and every problem is one `SpaceError` line naming the file, the line, the key and the value.
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Values Optuna can store for a categorical parameter (and Ray can put in a config untouched).
Scalar = str | int | float | bool | None

KINDS = ("choice", "float", "int", "value")
OPTIONS = {
    "choice": ("when",),
    "float": ("log", "step", "when"),
    "int": ("log", "step", "when"),
    "value": ("when",),
}
TOP_LEVEL_KEYS = ("sources", "params", "description")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # a TrainConfig field; also keeps Ray's "/" nesting out


class SpaceError(ValueError):
    """A malformed space file. The message is one line: `file:line: key: problem (value)`."""


# --- YAML loading -------------------------------------------------------------------------------------------


class _Map(dict):
    """A YAML mapping that remembers the (1-based) line of each key, for error messages."""

    lines: dict[Any, int]


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last) and reads `1e-4` as a float
    (YAML 1.1 needs `1.0e-4`; a learning rate that silently loads as a string is a trap)."""


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    data = _Map()
    data.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool | type(None)):
            raise yaml.constructor.ConstructorError(
                None, None, f"unhashable key {key!r}", key_node.start_mark
            )
        if key in data:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        data[key] = loader.construct_object(value_node, deep=True)
        data.lines[key] = key_node.start_mark.line + 1
    return data


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _read_yaml(path: Path, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        source = text.splitlines()[line - 1].strip() if 0 < line <= len(text.splitlines()) else ""
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise SpaceError(f"{path}:{line}: malformed YAML: {problem} (near {source!r})") from None
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: malformed YAML: {' '.join(str(exc).split())}") from None


# --- one parameter -------------------------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    """Equality without Python's True == 1 or 1 == "1": a condition on a bool matches only bools."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return a == b
    return type(a) is type(b) and a == b


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


@dataclass(frozen=True)
class Branch:
    """One domain of a parameter: a choice, a float or int range, or a constant (`value`), under `when`."""

    kind: str
    choices: tuple[Scalar, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    value: Any = None
    when: tuple[tuple[str, tuple[Scalar, ...]], ...] = ()

    @property
    def sampled(self) -> bool:
        return self.kind != "value"

    def matches(self, config: dict[str, Any]) -> bool:
        """True when every `when` key is present in `config` with one of its allowed values."""
        return all(
            key in config and any(_same(config[key], v) for v in allowed) for key, allowed in self.when
        )

    def can_take(self, x: Any) -> bool:
        if self.kind == "choice":
            return any(_same(x, c) for c in self.choices)
        if self.kind == "value":
            return _same(x, self.value)
        if not _is_number(x) or not self.low <= x <= self.high:
            return False
        if self.kind == "int":
            return isinstance(x, int) and (x - int(self.low)) % int(self.step or 1) == 0
        if self.step:
            k = (x - self.low) / self.step
            return abs(k - round(k)) < 1e-9
        return True

    def suggest(self, name: str, trial: Any) -> Any:
        """The value for this trial: `trial` is an optuna.Trial, Ray's wrapper of one, or `_SeededTrial`."""
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(
                name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return copy.deepcopy(self.value)  # a constant list must not be shared between trial configs

    def domain(self) -> tuple:
        """What Optuna records for the parameter name (it refuses a different one in the same study)."""
        return (self.kind, self.choices, self.low, self.high, self.log, self.step)

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice: {list(self.choices)}"
        if self.kind == "value":
            return f"value: {self.value!r}"
        extra = (", log" if self.log else "") + (f", step {self.step:g}" if self.step else "")
        return f"{self.kind}: [{self.low:g}, {self.high:g}]{extra}"


@dataclass(frozen=True)
class Param:
    """One entry of `params:`: one branch, or several (`cases:`) of which the first whose `when` holds is used."""

    name: str
    line: int
    branches: tuple[Branch, ...]

    @property
    def sampled(self) -> bool:
        """True when some branch asks Optuna for a value (False for a constant, conditional or not)."""
        return any(b.sampled for b in self.branches)

    @property
    def conditional(self) -> bool:
        """True when the parameter's presence or domain depends on earlier parameters."""
        return any(b.when for b in self.branches)

    def branch(self, config: dict[str, Any]) -> Branch | None:
        """The branch that applies given the earlier values in `config`; None: the parameter is absent."""
        return next((b for b in self.branches if b.matches(config)), None)

    def can_take(self, x: Any) -> bool:
        """True when some branch can produce `x` (what a `when` on this parameter may name). Whether a whole
        config fits, branch by branch, is `Space.fit`."""
        return any(b.can_take(x) for b in self.branches)

    def describe(self) -> str:
        return " | ".join(b.describe() for b in self.branches)


class _Spec:
    """Turns one raw `params:` entry into a `Param`, raising `SpaceError` lines for what is wrong with it."""

    def __init__(self, path: Path, name: Any, line: int, earlier: dict[str, Param], later: set[str]):
        self.path, self.name, self.line = path, name, line
        self.earlier, self.later = earlier, later

    def fail(self, problem: str, raw: Any = None, key: str | None = None) -> SpaceError:
        line = raw.lines.get(key, self.line) if key is not None and isinstance(raw, _Map) else self.line
        return SpaceError(f"{self.path}:{line}: {self.name}: {problem}")

    def build(self, raw: Any) -> Param:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise self.fail(f"parameter name must be an identifier (a TrainConfig field), got {self.name!r}")
        if not isinstance(raw, dict):
            return Param(self.name, self.line, (Branch("value", value=raw),))  # plain constant
        if "cases" not in raw:
            return Param(self.name, self.line, (self._branch(raw, ""),))
        if len(raw) != 1:
            extra = next(k for k in raw if k != "cases")
            raise self.fail(
                f"unknown key {extra!r} (value {raw[extra]!r}) beside cases; put it in each case", raw, extra
            )
        cases = raw["cases"]
        if not isinstance(cases, list) or not cases:
            raise self.fail(f"cases must be a non-empty list of parameter specs, got {cases!r}", raw, "cases")
        branches = []
        for i, case in enumerate(cases, 1):
            if not isinstance(case, dict):
                raise self.fail(
                    f"case {i} must be a spec mapping (write a constant as value: X), got {case!r}",
                    raw,
                    "cases",
                )
            branches.append(self._branch(case, f"case {i}: "))
        for i, b in enumerate(branches[:-1], 1):
            if not b.when:
                raise self.fail(f"case {i} has no when, so the cases after it are never used", raw, "cases")
        domains = {b.domain(): b for b in branches if b.sampled}
        if len(domains) > 1:
            a, b = list(domains.values())[:2]
            raise self.fail(
                f"cases sample different domains ({a.describe()} vs {b.describe()}); Optuna keeps one distribution "
                "per parameter name in a study: sample one shared domain and make the other cases constants",
                raw,
                "cases",
            )
        return Param(self.name, self.line, tuple(branches))

    def _branch(self, raw: dict, where: str) -> Branch:
        kinds = [k for k in KINDS if k in raw]
        if len(kinds) != 1:
            found = f"found {kinds}" if kinds else f"found keys {list(raw)}"
            raise self.fail(
                f"{where}needs exactly one of {', '.join(KINDS)}; {found} (write a constant mapping as value: {{...}})",
                raw,
            )
        kind = kinds[0]
        for key, val in raw.items():
            if key != kind and key not in OPTIONS[kind]:
                allowed = ", ".join((kind, *OPTIONS[kind]))
                raise self.fail(
                    f"{where}unknown key {key!r} (value {val!r}); allowed with {kind}: {allowed}", raw, key
                )
        when = self._when(raw, where)
        body = raw[kind]
        if kind == "value":
            return Branch(kind, value=body, when=when)
        if kind == "choice":
            return Branch(kind, choices=self._choices(raw, body, where), when=when)
        low, high, log, step = self._range(raw, kind, body, where)
        return Branch(kind, low=low, high=high, log=log, step=step, when=when)

    def _choices(self, raw: dict, body: Any, where: str) -> tuple[Scalar, ...]:
        if not isinstance(body, list):
            raise self.fail(f"{where}choice must be a list, got {body!r}", raw, "choice")
        if not body:
            raise self.fail(f"{where}empty choice list (value [])", raw, "choice")
        for i, c in enumerate(body):
            if not isinstance(c, Scalar):
                raise self.fail(
                    f"{where}choice values must be str, number, bool or null, got {c!r}", raw, "choice"
                )
            if any(_same(c, d) for d in body[:i]):
                raise self.fail(f"{where}duplicate choice {c!r} in {body!r}", raw, "choice")
        return tuple(body)

    def _range(self, raw: dict, kind: str, body: Any, where: str) -> tuple[float, float, bool, float | None]:
        number_ok = (
            (lambda x: isinstance(x, int) and not isinstance(x, bool)) if kind == "int" else _is_number
        )
        if not (isinstance(body, list) and len(body) == 2 and all(number_ok(x) for x in body)):
            raise self.fail(f"{where}{kind} must be [low, high] with {kind} bounds, got {body!r}", raw, kind)
        low, high = body
        if low > high:
            raise self.fail(f"{where}low > high in {kind}: {body!r}", raw, kind)
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise self.fail(f"{where}log must be true or false, got {log!r}", raw, "log")
        if log and low <= 0:
            raise self.fail(f"{where}log range needs low > 0, got {kind}: {body!r}", raw, kind)
        step = raw.get("step")
        if step is not None:
            if not number_ok(step) or step <= 0:
                raise self.fail(f"{where}step must be a positive {kind}, got {step!r}", raw, "step")
            if log and step != 1:
                raise self.fail(
                    f"{where}step {step!r} cannot be combined with log: true (Optuna refuses it)", raw, "step"
                )
            k = (high - low) / step
            if abs(k - round(k)) > 1e-9:
                raise self.fail(
                    f"{where}range {body!r} is not a whole number of steps of {step!r}", raw, "step"
                )
        return low, high, log, step

    def _when(self, raw: dict, where: str) -> tuple[tuple[str, tuple[Scalar, ...]], ...]:
        when = raw.get("when")
        if when is None:
            return ()
        if not isinstance(when, dict) or not when:
            raise self.fail(
                f"{where}when must be a non-empty mapping {{parameter: value or [values]}}, got {when!r}",
                raw,
                "when",
            )
        out = []
        for key, allowed in when.items():
            values = allowed if isinstance(allowed, list) else [allowed]
            if key in self.later or key == self.name:
                raise self.fail(
                    f"{where}when refers to {key!r} (value {allowed!r}), which is defined later; "
                    "conditions may only use earlier parameters",
                    raw,
                    "when",
                )
            if key not in self.earlier:
                raise self.fail(
                    f"{where}when refers to unknown parameter {key!r} (value {allowed!r})", raw, "when"
                )
            if not values:
                raise self.fail(f"{where}when {key}: empty list of allowed values", raw, "when")
            target = self.earlier[key]
            for v in values:
                if not isinstance(v, Scalar):
                    raise self.fail(f"{where}when {key}: values must be scalars, got {v!r}", raw, "when")
                if not target.can_take(v):
                    raise self.fail(
                        f"{where}when {key} = {v!r}, a value {key!r} never takes ({target.describe()})",
                        raw,
                        "when",
                    )
            out.append((key, tuple(values)))
        return tuple(out)


# --- the space -----------------------------------------------------------------------------------------------


class _SeededTrial:
    """The three `optuna.Trial.suggest_*` calls the interpreter makes, drawn uniformly (log-uniformly with
    `log`) from `random.Random(seed)`, the way Optuna's RandomSampler draws them: sampling without Ray or a study."""

    def __init__(self, seed: int):
        self._rng = random.Random(seed)

    def suggest_categorical(self, name: str, choices: list[Scalar]) -> Scalar:
        return self._rng.choice(choices)

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ):
        if log:
            x = math.exp(self._rng.uniform(math.log(low), math.log(high)))
        elif step:
            x = round(low + step * self._rng.randint(0, round((high - low) / step)), 12)
        else:
            x = self._rng.uniform(low, high)
        return float(min(max(x, low), high))  # exp(log(x)) can overshoot by one ulp

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        if log:  # Optuna widens by half a unit each side so that the end points are as likely as the rest
            x = round(math.exp(self._rng.uniform(math.log(low - 0.5), math.log(high + 0.5))))
            return min(max(x, low), high)
        return low + step * self._rng.randint(0, (high - low) // step)


@dataclass(frozen=True)
class Fit:
    """How a space expresses one config (`Space.fit`)."""

    point: dict[str, Any]  # the sampled values that reproduce it (what Optuna is told)
    misfits: tuple[str, ...]  # sampled values the space cannot take: the config is not a point of it
    overridden: tuple[str, ...]  # constants of the space the config differs from (a preset runs as written)


def _old_spellings(config: dict[str, Any]) -> dict[str, tuple[Any, tuple[str, ...]]]:
    from trainers.config import legacy_spelling  # lazy: loading and sampling a space needs no torch

    return legacy_spelling(config)


@dataclass(frozen=True)
class Space:
    """A loaded, checked space file. Picklable (Ray pickles the searcher, and so `define_by_run`)."""

    path: Path
    sha256: str
    sources: tuple[str, ...]
    description: str
    params: tuple[Param, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Every parameter name, constants included, in file order."""
        return tuple(p.name for p in self.params)

    @property
    def sampled(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.sampled)

    @property
    def conditional(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.conditional)

    def define_by_run(self, trial: Any) -> dict[str, Any]:
        """Optuna define-by-run function for `OptunaSearch(space=space.define_by_run)`.

        Calls `trial.suggest_*` for each sampled parameter whose condition holds, in file order, and returns the
        complete config: sampled values and constants. Ray 2.60 builds the trial config as
        `{**captured_suggestions, **returned}` (optuna_search.py, `_suggest_from_define_by_run_func`), so
        returning everything makes the trial config exactly this dict, whatever the merge order.
        """
        config: dict[str, Any] = {}
        for p in self.params:
            branch = p.branch(config)
            if branch is not None:
                config[p.name] = branch.suggest(p.name, trial)
        return config

    def sample(self, seed: int) -> dict[str, Any]:
        """One full config drawn uniformly (seeded, no Ray, no Optuna study): the same code path as Ray's."""
        return self.define_by_run(_SeededTrial(seed))

    def fit(self, config: dict[str, Any]) -> Fit:
        """How this space expresses `config` (e.g. a preset's `TrainConfig.to_dict()`): the one answer to "does
        a preset fit the space", for warm starts (`params_for`) and the search's presets alike.

        Walks the parameters in file order, following each `when` with the config's own values. Where the
        config's value has an old spelling the trainer still reads (`trainers.config.legacy_spelling`, e.g.
        `d_norm: spectral` for no norm + spectral weights) and the space names none of the keys that the
        spelling also sets, the space is read in that spelling: that is how it samples such a config.
        Keys the space does not set are not checked.
        """
        spelled = _old_spellings(config)
        point: dict[str, Any] = {}
        seen: dict[str, Any] = {}
        misfits: list[str] = []
        overridden: list[str] = []
        for p in self.params:
            branch = p.branch(seen)
            if branch is None:
                continue
            where = f"{self.path}:{p.line}: {p.name}"
            if p.name not in config:
                misfits.append(f"{where}: the config has no value for it (the space sets it)")
                continue
            value = config[p.name]
            old = spelled.get(p.name)
            if old is not None and not set(old[1]) & set(self.names):
                value = old[0]
            seen[p.name] = value
            if not branch.can_take(value):
                problem = f"{where}: value {value!r} is outside the space here ({branch.describe()})"
                (misfits if branch.sampled else overridden).append(problem)
            elif branch.sampled:
                point[p.name] = value
        return Fit(point=point, misfits=tuple(misfits), overridden=tuple(overridden))

    def params_for(self, config: dict[str, Any]) -> dict[str, Any]:
        """The sampled parameters that make a trial of this space reproduce `config`, for
        `study.enqueue_trial` / `OptunaSearch(points_to_evaluate=[...])`.

        Raises `SpaceError` naming the key and value when the space cannot produce `config` (`fit`): a value
        outside the domain of its branch, or a different constant.
        """
        fit = self.fit(config)
        problems = fit.misfits + fit.overridden
        if problems:
            raise SpaceError(problems[0])
        return fit.point

    def summary(self) -> str:
        return (
            f"{len(self.params)} parameters, {len(self.sampled)} sampled, {len(self.conditional)} conditional"
        )


def load_space(path: str | Path) -> Space:
    """Read and check a space file. Raises `SpaceError` (one line: file, line, key, value) on any problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read space file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpaceError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    doc = _read_yaml(path, text)
    if not isinstance(doc, dict):
        raise SpaceError(
            f"{path}:1: a space file is a mapping with sources: and params:, got {type(doc).__name__}"
        )
    lines = doc.lines if isinstance(doc, _Map) else {}
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            raise SpaceError(
                f"{path}:{lines.get(key, 1)}: unknown top-level key {key!r}; allowed: {', '.join(TOP_LEVEL_KEYS)}"
            )
    sources = doc.get("sources")
    if not (isinstance(sources, list) and sources and all(isinstance(s, str) and s.strip() for s in sources)):
        raise SpaceError(
            f"{path}:{lines.get('sources', 1)}: sources: must be a non-empty list of strings naming where the "
            f"ranges come from (paper, report), got {sources!r}"
        )
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise SpaceError(f"{path}:{lines['description']}: description: must be a string, got {description!r}")
    raw_params = doc.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise SpaceError(
            f"{path}:{lines.get('params', 1)}: params: must be a non-empty mapping, got {raw_params!r}"
        )
    param_lines = raw_params.lines if isinstance(raw_params, _Map) else {}
    earlier: dict[str, Param] = {}
    later = set(raw_params)
    for name, raw in raw_params.items():
        later.discard(name)
        earlier[name] = _Spec(path, name, param_lines.get(name, 0), earlier, later).build(raw)
    return Space(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        sources=tuple(sources),
        description=description,
        params=tuple(earlier.values()),
    )
