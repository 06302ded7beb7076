"""jaxalign.algorithms."""
