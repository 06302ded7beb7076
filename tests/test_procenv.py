"""The test-session helpers themselves: a stuck child fails its test with its Python stack."""

import sys

import pytest

from tests import procenv


def test_a_stuck_child_fails_with_its_stack():
    code = "import time\ndef waiting_for_godot():\n    time.sleep(600)\nwaiting_for_godot()\n"
    with pytest.raises(AssertionError) as e:
        procenv.run([sys.executable, "-c", code], timeout=20, env=procenv.subprocess_env())
    assert "still running after 20 s" in str(e.value)
    assert "waiting_for_godot" in str(e.value), str(e.value)


def test_a_finished_child_is_returned_as_subprocess_run_would():
    out = procenv.run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
                      timeout=60, env=procenv.subprocess_env())
    assert (out.returncode, out.stdout, out.stderr) == (3, "out\n", "err\n")


def test_session_flags_add_what_the_caller_did_not_set():
    everything = lambda group: True  # noqa: E731
    flags = procenv.session_xla_flags("", everything).split()
    assert f"{procenv.DEVICE_FLAG}={procenv.SESSION_DEVICES}" in flags
    assert set(procenv.COLLECTIVE_FLAGS) <= set(flags)
    assert "--xla_backend_optimization_level=0" in flags
    # The caller's choices win: a device count and an optimisation level given are kept, once.
    flags = procenv.session_xla_flags(f"{procenv.DEVICE_FLAG}=2 --xla_backend_optimization_level=3", everything)
    assert flags.split().count("--xla_backend_optimization_level=3") == 1
    assert "--xla_backend_optimization_level=0" not in flags and f"{procenv.DEVICE_FLAG}=2" in flags
    # A group this jaxlib does not know is left out, the others kept.
    flags = procenv.session_xla_flags("", lambda group: group != procenv.COMPILE_FLAGS)
    assert "--xla_backend_optimization_level" not in flags and set(procenv.COLLECTIVE_FLAGS) <= set(flags.split())


def test_this_session_sets_an_optimisation_level_where_jaxlib_knows_the_flag(request):
    import os

    # pytest's cache holds configure_session's answer: no second child process to ask jaxlib.
    if not procenv.xla_flags_supported(procenv.COMPILE_FLAGS, request.config.cache):
        pytest.skip("this jaxlib does not know --xla_backend_optimization_level")
    # The caller's level or the session's 0: configure_session ran before this module.
    assert any(f.startswith("--xla_backend_optimization_level=") for f in os.environ["XLA_FLAGS"].split())
