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



def _fcfs_bed(remaining, unit):
    """A table of context requests with these remainders (prompt lengths, nothing computed yet)
    and the batched micro-batch scheduler over it, first come first served."""
    import tllm_sched as ts
    from tllm_sched.micro_batch_scheduler import PyMicroBatchScheduler

    t = ts.RequestTable(len(remaining))
    slots = np.array([t.add_request(i, np.full(r, 7, dtype=np.int32), 4).slot for i, r in enumerate(remaining)],
                     dtype=np.int32)
    micro = PyMicroBatchScheduler(t.columns(), t.tallies(), t, chunking.FIRST_COME_FIRST_SERVED, unit, None)
    return t, slots, micro


def _fcfs_output(remaining, capacity, unit):
    """(chunk sizes committed, contexts in output order as list positions) by the batched
    scheduler's first come first served (micro._first_come_first_served, then its _sort)."""
    t, slots, micro = _fcfs_bed(remaining, unit)
    context, last = micro._first_come_first_served(slots, np.array(remaining, dtype=np.int32), capacity)
    context = micro._sort(context, last is not None, last)
    position = {int(s): k for k, s in enumerate(slots)}
    return t.columns()["context_chunk_size"][slots].tolist(), [position[int(s)] for s in context]


def test_fcfs_hand_examples():
    # capacity 250, unit 64: 100 whole (150 left), 200 cut to 128 (22 left), 50 does not fit;
    # the cut chunk (not a last chunk) leads the output.
    assert _fcfs_output([100, 200, 50], 250, 64) == ([100, 128, 0], [1, 0])
    # ... a 10 fits the 22 left whole (the greedy tail).
    assert _fcfs_output([100, 200, 10], 250, 64) == ([100, 128, 10], [1, 0, 2])
    # 40 left before the second request, below a unit: it gets nothing, nor does anyone after.
    assert _fcfs_output([210, 200, 50], 250, 64) == ([210, 0, 0], [0])
    # Everything fits.
    assert _fcfs_output([10, 20], 100, 64) == ([10, 20], [0, 1])


@settings(max_examples=300, deadline=None)
@given(
    remaining=st.lists(st.integers(1, 300), min_size=1, max_size=60),
    capacity=st.integers(0, 3000),
    unit=st.integers(1, 64),
)
def test_fcfs_equals_scalar(remaining, capacity, unit):
    """The batched scheduler's first come first served commits the scalar loop's chunk sizes and
    returns the contexts that got one, non-last chunks first, each group in list order."""
    want, _ = chunking.set_ctx_requests_chunk_size(remaining, [0] * len(remaining), chunking.FIRST_COME_FIRST_SERVED,
                                                   capacity, unit, None)
    order = ([k for k, c in enumerate(want) if 0 < c < remaining[k]] + [k for k, c in enumerate(want) if c and c == remaining[k]])
    assert _fcfs_output(remaining, capacity, unit) == (want, order)
