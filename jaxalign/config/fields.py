"""Each config key's meaning, read from its dataclass's docstring, and the key listing of
``jaxalign <algorithm> --help``.

A config dataclass documents its fields in its docstring as an attribute list: ``name: meaning``
at the start of a line (or after ``. `` / ``; `` on the same line), several names sharing one
meaning as ``a / b:`` or ``a, b:``. That list is the one place a meaning is written: the help
is generated from it, and ``tests/config/test_fields.py`` fails when a field has none. (Under
``python -OO`` docstrings are stripped and the listing shows keys and defaults only.)
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
import typing

from jaxalign.config.coerce import dataclass_in

_ENTRY = re.compile(r"(?:^[ \t]*|(?<=[.;]) +)(?P<names>[a-z_][a-z0-9_]*(?:\s*[/,]\s*[a-z_][a-z0-9_]*)*):\s",
                    re.M)
_RST = re.compile(r":\w+:`~?([^`]+)`|``([^`]*)``")


def _clean(text: str) -> str:
    return " ".join(_RST.sub(lambda m: m.group(1) or m.group(2), text).split())


def field_help(cls) -> dict[str, str]:
    """``{field: meaning}`` from the attribute lists of ``cls``'s docstring and its bases' (a
    subclass's entry wins); fields without an entry are absent."""
    fields = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = klass.__dict__.get("__doc__") or ""
        found = [(m, [n.strip() for n in re.split(r"[/,]", m.group("names")) if n.strip() in fields])
                 for m in _ENTRY.finditer(doc)]
        found = [(m, names) for m, names in found if names]
        for i, (m, names) in enumerate(found):
            end = found[i + 1][0].start() if i + 1 < len(found) else len(doc)
            text = _clean(doc[m.end():end]).rstrip(";,")
            for n in names:
                out[n] = text
    return out


def short(text: str, limit: int = 72) -> str:
    """The first sentence of ``text``, at most ``limit`` characters."""
    m = re.search(r"(?<!e\.g)(?<!i\.e)(?<!Dr)\.(\s|$)", text)
    first = (text[:m.start() + 1] if m else text).rstrip(";, ")
    return first if len(first) <= limit else first[:limit - 1].rstrip() + "…"


def _yaml_value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return repr(v) if v == "" or v.strip() != v else v
    return str(v)


def config_keys(cls, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, default as YAML, meaning)`` for every field of dataclass ``cls``; a field
    that is itself a section (a nested dataclass) is followed by its own keys."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        sub = dataclass_in(hints[f.name])
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        if sub is not None:
            if default is None:  # an optional section, off by default
                out.append((key, "null", helps.get(f.name, "")))
            out.extend(config_keys(sub, key))
        else:
            out.append((key, _yaml_value(default), helps.get(f.name, "")))
    return out


def help_listing(algorithm: str) -> str:
    """The config keys of ``jaxalign <algorithm>`` (top level, shared sections, its own section)
    with defaults and one-line meanings: the epilog of its ``--help``."""
    from jaxalign.algorithms import registry
    from jaxalign.config.schema import RunConfig

    row = registry.get(algorithm)
    rows = [(k, algorithm if k == "algorithm" else d, m) for k, d, m in config_keys(RunConfig)]
    rows += config_keys(row.config_class, row.section)
    width = min(max(len(f"{k} = {d}") for k, d, _ in rows) + 2, 40)
    lines = ["config keys (YAML, or key=value overrides; default, meaning; TRL's names: README, "
             "\"TRL names\"):"]
    # The whole first sentence, wrapped under its column (cut short, "a Hugging Face dir, a .gguf
    # file, an alias (sm…" hides the very forms a user looks up).
    indent = " " * (width + 3)
    for key, default, meaning in rows:
        left = f"  {key} = {default}"
        wrapped = textwrap.wrap(short(meaning, limit=10_000), width=max(100 - len(indent), 40)) or [""]
        if len(left) <= width + 1:
            lines.append(f"{left:<{width + 2}} {wrapped[0]}".rstrip())
        else:
            lines += [left, indent + wrapped[0]]
        lines += [indent + w for w in wrapped[1:]]
    return "\n".join(lines)
