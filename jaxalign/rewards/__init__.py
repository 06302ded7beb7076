"""jaxalign.rewards."""
