"""Config key meanings come from one place, the dataclasses' docstring attribute lists: every
key of every command has one, and ``--help`` shows them with the defaults."""

import dataclasses

import pytest

from jaxalign.algorithms import registry
from jaxalign.config.fields import config_keys, field_help, help_listing, short
from jaxalign.config.schema import RunConfig


def _all_keys():
    for name in registry.BUILTIN:
        row = registry.get(name)
        yield from config_keys(RunConfig)
        yield from config_keys(row.config_class, row.section)


def test_every_config_key_has_a_meaning():
    missing = sorted({key for key, _, meaning in _all_keys() if not meaning.strip()})
    assert missing == [], f"document these fields in their dataclass's docstring ('name: meaning'): {missing}"


@dataclasses.dataclass
class _Documented:
    """A test section.

    alpha: the first; beta / gamma: shared by two. delta, epsilon: also shared.
    zeta: a meaning that goes on
      over two lines.
    """

    alpha: int = 1
    beta: float = 0.5
    gamma: str | None = None
    delta: bool = False
    epsilon: int = 3
    zeta: int = 0
    undocumented: int = 7


@dataclasses.dataclass
class _Child(_Documented):
    """A subclass.

    alpha: overridden here.
    """


def test_the_attribute_list_is_parsed_and_a_missing_entry_is_found():
    helps = field_help(_Documented)
    assert helps["alpha"] == "the first"
    assert helps["beta"] == helps["gamma"] == "shared by two."
    assert helps["delta"] == helps["epsilon"] == "also shared."
    assert helps["zeta"] == "a meaning that goes on over two lines."
    assert "undocumented" not in helps  # what test_every_config_key_has_a_meaning catches
    assert field_help(_Child)["alpha"] == "overridden here." and field_help(_Child)["zeta"].startswith("a meaning")
    keys = {k: (d, m) for k, d, m in config_keys(_Documented, "x")}
    assert keys["x.gamma"] == ("null", "shared by two.") and keys["x.undocumented"] == ("7", "")


def test_short_keeps_the_first_sentence():
    assert short("one thing (e.g. two). Then more.") == "one thing (e.g. two)."
    assert short("x" * 200).endswith("…") and len(short("x" * 200)) == 72


@pytest.mark.parametrize("algorithm", registry.BUILTIN)
def test_help_listing_has_every_section_with_defaults(algorithm):
    text = help_listing(algorithm)
    section = registry.get(algorithm).section
    for key in (f"algorithm = {algorithm} ", "seed = 0", "model.path = null", "data.max_length = 512", "optim.lr = 1e-05",
                "train.batch_size = 8", "mesh.fsdp = -1", f"{section}."):
        assert key in text, (algorithm, key)
    row = registry.get(algorithm)
    for f in dataclasses.fields(row.config_class):
        assert f"{section}.{f.name}" in text, f.name
    assert all(len(line) <= 120 for line in text.splitlines()), max(text.splitlines(), key=len)


def test_nested_sections_list_their_keys():
    text = help_listing("grpo")
    assert "grpo.sampling.max_new_tokens = 32" in text and "grpo.reward.kind = sentiment" in text
    assert "grpo.overlong = null" in text and "grpo.overlong.buffer = 4" in text


def test_help_listing_wraps_meanings_instead_of_cutting_them():
    text = help_listing("sft")
    from jaxalign.config.schema import ModelSpec

    first = short(field_help(ModelSpec)["path"], limit=10_000)
    assert "…" not in text
    assert " ".join(text.split()).count(" ".join(first.split())) == 1, first
