"""tests/test_request_table.py: RequestTable / LlmRequest semantics (scheduler.md §1.1-§1.2, kvcache.md §3).

Every expected value is derived by hand in a comment from the spec formulas.
"""

import numpy as np
import pytest

import tllm_sched as ts
from utils import add_req, new_kv, new_table, slots, toks

S = ts.LlmRequestState

# scheduler.md §1.1 / kvcache.md §3.1: the current TensorRT-LLM numbering.
EXPECTED_VALUES = {
    "DISAGG_TRANS_ERROR": -1,
    "UNKNOWN": 0,
    "ENCODER_INIT": 1,
    "DISAGG_GENERATION_INIT": 8,
    "DISAGG_GENERATION_TRANS_IN_PROGRESS": 9,
    "CONTEXT_INIT": 10,
    "DISAGG_CONTEXT_INIT_AND_TRANS": 11,
    "DISAGG_GENERATION_TRANS_COMPLETE": 12,
    "GENERATION_IN_PROGRESS": 13,
    "GENERATION_TO_COMPLETE": 14,
    "GENERATION_COMPLETE": 20,
    "DISAGG_CONTEXT_TRANS_IN_PROGRESS": 21,
    "DISAGG_CONTEXT_COMPLETE": 22,
}

# kvcache.md §3.1 predicate table (exact-state tests, not ranges).
CONTEXT_INIT_STATES = {"CONTEXT_INIT", "DISAGG_CONTEXT_INIT_AND_TRANS"}                 # {10, 11}
GEN_IN_PROGRESS_STATES = {"GENERATION_IN_PROGRESS", "GENERATION_TO_COMPLETE",
                          "DISAGG_GENERATION_TRANS_COMPLETE"}                            # {13, 14, 12}


# --------------------------------------------------------------------------- states


def test_state_enum_values_and_order():
    assert {name: int(v) for name, v in S.__members__.items()} == EXPECTED_VALUES
    # Only the order matters (README pinned choice 8): sorting by value gives the spec's order.
    by_value = sorted(S.__members__, key=lambda n: int(S.__members__[n]))
    assert by_value == sorted(EXPECTED_VALUES, key=EXPECTED_VALUES.get)
    assert S.CONTEXT_INIT < S.GENERATION_IN_PROGRESS < S.GENERATION_TO_COMPLETE < S.GENERATION_COMPLETE
    assert S.DISAGG_TRANS_ERROR < S.UNKNOWN < S.ENCODER_INIT < S.DISAGG_GENERATION_INIT < S.CONTEXT_INIT


@pytest.mark.parametrize("name", list(EXPECTED_VALUES))
def test_state_predicates(name):
    t = new_table(4)
    r = add_req(t, 1, 5, state=S.__members__[name])
    assert r.state == S.__members__[name]
    assert r.state_value == EXPECTED_VALUES[name]
    assert r.is_encoder_init_state == (name == "ENCODER_INIT")
    assert r.is_context_init_state == (name in CONTEXT_INIT_STATES)
    assert r.is_generation_in_progress_state == (name in GEN_IN_PROGRESS_STATES)
    assert r.is_disagg_generation_init_state == (name == "DISAGG_GENERATION_INIT")
    assert r.is_generation_complete_state == (name == "GENERATION_COMPLETE")
    # The state column holds the same raw value.
    assert t.columns()["state"][r.slot] == EXPECTED_VALUES[name]


