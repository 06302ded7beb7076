"""Each algorithm's config section (its ``Config`` dataclass, defaults, docstring and value
checks), apart from its implementation and importing no JAX, Flax or transformers: the CLI
builds ``--help``, and :func:`jaxalign.config.load_config` validates a config, from these alone.
The algorithm modules re-export their ``Config``. Heavy names a check needs (a loss's list of
types) are imported inside that check.
"""

from jaxalign.errors import JaxalignError


def check_chunk_size(section: str, value) -> None:
    """One line naming ``<section>.chunk_size`` unless it is null or an integer >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise JaxalignError(f"config key '{section}.chunk_size': must be >= 1, got {value!r}")
