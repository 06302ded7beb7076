"""Each algorithm's config section (its ``Config`` dataclass, defaults, docstring and value
checks), apart from its implementation and importing no JAX, Flax or transformers: the CLI
builds ``--help``, and :func:`jaxalign.config.load_config` validates a config, from these alone.
The algorithm modules re-export their ``Config``. Heavy names a check needs (a loss's list of
types) are imported inside that check.
"""
