"""Telling a full disk from other errors (:func:`jaxalign.errors.is_no_space`), whatever library
raised it: an OSError, Orbax/TensorStore's RESOURCE_EXHAUSTED, safetensors' Rust I/O error."""

import errno

import pytest

from jaxalign.errors import NoSpaceLeft, is_no_space, written_path

TENSORSTORE = ('RESOURCE_EXHAUSTED: Error writing "bad_steps/0" in OCDBT database at local file "/r/checkpoints/'
               '2.orbax-checkpoint-tmp/state/ocdbt.process_0/": Failed writing: "/r/checkpoints/2.orbax-checkpoint-'
               'tmp/state/ocdbt.process_0/d/fe87": Failed to write 523518 bytes to file 15: No space left on '
               "device [os_error_code='28']")


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "No space left on device", "/r/metrics.jsonl"),
    ValueError(TENSORSTORE),
    ValueError('RESOURCE_EXHAUSTED: Error writing local file "/r/x"'),
    RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
    NoSpaceLeft("/r/final", "why"),
], ids=["oserror", "tensorstore", "tensorstore-short", "safetensors", "own"])
def test_a_full_disk_is_recognised(exc):
    assert is_no_space(exc)


@pytest.mark.parametrize("exc", [
    OSError(errno.EACCES, "Permission denied", "/r/x"),
    RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.00GiB"),
    ValueError("bad value"),
    None,
], ids=["permission", "out-of-memory", "other", "none"])
def test_other_errors_are_not_a_full_disk(exc):
    assert not is_no_space(exc)


def test_the_cause_of_a_wrapping_error_counts():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as e:
        assert is_no_space(e)


def test_written_path_names_the_file():
    assert written_path(OSError(errno.ENOSPC, "No space", "/r/metrics.jsonl")) == "/r/metrics.jsonl"
    assert written_path(ValueError(TENSORSTORE)).startswith("/r/checkpoints/2.orbax-checkpoint-tmp/")
    assert written_path(ValueError("no path here")) is None


def test_the_message_is_one_line_with_path_and_reason():
    e = NoSpaceLeft("/r/final", "final model not written")
    assert str(e) == "no space left on device while writing /r/final (final model not written)"


def test_an_error_while_handling_a_full_disk_is_another_error():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise KeyError("cleanup failed")  # noqa: B904 - the implicit context is the point
    except KeyError as e:
        assert not is_no_space(e)