def test_has_reached_state_is_numeric_ge():
    t = new_table(4)
    r = add_req(t, 1, 5, state=S.GENERATION_IN_PROGRESS)  # 13
    assert r.has_reached_state(S.CONTEXT_INIT)                       # 13 >= 10
    assert r.has_reached_state(S.DISAGG_GENERATION_TRANS_COMPLETE)   # 13 >= 12
    assert r.has_reached_state(S.GENERATION_IN_PROGRESS)             # 13 >= 13 (itself)
    assert not r.has_reached_state(S.GENERATION_TO_COMPLETE)         # 13 < 14
    assert not r.has_reached_state(S.GENERATION_COMPLETE)            # 13 < 20
    e = add_req(t, 2, 5, state=S.DISAGG_TRANS_ERROR)  # -1: reaches nothing but itself
    assert e.has_reached_state(S.DISAGG_TRANS_ERROR)
    assert not e.has_reached_state(S.UNKNOWN)                        # -1 < 0
    r.set_state(S.GENERATION_COMPLETE)
    assert r.has_reached_state(S.GENERATION_TO_COMPLETE)             # 20 >= 14
    assert not r.has_reached_state(S.DISAGG_CONTEXT_TRANS_IN_PROGRESS)  # 20 < 21


# --------------------------------------------------------------------------- context chunks


def test_new_request_defaults():
    t = new_table(4)
    r = add_req(t, 5, 25, max_new=7)
    # scheduler.md §1.2: chunk starts at the prompt length, position 0, nothing prepopulated.
    assert (r.prompt_len, r.orig_prompt_len, r.max_new_tokens) == (25, 25, 7)
    assert (r.context_current_position, r.context_chunk_size, r.prepopulated_prompt_len) == (0, 25, 0)
    assert r.context_remaining_length == 25
    assert r.get_num_tokens() == 25 and r.max_num_generated_tokens == 0
    assert r.is_first_context_chunk and r.is_last_context_chunk  # 0 == 0 ; 0 + 25 == 25
    assert r.state == S.CONTEXT_INIT and r.priority == pytest.approx(0.5)
    assert r.lora_task_id is None and r.beam_width == 1 and r.num_draft_tokens == 0


def test_chunk_setter_clamps_to_remaining():
    t = new_table(4)
    r = add_req(t, 1, 25)
    r.context_chunk_size = 10
    assert r.context_chunk_size == 10
    assert not r.is_last_context_chunk          # 0 + 10 != 25
    r.context_chunk_size = 100                  # min(100, 25 - 0) = 25
    assert r.context_chunk_size == 25
    r.context_chunk_size = 0
    assert r.context_chunk_size == 0
    r.context_chunk_size = 10
    r.move_to_next_context_chunk()              # pos 10, chunk 0
    r.context_chunk_size = 16                   # min(16, 25 - 10 = 15) = 15
    assert r.context_chunk_size == 15
    r.context_chunk_size = 14                   # min(14, 15) = 14: not clamped (catches an off-by-one)
    assert r.context_chunk_size == 14


def test_chunk_setter_rejects_negative_and_wrong_state():
    t = new_table(8)
    r = add_req(t, 1, 25)
    with pytest.raises(ValueError, match=">= 0"):
        r.context_chunk_size = -1
    assert r.context_chunk_size == 25  # unchanged
    g = add_req(t, 2, 25, state=S.GENERATION_IN_PROGRESS)
    with pytest.raises(ValueError, match="context"):
        g.context_chunk_size = 5
    assert g.context_chunk_size == 25
    enc = add_req(t, 3, 25, state=S.ENCODER_INIT)
    with pytest.raises(ValueError, match="context"):
        enc.context_chunk_size = 5
    # Allowed states (kvcache.md §3.3): context-init (10, 11) and disagg-gen-init/complete (8, 12).
    for rid, st in ((4, S.DISAGG_CONTEXT_INIT_AND_TRANS), (5, S.DISAGG_GENERATION_INIT),
                    (6, S.DISAGG_GENERATION_TRANS_COMPLETE)):
        q = add_req(t, rid, 25, state=st)
        q.context_chunk_size = 5
        assert q.context_chunk_size == 5


