"""tests/test_policy_common.py: the shared pieces of the Python policies (tllm_sched/policies/common.py).

Split (running generations vs the rest), the state-kind tables and prefix_within, with
hand-computed expectations; each helper's Python-int branch (few values) and numpy branch
(many) must agree.
"""

import numpy as np
import pytest

import tllm_sched as ts
from tllm_sched.policies import common
from tllm_sched.policies.common import CONTEXT, GENERATION, IGNORED, OTHER, KindTable, Split, prefix_within

S = ts.LlmRequestState
GEN, CTX, DONE = int(S.GENERATION_IN_PROGRESS), int(S.CONTEXT_INIT), int(S.GENERATION_COMPLETE)
I32 = lambda *a: np.array(a, dtype=np.int32)  # noqa: E731


def test_split_all_running_generations():
    slots = I32(7, 3, 5)
    sp = Split.of(slots, I32(GEN, GEN, GEN))
    assert sp.other.size == 0 and sp.tail
    assert sp.gens is slots  # nothing to gather


def test_split_contexts_at_the_tail_are_slices():
    # New requests are appended: the others are the list's last two entries.
    slots = I32(7, 3, 5, 9, 2)
    sp = Split.of(slots, I32(GEN, GEN, GEN, CTX, CTX))
    assert sp.other.tolist() == [3, 4] and sp.other_state.tolist() == [CTX, CTX]
    assert sp.tail
    assert sp.gens.tolist() == [7, 3, 5] and np.shares_memory(sp.gens, slots)
    assert sp.other_slots().tolist() == [9, 2] and np.shares_memory(sp.other_slots(), slots)


def test_split_interleaved_others_are_gathered():
    slots = I32(7, 3, 5, 9, 2)
    sp = Split.of(slots, I32(GEN, CTX, GEN, DONE, GEN))
    assert sp.other.tolist() == [1, 3] and sp.other_state.tolist() == [CTX, DONE]
    assert not sp.tail
    assert sp.gens.tolist() == [7, 5, 2]
    assert sp.other_slots().tolist() == [3, 9]


@pytest.mark.parametrize("few", [16, 0])  # Python ints, then numpy
def test_kind_counts_agree_in_both_branches(monkeypatch, few):
    monkeypatch.setattr(common, "FEW", few)
    # Capacity kinds in the default window [CONTEXT_INIT, GENERATION_COMPLETE) with the
    # disagg-generation-init exception.
    table = KindTable(lambda st: (IGNORED if not (CTX <= st < DONE or st == int(S.DISAGG_GENERATION_INIT))
                                  else CONTEXT if st in (CTX, int(S.DISAGG_CONTEXT_INIT_AND_TRANS))
                                  else GENERATION if int(S.DISAGG_GENERATION_TRANS_COMPLETE) <= st <= int(S.GENERATION_TO_COMPLETE)
                                  else OTHER), 4)
    states = I32(CTX, CTX, DONE, int(S.DISAGG_TRANS_ERROR), int(S.GENERATION_TO_COMPLETE),
                 int(S.DISAGG_GENERATION_INIT), int(S.ENCODER_INIT))
    # CTX x2 -> CONTEXT; DONE, -1 (wraps to the table's last entry), ENCODER_INIT -> IGNORED;
    # GENERATION_TO_COMPLETE -> GENERATION; DISAGG_GENERATION_INIT -> OTHER.
    assert table.count(states) == [3, 2, 1, 1]
    assert table.of(states).tolist() == [CONTEXT, CONTEXT, IGNORED, IGNORED, GENERATION, OTHER, IGNORED]
    assert table.count(I32()) == [0, 0, 0, 0]


@pytest.mark.parametrize("head", [8, 0, 1, 2])  # the plain scan, the arrays, both
@pytest.mark.parametrize("values,limit,expected", [
    ([3, 4, 5], 6, 1),     # 3 <= 6, 7 > 6
    ([3, 4, 5], 7, 2),     # 3, 7 fit; 12 > 7
    ([3, 4, 5], 12, 3),    # everything
    ([0, 0, 2], 0, 2),     # zeros fit in nothing
    ([1, 2], -1, 0),       # a negative room fits nothing
    ([], 5, 0),
    ([4, -3, 2], 3, 0),    # the first total (4) is over: a later lower total does not count
    ([2, 3, -4, 1], 2, 1), # 2 fits, 5 is over: stop there
])
def test_prefix_within(monkeypatch, head, values, limit, expected):
    monkeypatch.setattr(common, "HEAD", head)
    assert prefix_within(np.array(values, dtype=np.int32), limit) == expected
