"""Type checking of config values against the dataclasses' annotations: an unknown key names
the nearest valid one, a value of the wrong type names its key and the expected type, and no
NaN or infinity passes anywhere."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any

from jaxalign.errors import JaxalignError, short


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


def coerce(value, tp, key: str):
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
                return coerce(value, a, key)
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
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with a suggestion.

    A dataclass that sets ``CONFIG_LIST = True`` (e.g. the ``reward:`` section) also takes a
    non-empty list of mappings: the value is then a list of instances, and a bad key in entry
    ``i`` is named ``prefix[i].key``.
    """
    if isinstance(data, (list, tuple)) and getattr(cls, "CONFIG_LIST", False):
        if not data:
            raise JaxalignError(f"config key {prefix or '<root>'!r}: an empty list; expected a mapping "
                                "or a non-empty list of mappings")
        out = []
        for i, item in enumerate(data):
            if not isinstance(item, dict):
                raise JaxalignError(f"config key '{prefix}[{i}]': expected a mapping, got {short(item)}")
            out.append(from_dict(cls, item, f"{prefix}[{i}]"))
        return out
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
            raise unknown_keys_error([(key, _hint(k, fields, prefix, None), sorted(fields))])
        kwargs[k] = coerce(v, hints[k], key)
    return cls(**kwargs)


def _hint(k, fields, prefix: str, algorithm: str | None) -> str | None:
    """"did you mean ...?" for unknown key ``k`` among ``fields``: TRL's name for a jaxalign key
    (:mod:`jaxalign.config.trl`) first, else the nearest field name."""
    from jaxalign.config.trl import suggestion

    hint = suggestion(k, algorithm, f"{prefix}.{k}" if prefix else k) if isinstance(k, str) else None
    if hint is None:
        near = difflib.get_close_matches(str(k), sorted(fields), n=1, cutoff=0.5)
        hint = f"did you mean {(prefix + '.' if prefix else '') + near[0]!r}?" if near else None
    return hint


def dataclass_in(tp):
    """The dataclass in annotation ``tp`` (``X``, ``X | None``), or None."""
    return next((a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)), None)


def unknown_keys(cls, data, prefix: str = "", algorithm: str | None = None) -> list[tuple[str, str | None, list]]:
    """Every key of ``data`` (nested sections too) that dataclass ``cls`` does not have, as
    ``(dotted key, hint or None, the valid keys there)``; values are not checked here."""
    if not isinstance(data, dict):
        return []
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    out = []
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            out.append((key, _hint(k, fields, prefix, algorithm), sorted(fields)))
            continue
        sub = dataclass_in(hints[k])
        if sub is None:
            continue
        if isinstance(v, list) and getattr(sub, "CONFIG_LIST", False):
            for i, item in enumerate(v):
                out += unknown_keys(sub, item, f"{key}[{i}]", algorithm)
        else:
            out += unknown_keys(sub, v, key, algorithm)
    return out


def unknown_keys_error(problems: list, algorithm: str | None = None) -> JaxalignError:
    """One line for the unknown keys of :func:`unknown_keys`: one key keeps its hint and the
    valid keys beside it; several are listed together (a TRL-style file has many)."""
    if len(problems) == 1:
        key, hint, valid = problems[0]
        if hint is not None and hint.startswith("TRL's"):
            return JaxalignError(f"config key {key!r}: {hint}")
        return JaxalignError(f"unknown config key {key!r}{'; ' + hint if hint else ''} (valid here: "
                             f"{', '.join(valid)})")
    parts = [f"{key!r}{f' ({hint})' if hint else ''}" for key, hint, _ in problems]
    where = f"`jaxalign {algorithm} --help`" if algorithm else "`jaxalign <algorithm> --help`"
    return JaxalignError(f"{len(problems)} unknown config keys: {'; '.join(parts)} ({where} lists every key)")
