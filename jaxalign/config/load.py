"""``load_config``: YAML file + dotted ``key=value`` overrides -> a validated :class:`RunConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from jaxalign.algorithms import registry
from jaxalign.config.checks import check_values
from jaxalign.config.coerce import from_dict
from jaxalign.config.schema import RunConfig
from jaxalign.config.yaml_io import yaml_load
from jaxalign.errors import JaxalignError


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
    import sys

    # On stderr as the train loop's warnings (also with --quiet), one line.
    print(f"warning: train.steps={cfg.train.steps} and train.epochs={cfg.train.epochs} are both set; "
          f"train.steps wins (the run makes {cfg.train.steps} steps whatever the data size) and "
          "train.epochs is ignored", file=sys.stderr, flush=True)


def load_config(path: str | Path | None, overrides=(), algorithm: str | None = None) -> RunConfig:
    """Load a YAML run config, apply ``key=value`` overrides, and validate everything."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
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
    if not isinstance(alg, str) or alg not in registry.ALGORITHMS:
        raise JaxalignError(f"unknown algorithm {alg!r} (known: {', '.join(sorted(registry.names()))})")
    row = registry.get(alg)
    algo_raw = raw.pop(row.section, None)
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
