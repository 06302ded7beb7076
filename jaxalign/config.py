"""Run configuration: dataclasses loaded from YAML, dotted ``key=value`` overrides, strict checks.

An unknown key is an error that names it and suggests the nearest valid key; a value of the
wrong type names the key and the expected type. Each algorithm contributes the dataclass of
its own section (``sft:``, ``dpo:``, ...) through :func:`register_algorithm`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from jaxalign.errors import JaxalignError


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain data only: no Python objects, no code) that also refuses a
    key given twice in one mapping, which plain YAML loading resolves by silently keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_QUOTED_OR_COMMENT = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*')
_MAX_NESTING = 64


def _nesting(text: str) -> int:
    """Deepest ``[``/``{`` nesting outside quotes and comments (PyYAML's scanner is quadratic in
    it, so a pathological file is refused before parsing)."""
    depth = best = 0
    for ch in _QUOTED_OR_COMMENT.sub("", text):
        if ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth = max(depth - 1, 0)
    return best


_MAX_VALUES = 100_000


def _expanded_size(value, memo: dict) -> int:
    """Values in ``value`` with every YAML alias expanded, computed once per shared container."""
    if not isinstance(value, (list, dict)):
        return 1
    if id(value) not in memo:
        memo[id(value)] = 0  # a cycle (a recursive alias) counts once
        children = list(value.keys()) + list(value.values()) if isinstance(value, dict) else value
        memo[id(value)] = 1 + sum(_expanded_size(v, memo) for v in children)
    return memo[id(value)]


def _yaml_load(text: str):
    """Parse YAML as plain data (``SafeLoader`` rules, duplicate keys refused; no deeper than 64
    brackets, and aliases may not expand to more than 100,000 values: a "billion laughs"
    document would make every later walk or message over it exponential)."""
    if _nesting(text) > _MAX_NESTING:
        raise yaml.YAMLError("nested too deeply")
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    if _expanded_size(data, {}) > _MAX_VALUES:
        raise yaml.YAMLError(f"aliases expand to more than {_MAX_VALUES:,} values")
    return data


def short(value, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters, without walking all of a huge value."""
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 3, 6, 6, limit, limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclasses.dataclass
class ModelSpec:
    """Which model to train. ``path``: HF dir, .gguf or alias; or ``init: random`` + ``config``."""

    path: str | None = None
    init: str = "pretrained"  # pretrained | random
    config: dict | None = None  # ModelConfig fields, for init=random
    tokenizer: str | None = None  # default: the model path
    dtype: str = "float32"  # compute dtype; parameters stay in param_dtype (master weights)
    param_dtype: str = "float32"
    remat: bool = False  # rematerialise each decoder block in the backward pass


@dataclasses.dataclass
class DataConfig:
    train: str | None = None
    eval: str | None = None
    format: str = "auto"
    max_length: int = 512
    max_prompt_length: int = 256
    prompt_overflow: str = "truncate_left"  # truncate_left | drop | error
    skip_invalid_rows: bool = False
    buckets: str | list | None = "pow2"
    eval_fraction: float = 0.0  # held out from train when no eval file is given


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-5
    schedule: str = "cosine"  # constant | cosine | linear
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float | None = 1.0


@dataclasses.dataclass
class TrainConfig:
    steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 8  # global, in examples
    micro_batch_size: int | None = None  # gradient accumulation when smaller than batch_size
    eval_every: int = 0
    eval_at_start: bool = False  # also evaluate before the first step (a baseline for the curves)
    eval_batches: int | None = None
    log_every: int = 1
    save_every: int = 0
    keep_checkpoints: int = 2
    save_final: bool = True
    plots: bool = True
    max_nonfinite_steps: int = 10  # consecutive skipped (NaN/Inf) steps before the run stops
    preflight: bool = True  # compile the step first and refuse a run that cannot fit in memory
    device_memory_limit: int | str | None = None  # bytes or "16GiB"; default: the device's own limit


@dataclasses.dataclass
class MeshSpec:
    data: int = 1
    fsdp: int = -1
    tensor: int = 1


@dataclasses.dataclass
class RunConfig:
    algorithm: str = "sft"
    seed: int = 0
    run_dir: str | None = None
    quiet: bool = False
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshSpec = dataclasses.field(default_factory=MeshSpec)
    # The algorithm's own dataclass, filled from the section named after it (e.g. `dpo:`).
    algo: Any = dataclasses.field(default=None, init=False)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        algo = d.pop("algo")
        d[self.algorithm.replace("-", "_")] = algo
        return d


_ALGORITHMS: dict[str, type] = {}


def register_algorithm(name: str, cls: type) -> None:
    """Make ``cls`` the dataclass of the ``name:`` section of a run config."""
    _ALGORITHMS[name] = cls


def algorithm_names() -> list[str]:
    return sorted(_ALGORITHMS)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _finite(value, key: str):
    """``value``; a NaN or infinite float is an error (no config value means either)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float) and not math.isfinite(value):
        raise JaxalignError(f"config key {key!r}: must be a finite number, got {value}")
    return value


def _finite_deep(value, key: str, _seen=None):
    """``value``; a NaN or infinite float anywhere inside a list or mapping is an error. (Each
    container is visited once: YAML aliases share them, and a "billion laughs" document would
    otherwise be walked exponentially often.)"""
    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return value
    seen.add(id(value))
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for k, v in items:
        if isinstance(v, float) and not math.isfinite(v):
            raise JaxalignError(f"config key {key!r}: must hold finite numbers, got {v} at {k!r}")
        if isinstance(v, (list, tuple, dict)):
            _finite_deep(v, key, seen)
    return value


def _coerce(value, tp, key: str):
    """Check ``value`` against annotation ``tp`` (int -> float allowed); return it."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        if float in args:
            _finite(value, key)
        _finite_deep(value, key)
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except JaxalignError as e:
                errors.append(e)
        names = " or ".join(_type_name(a) for a in args)
        raise JaxalignError(f"config key {key!r}: expected {names}, got {short(value)}")
    if tp is Any:
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise JaxalignError(f"config key {key!r}: expected a list, got {short(value)}")
        return list(_finite_deep(value, key))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise JaxalignError(f"config key {key!r}: expected a mapping, got {short(value)}")
        return _finite_deep(value, key)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite(float(value), key)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "1e-5" (no dot) as a string; accept any float literal.
        try:
            return _finite(float(value), key)
        except ValueError:
            pass
    if tp is int and isinstance(value, bool):
        raise JaxalignError(f"config key {key!r}: expected int, got {short(value)}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise JaxalignError(f"config key {key!r}: expected {_type_name(tp)}, got {short(value)}")
    return value


def from_dict(cls, data, prefix: str = ""):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with a suggestion."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise JaxalignError(f"config key {prefix or '<root>'!r}: expected a mapping, got {short(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            near = difflib.get_close_matches(str(k), sorted(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {(prefix + '.' if prefix else '') + near[0]!r}?" if near else ""
            valid = ", ".join(sorted(fields))
            raise JaxalignError(f"unknown config key {key!r}{hint} (valid here: {valid})")
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise JaxalignError(f"override {item!r}: expected key=value (e.g. optim.lr=1e-4)")
    key, raw = item.split("=", 1)
    try:
        value = _yaml_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None, overrides=(), algorithm: str | None = None) -> RunConfig:
    """Load a YAML run config, apply ``key=value`` overrides, and validate everything."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        try:
            raw = _yaml_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise JaxalignError(f"{path}: config file not found") from None
        except IsADirectoryError:
            raise JaxalignError(f"{path}: is a directory, not a config file") from None
        except UnicodeDecodeError as e:
            raise JaxalignError(f"{path}: not UTF-8 text (byte {e.start})") from None
        except OSError as e:
            raise JaxalignError(f"{path}: cannot read the config file ({e.strerror or e})") from None
        except yaml.YAMLError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or (lines[0] if lines else type(e).__name__)
            raise JaxalignError(f"{path}: not valid YAML{where} ({problem})") from None
        if not isinstance(raw, dict):
            raise JaxalignError(f"{path}: the top level must be a mapping")
    for item in overrides:
        keys, value = _parse_override(item)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise JaxalignError(f"override {item!r}: {k!r} is not a section")
        node[keys[-1]] = value
    if algorithm is not None:
        file_alg = raw.get("algorithm")
        if file_alg is not None and file_alg != algorithm:
            raise JaxalignError(
                f"config says algorithm: {file_alg!r} but the command is 'jaxalign {algorithm}'"
            )
        raw["algorithm"] = algorithm
    alg = raw.get("algorithm", "sft")
    if alg not in _ALGORITHMS:
        raise JaxalignError(f"unknown algorithm {alg!r} (known: {', '.join(algorithm_names())})")
    section = alg.replace("-", "_")
    algo_raw = raw.pop(section, None)
    cfg = from_dict(RunConfig, raw)
    cfg.algo = from_dict(_ALGORITHMS[alg], algo_raw, section)
    from jaxalign.config_checks import check_values

    check_values(cfg)
    check = getattr(cfg.algo, "validate", None)
    if check is not None:
        check(cfg)
    return cfg


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config (every default filled in) as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
