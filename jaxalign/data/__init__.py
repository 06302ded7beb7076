"""jaxalign.data."""