def test_move_to_next_context_chunk():
    t = new_table(4)
    r = add_req(t, 1, 25)
    r.context_chunk_size = 10
    r.move_to_next_context_chunk()    # pos 0 + 10 = 10; chunk := 0
    assert (r.context_current_position, r.context_chunk_size, r.context_remaining_length) == (10, 0, 15)
    assert not r.is_first_context_chunk  # 10 != prepopulated 0
    r.context_chunk_size = 10
    assert not r.is_last_context_chunk   # 10 + 10 = 20 != 25
    r.move_to_next_context_chunk()    # pos 20
    r.context_chunk_size = 10         # clamped to 5
    assert r.context_chunk_size == 5 and r.is_last_context_chunk  # 20 + 5 == 25
    r.move_to_next_context_chunk()
    assert (r.context_current_position, r.context_chunk_size, r.context_remaining_length) == (25, 0, 0)
    g = add_req(t, 2, 5, state=S.GENERATION_IN_PROGRESS)
    with pytest.raises(ValueError, match="context"):
        g.move_to_next_context_chunk()
    assert g.context_current_position == 0


def test_is_last_context_chunk_disagg_states():
    t = new_table(4)
    # Disagg-gen-init and disagg-trans-complete are always "last chunk" (scheduler.md §1.2).
    for rid, st in ((1, S.DISAGG_GENERATION_INIT), (2, S.DISAGG_GENERATION_TRANS_COMPLETE)):
        r = add_req(t, rid, 25, state=st)
        r.context_chunk_size = 5   # 0 + 5 != 25, yet last
        assert r.is_last_context_chunk
    c = add_req(t, 3, 25)
    c.context_chunk_size = 5
    assert not c.is_last_context_chunk


def test_is_first_context_chunk_relative_to_prepopulated():
    # tpb 10. A (25 tokens) stores its full blocks: store_context_blocks chops tokens - 1 = 24 tokens
    # into full blocks -> 2 blocks [0..9], [10..19] cached.
    t = new_table(4)
    kv = new_kv(t, 10, 20, 100, enable_block_reuse=True)
    a = add_req(t, 1, 25)
    kv.add_sequence(1, 25, 1, a)
    kv.store_context_blocks(a)
    # B has the same 25-token prompt: keys use 24 tokens -> [0..9], [10..19], [20..23]; the first two
    # match exactly (20 tokens), [20..23] finds no child (A's third block was not stored).
    b = add_req(t, 2, 25)
    kv.add_sequence(2, 25, 1, b)
    assert b.prepopulated_prompt_len == 20
    # setPrepopulatedPromptLen: pos := 20; 20 + chunk(25) >= 25 so no shrink; chunk = min(25, 5) = 5.
    assert (b.context_current_position, b.context_chunk_size) == (20, 5)
    assert b.is_first_context_chunk          # pos 20 == prepopulated 20
    assert b.is_last_context_chunk           # 20 + 5 == 25
    b.context_chunk_size = 2
    b.move_to_next_context_chunk()           # pos 22 != 20
    assert not b.is_first_context_chunk


def test_prepopulated_shrinks_chunk_to_block_boundary():
    # kvcache.md §1.6: if P + chunk < promptLen, chunk = floor((P + chunk) / tpb) * tpb - P.
    t = new_table(4)
    kv = new_kv(t, 10, 20, 100, enable_block_reuse=True)
    a = add_req(t, 1, 50)
    kv.add_sequence(1, 50, 1, a)
    kv.store_context_blocks(a)   # 49 tokens -> 4 full blocks cached
    b = add_req(t, 2, 50)
    b.context_chunk_size = 15    # chunked prefill decided before allocation
    kv.add_sequence(2, 50, 1, b)
    # keys of 49 tokens: 4 full ([0..39]) + [40..48]; 4 exact matches = 40 tokens; the 5th finds no
    # stored child -> P = 40. 40 + 15 = 55 >= 50 -> no shrink; chunk = min(15, 50 - 40) = 10.
    assert (b.prepopulated_prompt_len, b.context_current_position, b.context_chunk_size) == (40, 40, 10)
    c = add_req(t, 3, toks(30) + toks(30, 1000))   # 60 tokens, shares 30 with A
    c.context_chunk_size = 25
    kv.add_sequence(3, 60, 1, c)
    # 3 exact blocks match (30 tokens); key 3 [1000..1009] matches nothing -> P = 30.
    # 30 + 25 = 55 < 60 -> chunk = floor(55 / 10) * 10 - 30 = 50 - 30 = 20 (not 25).
    assert (c.prepopulated_prompt_len, c.context_current_position, c.context_chunk_size) == (30, 30, 20)
    assert c.is_first_context_chunk and not c.is_last_context_chunk


