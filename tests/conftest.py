"""Shared fixtures: tiny Hugging Face models written by transformers (torch) into tmp dirs."""

import os

# Tests run on 8 simulated CPU devices unless the caller chose otherwise.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
