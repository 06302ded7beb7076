"""YAML as plain data, safely: ``SafeLoader`` rules, duplicate keys refused, bounded nesting
and alias expansion (a pathological file is refused before any walk over it)."""

from __future__ import annotations

import re

import yaml


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


def yaml_load(text: str):
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
