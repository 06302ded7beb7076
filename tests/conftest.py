"""Session set-up (tests/procenv.py): 8 simulated CPU devices unless the caller chose otherwise,
the XLA:CPU collective timeouts raised and its backend optimisation off where supported, and one
JAX persistent compilation cache per session, shared with every subprocess the tests start;
after each test module, the memory it held is given back (``procenv.release_memory``)."""

import pytest

from tests import procenv


def pytest_configure(config):
    # Before any test module imports jax (jax reads these variables at import, XLA at backend start).
    procenv.configure_session(cache=getattr(config, "cache", None))


def pytest_unconfigure(config):
    procenv.cleanup_session()


@pytest.fixture(autouse=True, scope="module")
def _release_memory_after_each_module():
    yield
    procenv.release_memory()
