"""``check_ranges``: the shared range check of config-like sections (``ape:``, the digits settings)."""

import dataclasses

import pytest

from jaxalign.config.checks import check_ranges, positive
from jaxalign.errors import JaxalignError


@dataclasses.dataclass
class _Section:
    n: int = 1
    q: float = 0.5
    opt: int | None = None


RANGES = {**positive("n", "opt"), "q": (0.0, 1.0, True, False)}


def test_values_within_the_bounds_pass_and_none_is_skipped():
    check_ranges(_Section(), RANGES, "s.")
    check_ranges(_Section(n=7, q=0.0, opt=3), RANGES, "s.")


@pytest.mark.parametrize("field,value,msg", [
    ("n", 0, "config key 's.n': must be >= 1, got 0"),
    ("opt", -2, "config key 's.opt': must be >= 1, got -2"),
    ("q", 1.0, "config key 's.q': must be >= 0.0 and < 1.0, got 1.0"),
    ("q", float("nan"), "config key 's.q': must be a finite number, got nan"),
    ("n", True, "config key 's.n': expected a number, got True"),
])
def test_the_first_bad_key_is_one_line(field, value, msg):
    with pytest.raises(JaxalignError) as e:
        check_ranges(_Section(**{field: value}), RANGES, "s.")
    assert str(e.value) == msg
