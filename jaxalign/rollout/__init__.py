"""jaxalign.rollout."""
