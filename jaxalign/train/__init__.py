"""jaxalign.train."""