# --------------------------------------------------------------------------- pause, drafts, tokens


def test_pause_folds_generated_tokens():
    t = new_table(4)
    r = add_req(t, 1, toks(10), max_new=5, state=S.GENERATION_IN_PROGRESS)
    for tok in (100, 101, 102):
        r.add_new_token(tok)
    assert r.get_num_tokens() == 13 and r.max_num_generated_tokens == 3
    r.pause(12)
    # newPrompt = min(12, 10 + 3) = 12; maxNew = 5 - (12 - 10) = 3; tokens truncated to 12;
    # state CONTEXT_INIT, pos 0, prepopulated 0, chunk = promptLen = 12.
    assert (r.prompt_len, r.max_new_tokens, r.get_num_tokens()) == (12, 3, 12)
    assert r.state == S.CONTEXT_INIT
    assert (r.context_chunk_size, r.context_current_position, r.prepopulated_prompt_len) == (12, 0, 0)
    assert r.orig_prompt_len == 10
    assert r.tokens.tolist() == toks(10) + [100, 101]
    assert r.max_num_generated_tokens == 0


def test_pause_all_generated_fit():
    t = new_table(4)
    r = add_req(t, 1, toks(10), max_new=5, state=S.GENERATION_IN_PROGRESS)
    for tok in (100, 101, 102):
        r.add_new_token(tok)
    r.pause(20)
    # newPrompt = min(20, 13) = 13; maxNew = 5 - 3 = 2.
    assert (r.prompt_len, r.max_new_tokens, r.get_num_tokens(), r.context_chunk_size) == (13, 2, 13, 13)
    assert r.tokens.tolist() == toks(10) + [100, 101, 102]
    # prompt + max_new = 15 = the reserved capacity, so exactly 2 more tokens can be appended.
    r.add_new_token(7)
    r.add_new_token(8)
    with pytest.raises(ValueError, match="capacity"):
        r.add_new_token(9)


def test_pause_encoder_request_goes_to_encoder_init():
    t = new_table(4)
    r = add_req(t, 1, 10, max_new=5, encoder_output_len=7, state=S.GENERATION_IN_PROGRESS)
    r.add_new_token(1)
    r.pause(100)
    assert r.state == S.ENCODER_INIT and r.prompt_len == 11 and r.max_new_tokens == 4


def test_pause_rejects_nonpositive_max_input_len():
    t = new_table(4)
    r = add_req(t, 1, 10, max_new=5)
    with pytest.raises(ValueError, match="max_input_len"):
        r.pause(0)
    assert r.prompt_len == 10


def test_discard_draft_tokens_bounds():
    t = new_table(4)
    r = add_req(t, 1, 10, num_draft_tokens=3)
    assert r.num_draft_tokens == 3 and r.has_draft_tokens
    for bad in (0, -1, 4):   # needs 0 < n <= 3
        with pytest.raises(ValueError, match="discard_draft_tokens"):
            r.discard_draft_tokens(bad)
        assert r.num_draft_tokens == 3
    r.discard_draft_tokens(2)
    assert r.num_draft_tokens == 1
    r.discard_draft_tokens(1)
    assert r.num_draft_tokens == 0 and not r.has_draft_tokens
    with pytest.raises(ValueError, match="discard_draft_tokens needs 0 < n <= 0, got 1"):
        r.discard_draft_tokens(1)   # 1 > 0 remaining


