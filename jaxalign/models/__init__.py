"""jaxalign.models."""
