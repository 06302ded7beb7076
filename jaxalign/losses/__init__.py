"""jaxalign.losses."""
