"""Complete tasks built on the library: ``demo`` (``jaxalign demo``: align SmolLM2-135M-Instruct
toward positive movie-review continuations, scored by VADER) and its report helpers, which the
alignment-table benchmark reuses."""
