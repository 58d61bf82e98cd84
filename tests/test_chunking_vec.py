"""The vectorised chunking twins equal the scalar reference loops on every input.

tllm_sched/policies/chunking.py keeps both: the plain loops (which mirror C++ line by line and
serve small batches) and array versions for the hundreds of waiting contexts of a busy step.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tllm_sched.policies import chunking


@settings(max_examples=1500)
@given(
    remaining=st.lists(st.integers(0, 300), min_size=0, max_size=60),
    drafts=st.lists(st.integers(0, 6), min_size=60, max_size=60),
    policy=st.sampled_from([chunking.EQUAL_PROGRESS, chunking.FIRST_COME_FIRST_SERVED]),
    capacity=st.one_of(st.none(), st.integers(0, 900)),
    unit=st.integers(1, 64),
    max_ctx=st.one_of(st.none(), st.integers(1, 400)),
)
def test_vectorised_equals_scalar(remaining, drafts, policy, capacity, unit, max_ctx):
    draft = drafts[: len(remaining)]
    want_c, want_d = chunking.set_ctx_requests_chunk_size(remaining, draft, policy, capacity, unit, max_ctx)
    got_c, got_d = chunking.set_ctx_requests_chunk_size_vec(
        np.array(remaining, dtype=np.int64), np.array(draft, dtype=np.int64), policy, capacity, unit, max_ctx)
    assert got_c.tolist() == want_c
    assert got_d.tolist() == want_d


def test_hand_example_fcfs_tail():
    # capacity 50, unit 8: 20 whole (30 left), 40 cut to 24 (6 left, below a unit),
    # 9 does not fit whole -> 0, 5 fits whole (1 left), 3 -> 0.
    c, _ = chunking.set_ctx_requests_chunk_size_vec(np.array([20, 40, 9, 5, 3]), np.zeros(5, dtype=np.int64),
                                                    chunking.FIRST_COME_FIRST_SERVED, 50, 8, None)
    assert c.tolist() == [20, 24, 0, 5, 0]


def test_fcfs_prefix_hand_examples():
    fcfs = chunking.first_come_first_served_prefix
    # capacity 250, unit 64: 100 whole (150 left), 200 cut to 128 (22 left), 50 does not fit: (1, 128).
    assert fcfs(np.array([100, 200, 50], dtype=np.int32), 250, 64) == (1, 128)
    # ... but a 10 would fit the 22 left whole (the greedy tail): not this shape.
    assert fcfs(np.array([100, 200, 10], dtype=np.int32), 250, 64) is None
    # 40 left before the second request, below a unit: it gets nothing, nor does anyone after.
    assert fcfs(np.array([210, 200, 50], dtype=np.int32), 250, 64) == (1, 0)
    # Everything fits, a zero remainder, a negative capacity: not this shape.
    assert fcfs(np.array([10, 20], dtype=np.int32), 100, 64) is None
    assert fcfs(np.array([0, 300], dtype=np.int32), 100, 64) is None
    assert fcfs(np.array([10, 20], dtype=np.int32), -1, 64) is None


@settings(max_examples=1500)
@given(
    remaining=st.lists(st.integers(0, 300), min_size=1, max_size=60),
    capacity=st.integers(0, 900),
    unit=st.integers(1, 64),
)
def test_fcfs_prefix_equals_scalar(remaining, capacity, unit):
    """Where the prefix form answers, it is the scalar loop's answer: whole, one cut, zeros."""
    got = chunking.first_come_first_served_prefix(np.array(remaining, dtype=np.int32), capacity, unit)
    want, _ = chunking.set_ctx_requests_chunk_size(remaining, [0] * len(remaining), chunking.FIRST_COME_FIRST_SERVED,
                                                   capacity, unit, None)
    if got is not None:
        k, act = got
        assert want == remaining[:k] + [act] + [0] * (len(remaining) - k - 1)
        assert act < remaining[k]