def test_tallies_follow_every_write():
    """tallies() = [requests with a LoRA task, with draft tokens, with beam_width_by_iter != 1],
    over live requests, updated by each write of those columns."""
    t = new_table(4)
    tallies = t.tallies()  # one zero-copy view, read after each step
    assert tallies.tolist() == [0, 0, 0]
    a = add_req(t, 1, 10, lora_task_id=7, num_draft_tokens=2)
    b = t.add_request(2, toks(6), 4, beam_width_schedule=[1, 2, 1])
    assert tallies.tolist() == [1, 1, 0]       # a: LoRA + drafts; b: iteration 0 -> beam 1
    b.advance_decoding_iteration()
    assert tallies.tolist() == [1, 1, 1]       # b: iteration 1 -> beam 2
    b.pause(50)
    assert tallies.tolist() == [1, 1, 0]       # pause restarts the schedule: iteration 0 -> beam 1
    b.advance_decoding_iteration()
    b.advance_decoding_iteration()
    assert tallies.tolist() == [1, 1, 0]       # iteration 2 -> beam 1
    a.discard_draft_tokens(1)
    assert tallies.tolist() == [1, 1, 0]       # 1 draft left
    a.discard_draft_tokens(1)
    assert tallies.tolist() == [1, 0, 0]
    b.set_num_draft_tokens(3)
    assert tallies.tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="draft token count must be >= 0"):
        b.set_num_draft_tokens(-1)
    assert tallies.tolist() == [1, 1, 0]       # a refused write changes nothing
    t.remove_request(a)
    t.remove_request(b)
    assert tallies.tolist() == [0, 0, 0]
    assert not tallies.flags.writeable


def test_add_new_token_up_to_capacity():
    t = new_table(4)
    # Reserved capacity = prompt 4 + max_new 3 + drafts 2 = 9.
    r = add_req(t, 1, [5, 6, 7, 8], max_new=3, num_draft_tokens=2)
    assert r.token_buffer.shape == (9,)
    for i in range(5):
        r.add_new_token(100 + i)
    assert r.get_num_tokens() == 9
    with pytest.raises(ValueError, match="capacity of 9"):
        r.add_new_token(999)
    # The failed append changed nothing.
    assert r.get_num_tokens() == 9
    assert r.tokens.tolist() == [5, 6, 7, 8, 100, 101, 102, 103, 104]
    assert r.get_tokens() == r.tokens.tolist()
    assert r.get_unique_tokens() == [(x, 0) for x in r.tokens.tolist()]
    assert t.columns()["num_tokens"][r.slot] == 9


# --------------------------------------------------------------------------- columns and gather


def test_columns_are_read_only_views_of_the_cpp_buffer():
    t = new_table(8)
    cols = t.columns()
    state_view = cols["state"]
    r = add_req(t, 1, 10)
    assert len(state_view) == 8                     # capacity long
    assert state_view.dtype == np.int32
    assert not state_view.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        state_view[0] = 13
    ptr = state_view.__array_interface__["data"][0]
    assert t.columns()["state"].__array_interface__["data"][0] == ptr   # same C++ buffer every call
    assert state_view[r.slot] == 10                 # added after the view was taken: visible
    r.context_chunk_size = 3
    assert cols["context_chunk_size"][r.slot] == 3
    r.set_state(S.GENERATION_IN_PROGRESS)
    assert state_view[r.slot] == 13                 # change through the handle is visible
    r.pause(10)
    assert state_view[r.slot] == 10
    for name, col in cols.items():
        assert not col.flags.writeable, name
        assert len(col) == 8, name
    assert cols["request_id"].dtype == np.int64 and cols["lora_task_id"].dtype == np.int64
    assert cols["priority"].dtype == np.float32


