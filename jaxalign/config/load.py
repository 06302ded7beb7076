"""``load_config``: YAML file + dotted ``key=value`` overrides -> a validated :class:`RunConfig`."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import yaml

from jaxalign.algorithms import registry
from jaxalign.config.checks import check_values
from jaxalign.config.coerce import from_dict, unknown_keys, unknown_keys_error
from jaxalign.config.schema import RunConfig
from jaxalign.config.yaml_io import yaml_load
from jaxalign.errors import JaxalignError, warn


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise JaxalignError(f"override {item!r}: expected key=value (e.g. optim.lr=1e-4)")
    key, raw = item.split("=", 1)
    try:
        value = yaml_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _warn_steps_and_epochs(raw_train, cfg: RunConfig) -> None:
    """``train.steps`` wins over ``train.epochs``; say so when the user set both (in the file or
    an override: ``raw_train`` is the section as written; the default epochs=1 says nothing),
    since the epochs would be silently ignored."""
    if not isinstance(raw_train, dict) or raw_train.get("epochs") is None or cfg.train.steps is None:
        return
    warn(f"train.steps={cfg.train.steps} and train.epochs={cfg.train.epochs} are both set; "
         f"train.steps wins (the run makes {cfg.train.steps} steps whatever the data size) and "
         "train.epochs is ignored")


def _note(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr, flush=True)


def _read(path: Path) -> dict:
    try:
        raw = yaml_load(path.read_text(encoding="utf-8")) or {}
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
    return raw


def _set(raw: dict, keys: list, value, what: str) -> None:
    node = raw
    for k in keys[:-1]:
        if node.get(k) is None:  # absent, or an empty section (`optim:` in YAML)
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise JaxalignError(f"{what}: {k!r} is not a section")
    node[keys[-1]] = value


def _has(raw: dict, keys: list) -> bool:
    node = raw
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return False
        node = node[k]
    return True


def _trl_names(raw: dict, algorithm: str, note) -> None:
    """Move the top-level TRL names whose meaning is a jaxalign key's to that key (a note each);
    the others stay, and are reported with the unknown keys."""
    from jaxalign.config import trl

    own = {f.name for f in dataclasses.fields(RunConfig) if f.init}
    for name in [k for k in raw if isinstance(k, str) and k in trl.TRL_NAMES and k not in own]:
        if trl.refusal(name, algorithm) is not None:
            continue
        keys, value = trl.accept(name, raw.pop(name), algorithm, note)
        if _has(raw, keys):
            raise JaxalignError(f"config keys {name!r} (TRL's name for {'.'.join(keys)}) and "
                                f"{'.'.join(keys)!r} are both set; keep one")
        _set(raw, keys, value, f"config key {name!r}")


def load_config(path: str | Path | None, overrides=(), algorithm: str | None = None, note=None) -> RunConfig:
    """Load a YAML run config, apply ``key=value`` overrides, and validate everything.

    TRL's names of jaxalign keys (:mod:`jaxalign.config.trl`) are read as those keys, as the
    YAML's top-level keys or as overrides, each announced through ``note`` (default: a
    ``note:`` line on stderr). Every unknown key is reported in one error. Nothing here imports
    JAX, Flax or transformers: the sections come from ``jaxalign/algorithms/sections/``.
    """
    note = note or _note
    raw: dict = _read(Path(path)) if path is not None else {}
    parsed = [(item, *_parse_override(item)) for item in overrides]
    chosen = next((v for _, k, v in reversed(parsed) if k == ["algorithm"]), raw.get("algorithm"))
    if algorithm is not None:
        if chosen is not None and chosen != algorithm:
            raise JaxalignError(f"config says algorithm: {chosen!r} but the command is 'jaxalign {algorithm}'")
        chosen = algorithm
    alg = "sft" if chosen is None else chosen
    if not isinstance(alg, str) or alg not in registry.ALGORITHMS:
        raise JaxalignError(f"unknown algorithm {alg!r} (known: {', '.join(sorted(registry.names()))})")
    _trl_names(raw, alg, note)
    from jaxalign.config import trl

    for item, keys, value in parsed:
        if len(keys) == 1 and keys[0] in trl.TRL_NAMES and keys[0] not in RunConfig.__dataclass_fields__:
            keys, value = trl.accept(keys[0], value, alg, note)
        _set(raw, keys, value, f"override {item!r}")
    raw["algorithm"] = alg
    row = registry.get(alg)
    algo_raw = raw.pop(row.section, None)
    # Every unknown key at once (a TRL-style file has several), before any value is checked.
    problems = unknown_keys(RunConfig, raw, "", alg) + unknown_keys(row.config_class, algo_raw, row.section, alg)
    if problems:
        raise unknown_keys_error(problems, alg)
    cfg = from_dict(RunConfig, raw)
    cfg.algo = from_dict(row.config_class, algo_raw, row.section)
    check_values(cfg)
    check = getattr(cfg.algo, "validate", None)
    if check is not None:
        check(cfg)
    _warn_steps_and_epochs(raw.get("train"), cfg)
    return cfg


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config (every default filled in) as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
