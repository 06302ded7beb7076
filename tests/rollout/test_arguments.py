"""generate's host-side arguments: the static spec and the shard padding, by hand."""

import numpy as np
import pytest

from jaxalign.errors import JaxalignError
from jaxalign.rollout.arguments import SamplingSpec, checked_prompts, padded_rows, sampler_inputs, sampling_spec


def spec(**kw):
    base = dict(max_new_tokens=4, num_samples=2, temperature=0.7, top_k=5, top_p=0.9, greedy=False, n_eos=1)
    return sampling_spec(**{**base, **kw})


def test_sampling_spec():
    assert spec() == (SamplingSpec(4, 2, False, 5, True, 1), 0.7)
    # temperature 0: greedy, log-probs at temperature 1, and the filters are off (not in the key)
    assert spec(temperature=0) == (SamplingSpec(4, 2, True, None, False, 1), 1.0)
    assert spec(greedy=True) == (SamplingSpec(4, 2, True, None, False, 1), 0.7)
    assert spec(top_p=1.0)[0].use_top_p is False and spec(top_p=None)[0].use_top_p is False
    for bad, msg in [(dict(max_new_tokens=0), "max_new_tokens"), (dict(num_samples=0), "num_samples"),
                     (dict(temperature=-1), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_k=0), "top_k")]:
        with pytest.raises(JaxalignError, match=msg):
            spec(**bad)


def test_sampler_inputs_pad_rows_and_width():
    ids, mask = checked_prompts([[0, 7, 8], [9, 9, 4]], [[0, 1, 1], [1, 1, 1]])
    assert [padded_rows(b, 4) for b in (1, 4, 5)] == [4, 4, 8]
    ids_p, mask_p, valid = sampler_inputs(ids, mask, width=4, shards=4, pad_token_id=3)
    np.testing.assert_array_equal(ids_p, [[3, 0, 7, 8], [3, 9, 9, 4], [3, 3, 3, 3], [3, 3, 3, 3]])
    # dummy rows: one real token (the last column), so the prefill has something to attend to
    np.testing.assert_array_equal(mask_p, [[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(valid, [True, True, False, False])