def test_gather_values():
    t = new_table(8)
    a = add_req(t, 11, 7, max_new=3, lora_task_id=1234, priority=0.25, num_draft_tokens=2)
    b = add_req(t, 22, 12, max_new=9, state=S.GENERATION_IN_PROGRESS)
    b.add_new_token(5)
    a.context_chunk_size = 4
    g = t.gather(slots(b, a))   # list order, not slot order
    assert set(g) == {"request_id", "state", "prompt_len", "context_current_position", "context_chunk_size",
                      "max_new_tokens", "num_tokens", "num_draft_tokens", "lora_task_id", "beam_width", "priority"}
    assert g["request_id"].tolist() == [22, 11]
    assert g["state"].tolist() == [13, 10]
    assert g["prompt_len"].tolist() == [12, 7]
    assert g["context_chunk_size"].tolist() == [12, 4]
    assert g["context_current_position"].tolist() == [0, 0]
    assert g["max_new_tokens"].tolist() == [9, 3]
    assert g["num_tokens"].tolist() == [13, 7]
    assert g["num_draft_tokens"].tolist() == [0, 2]
    assert g["lora_task_id"].tolist() == [-1, 1234]
    assert g["beam_width"].tolist() == [1, 1]
    assert g["priority"].tolist() == pytest.approx([0.5, 0.25])
    assert t.request_ids(slots(a, b)).tolist() == [11, 22]
    assert t.slots_of(np.array([22, 11], dtype=np.int64)).tolist() == [b.slot, a.slot]
    # gather returns copies: later changes do not show.
    a.context_chunk_size = 1
    assert g["context_chunk_size"].tolist() == [12, 4]


def test_gather_rejects_bad_slots():
    t = new_table(8)
    a = add_req(t, 1, 5)
    with pytest.raises(TypeError, match="int32"):
        t.gather(np.array([a.slot], dtype=np.int64))
    with pytest.raises(ValueError, match="no live request"):
        t.gather(np.array([5], dtype=np.int32))


# --------------------------------------------------------------------------- bad input


def _fill(t, n):
    return [add_req(t, 1000 + i, 3) for i in range(n)]


@pytest.mark.parametrize("call, exc, words", [
    (lambda t: add_req(t, 1, 5), ValueError, "duplicate request id 1"),
    (lambda t: add_req(t, 2, []), ValueError, "prompt must not be empty"),
    (lambda t: add_req(t, 2, 5, max_new=0), ValueError, "max_new_tokens"),
    (lambda t: add_req(t, 2, 5, beam_width=0), ValueError, "beam_width"),
    (lambda t: add_req(t, 2, 5, num_draft_tokens=-1), ValueError, "num_draft_tokens"),
    (lambda t: add_req(t, 2, 5, priority=1.5), ValueError, "priority"),
    (lambda t: add_req(t, 2, 5, lora_task_id=-5), ValueError, "lora_task_id"),
    (lambda t: add_req(t, -3, 5), ValueError, "request_id"),
    (lambda t: t.add_request(2, np.array([5, 2**31], dtype=np.int64), 3), ValueError, "2147483648 at index 1"),
    (lambda t: t.add_request(2, np.array([5, -2**31 - 1], dtype=np.int64), 3), ValueError, "int32 range"),
    (lambda t: t.add_request(2, np.array([2**32 - 1], dtype=np.uint32), 3), ValueError, "int32 range"),
    (lambda t: t.add_request(2, np.arange(5, dtype=np.float64), 3), TypeError, "integer values.*float64"),
    (lambda t: t.add_request(2, np.ones(5, dtype=bool), 3), TypeError, "integer values.*bool"),
    (lambda t: t.add_request(2, np.ones((2, 3), dtype=np.int32), 3), TypeError, "1-D"),
    (lambda t: t.add_request(2, "abc", 3), TypeError, "input_tokens"),
    (lambda t: t.add_request(2, [1, 2.5], 3), TypeError, "int"),
    (lambda t: t.add_request(2, [1, 2**40], 3), ValueError, "int32"),
], ids=["duplicate", "empty", "max_new0", "beam0", "draft_neg", "priority1.5", "lora-5", "id_neg",
        "int64_too_big", "int64_too_small", "uint32_too_big", "float_array", "bool_array", "2d", "str",
        "float_token", "token_range"])
def test_add_request_bad_input(call, exc, words):
    t = new_table(4)
    add_req(t, 1, 5)
    with pytest.raises(exc, match=words):
        call(t)
    assert len(t) == 1 and 2 not in t
    # Nothing leaked: id 2 and a slot are still available.
    r = add_req(t, 2, 5)
    assert r.request_id == 2 and len(t) == 2


