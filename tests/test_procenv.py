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
