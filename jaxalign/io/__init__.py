"""jaxalign.io."""