@pytest.mark.parametrize("prompt", [
    np.arange(5, dtype=np.int64), np.arange(5, dtype=np.uint8), np.arange(5, dtype=np.int16),
    np.arange(10, dtype=np.int32)[::2] // 2, np.arange(10, dtype=np.int64)[::2] // 2, [0, 1, 2, 3, 4],
], ids=["int64", "uint8", "int16", "int32_strided", "int64_strided", "list"])
def test_add_request_takes_any_integer_prompt_whose_values_fit_int32(prompt):
    # A checked conversion: every value is read and range-checked, so the stored prompt is exact.
    t = new_table(4)
    r = t.add_request(2, prompt, 3)
    assert r.tokens.dtype == np.int32 and r.tokens.tolist() == [0, 1, 2, 3, 4]


def test_add_request_table_full():
    t = new_table(3)
    _fill(t, 3)
    with pytest.raises(ValueError, match="full"):
        add_req(t, 7, 5)
    assert len(t) == 3 and 7 not in t


def test_removed_request_handle_raises_but_tokens_view_survives():
    t = new_table(2)
    r = add_req(t, 7, toks(6, 40))
    r.add_new_token(99)
    view = r.tokens
    slot = r.slot
    t.remove_request(r)
    assert len(t) == 0 and 7 not in t
    assert not r.is_valid
    assert r.request_id == 7          # the id stays readable
    for attr in ("state", "prompt_len", "tokens", "slot", "context_chunk_size"):
        with pytest.raises(ValueError, match="removed"):
            getattr(r, attr)
    with pytest.raises(ValueError, match="removed"):
        r.add_new_token(1)
    assert "removed" in repr(r)
    assert view.tolist() == [40, 41, 42, 43, 44, 45, 99]
    # The slot is recycled for the next request; the old handle still refuses (generation check),
    # and the old view still shows the old tokens.
    q = add_req(t, 8, [1, 2, 3])
    assert q.slot == slot
    with pytest.raises(ValueError, match="removed"):
        r.state
    assert view.tolist() == [40, 41, 42, 43, 44, 45, 99]
    with pytest.raises(ValueError, match="removed"):
        t.remove_request(r)
    assert len(t) == 1


def test_remove_slots_is_all_or_nothing():
    t = new_table(4)
    a, b, c = add_req(t, 1, 5), add_req(t, 2, 5), add_req(t, 3, 5)
    kv = new_kv(t)
    kv.add_sequence(2, 5, 1, b)
    # b still holds a KV sequence: nothing is freed, a included (a is listed first).
    with pytest.raises(ValueError, match="^request 2 is still held by a KV cache or a RequestList$"):
        t.remove_slots(slots(a, b))
    assert len(t) == 3 and a.is_valid and b.is_valid
    rl = ts.RequestList(t)
    rl.append(c)
    with pytest.raises(ValueError, match="^request 3 is still held by a KV cache or a RequestList$"):
        t.remove_slots(slots(a, c))
    rl.remove(c)
    with pytest.raises(ValueError, match=f"^slot {a.slot} is listed twice$"):
        t.remove_slots(slots(a, c, a))
    assert len(t) == 3 and a.is_valid and c.is_valid
    a_slot = a.slot
    t.remove_slots(slots(c, a))
    assert len(t) == 1 and 1 not in t and 3 not in t and not a.is_valid and b.is_valid
    # a's slot is free now: listing it again is a dead slot, and nothing else is freed.
    kv.remove_sequence(2)
    with pytest.raises(ValueError, match="holds no live request"):
        t.remove_slots(np.array([b.slot, a_slot], dtype=np.int32))
    assert b.is_valid


def test_get_and_request_at():
    t = new_table(4)
    r = add_req(t, 9, 5)
    assert t.get(9).slot == r.slot and t.request_at(r.slot).request_id == 9
    with pytest.raises(ValueError, match="unknown request id 10"):
        t.get(10)
    with pytest.raises(ValueError, match="slot 3 holds no live request"):
        t.request_at(3)
    assert t.slot_of(9) == r.slot
