"""tests/test_executor.py: the executor's step API (ext/executor.h) and the batched block tables,
slot mapping and inputs it fills (ext/block_tables.h), against hand-computed layouts.

The layouts below follow from the block pool's rules: every block starts free in ascending id order,
a new block comes from the front of the free queue, a released block goes to its back (a sequence
releases its blocks last to first), full blocks of a prompt's first prompt_len - 1 tokens are stored
for reuse when its last chunk ends, and all its blocks when it completes. A slot is
block_id * tokens_per_block + position % tokens_per_block.
"""

from __future__ import annotations

import numpy as np
import pytest

import tllm_sched as ts
from tllm_sched.backend import SchedulerOutput
from tllm_sched.config import SchedulerConfig
from tllm_sched.scheduler import Scheduler
from utils import full_snapshot

S = ts.LlmRequestState
I32 = lambda *a: np.array(a, dtype=np.int32)  # noqa: E731
E32 = I32()
P = list(range(10, 20))  # a 10-token prompt: 2.5 blocks of 4


def step(context=(), generation=(), paused=(), disagg=()):
    """A scheduler output naming these requests (handles)."""
    return SchedulerOutput(E32, I32(*[r.slot for r in disagg]), I32(*[r.slot for r in paused]),
                           I32(*[r.slot for r in context]), I32(*[r.slot for r in generation]))


class Loop:
    """A table, a reuse-enabled cache of 16 blocks of 4 tokens, an Executor and caller-owned buffers."""

    WIDTH = 6

    def __init__(self, blocks=16, **kv_kw):
        self.t = ts.RequestTable(8)
        self.kv = ts.KVCacheManager(self.t, 4, blocks, 64, enable_block_reuse=True, **kv_kw)
        self.ex = ts.Executor(self.t, self.kv)
        self.reqs = []

    def add(self, rid, prompt, max_new=4):
        r = self.t.add_request(rid, prompt, max_new)
        self.reqs.append(r)
        return r

    def layout(self):
        """Everything the prepared step tells the model, as lists (a fresh buffer per call, pre-filled
        with -7 to show what is written and what is left alone: block-table columns past the step's
        widest row stay -7)."""
        ex = self.ex
        table = np.full((6, self.WIDTH), -7, dtype=np.int32)
        slots = np.full(40, -7, dtype=np.int64)
        ids, pos = np.full(40, -7, dtype=np.int32), np.full(40, -7, dtype=np.int32)
        qlen, klen = np.full(6, -7, dtype=np.int32), np.full(6, -7, dtype=np.int32)
        rows = ex.block_tables(table)
        n = ex.slot_mapping(slots)
        assert ex.token_inputs(ids, pos) == n == ex.num_tokens
        assert ex.sequence_lengths(qlen, klen) == rows == ex.num_rows
        assert (table[rows:] == -7).all() and (slots[n:] == -7).all() and (ids[n:] == -7).all()
        return dict(rows=self.t.request_ids(ex.rows).tolist(), tables=table[:rows].tolist(), slots=slots[:n].tolist(),
                    ids=ids[:n].tolist(), positions=pos[:n].tolist(), query_lens=qlen[:rows].tolist(),
                    seq_lens=klen[:rows].tolist(), copies=ex.block_copies().tolist())

    def snap(self):
        return full_snapshot(self.t, self.kv, [], self.reqs)


def test_layouts_reused_prefix_partial_copy_partial_last_block_and_pause_resume():
    w = Loop()
    a = w.add(1, P)
    # Step 1: A's whole prompt. Blocks 0, 1, 2 from the queue front; the last one holds 2 tokens.
    w.ex.prepare(step(context=[a]))
    assert w.layout() == dict(rows=[1], tables=[[0, 1, 2, -7, -7, -7]], slots=list(range(10)), ids=P,
                              positions=list(range(10)), query_lens=[10], seq_lens=[10], copies=[])
    assert w.ex.commit([100]).tolist() == []          # A stores blocks 0 [10..13] and 1 [14..17]
    assert a.state == S.GENERATION_IN_PROGRESS and a.get_tokens() == P + [100]

    # Step 2: B has A's prompt: blocks 0 and 1 are shared (8 tokens reused), its last 2 tokens go to
    # a fresh block 3. C shares 6 tokens: block 0 fully, then 2 of block 1's 4 tokens; block 1 is held,
    # so those 2 tokens are copied into fresh block 4, and C's last token opens block 5. A feeds its
    # token 100 at position 10: block 2, offset 2.
    b = w.add(2, P)
    c = w.add(3, P[:6] + [50, 51, 52, 53])
    w.ex.prepare(step(context=[b, c], generation=[a]))
    assert (b.prepopulated_prompt_len, c.prepopulated_prompt_len) == (8, 6)
    assert w.layout() == dict(
        rows=[2, 3, 1],
        tables=[[0, 1, 3, -7, -7, -7], [0, 4, 5, -7, -7, -7], [0, 1, 2, -7, -7, -7]],
        slots=[3 * 4 + 0, 3 * 4 + 1, 4 * 4 + 2, 4 * 4 + 3, 5 * 4 + 0, 5 * 4 + 1, 2 * 4 + 2],
        ids=[18, 19, 50, 51, 52, 53, 100],
        positions=[8, 9, 6, 7, 8, 9, 10],
        query_lens=[2, 4, 1], seq_lens=[10, 10, 11],
        copies=[[1, 4, 2]])                            # block 1's first 2 positions into block 4
    assert w.ex.commit(np.array([200, 300, 101], dtype=np.int64)).tolist() == []

    # Step 3: three generations, each inside its partly filled last block.
    w.ex.prepare(step(generation=[a, b, c]))
    assert w.layout() == dict(rows=[1, 2, 3], tables=[[0, 1, 2, -7, -7, -7], [0, 1, 3, -7, -7, -7], [0, 4, 5, -7, -7, -7]],
                              slots=[2 * 4 + 3, 3 * 4 + 2, 5 * 4 + 2], ids=[101, 200, 300], positions=[11, 10, 10],
                              query_lens=[1, 1, 1], seq_lens=[12, 11, 11], copies=[])
    w.ex.commit([102, 201, 301])

    # Step 4: A's position 12 opens block 6 (the queue front); then A completes (4 new tokens) and
    # stores all its blocks: 2 [18, 19, 100, 101] under 1, and 6 [102] under 2. It releases 6 and 2
    # (to the queue's back); 1 and 0 stay held by B and C.
    w.ex.prepare(step(generation=[a]))
    assert w.layout()["tables"] == [[0, 1, 2, 6, -7, -7]] and w.layout()["slots"] == [6 * 4 + 0]
    assert w.ex.commit([103]).tolist() == [a.slot]
    assert a.state == S.GENERATION_COMPLETE and not w.kv.has_sequence(1)
    assert w.kv.free_queue(0).tolist()[-2:] == [6, 2]

    # Step 5: B is paused: its blocks go back without being stored (3, then 1; 0 is still C's) and it
    # restarts as a 12-token context (its prompt and the 2 tokens it generated). C feeds 301.
    w.ex.prepare(step(paused=[b], generation=[c]))
    assert b.state == S.CONTEXT_INIT and b.prompt_len == 12 and b.max_new_tokens == 2
    assert not w.kv.has_sequence(2) and w.kv.free_queue(0).tolist()[-4:] == [6, 2, 3, 1]
    assert w.layout() == dict(rows=[3], tables=[[0, 4, 5, -7, -7, -7]], slots=[5 * 4 + 3], ids=[301], positions=[11],
                              query_lens=[1], seq_lens=[12], copies=[])
    w.ex.commit([302])

    # Step 6: B resumes. Blocks 0 (held by C) and 1 (free, still cached) match fully; of block 2
    # (cached, free, with child 6) 2 tokens match, so they are copied into the queue front, 7. B
    # recomputes positions 10 and 11 (its generated tokens 200, 201). C's position 12 opens block 8.
    # B's row is padded with 0 up to C's 4 blocks, the step's widest row.
    w.ex.prepare(step(context=[b], generation=[c]))
    assert b.prepopulated_prompt_len == 10
    assert w.layout() == dict(rows=[2, 3], tables=[[0, 1, 7, 0, -7, -7], [0, 4, 5, 8, -7, -7]],
                              slots=[7 * 4 + 2, 7 * 4 + 3, 8 * 4 + 0], ids=[200, 201, 302], positions=[10, 11, 12],
                              query_lens=[2, 1], seq_lens=[12, 13], copies=[[2, 7, 2]])
    assert sorted(w.ex.commit([202, 303]).tolist()) == [c.slot]  # C: 4 tokens; B: 1 of its 2
    assert b.get_tokens() == P + [200, 201, 202]
    w.kv.check_invariants()


def test_chunked_context_rows_write_their_chunk_only():
    w = Loop()
    a = w.add(1, list(range(100, 114)))               # 14 tokens: 4 blocks
    a.context_chunk_size = 6
    w.ex.prepare(step(context=[a]))
    assert w.layout() == dict(rows=[1], tables=[[0, 1, 2, 3, -7, -7]], slots=list(range(6)), ids=list(range(100, 106)),
                              positions=list(range(6)), query_lens=[6], seq_lens=[6], copies=[])
    assert w.ex.commit([-1]).tolist() == [] and a.get_tokens() == list(range(100, 114))  # token ignored
    assert a.context_current_position == 6 and a.context_chunk_size == 6
    w.ex.prepare(step(context=[a]))                    # the next chunk: positions 6..11, the blocks it had
    assert w.layout()["slots"] == list(range(6, 12)) and w.layout()["tables"] == [[0, 1, 2, 3, -7, -7]]
    w.ex.commit([0])
    a.context_chunk_size = 6
    w.ex.prepare(step(context=[a]))                    # clamped to the 2 tokens left: the last chunk
    assert w.layout()["positions"] == [12, 13] and w.layout()["slots"] == [12, 13]
    w.ex.commit([7])
    assert a.state == S.GENERATION_IN_PROGRESS and a.get_tokens()[-1] == 7


def test_torch_buffers_are_filled_in_place_and_torch_tokens_are_committed():
    torch = pytest.importorskip("torch")
    w = Loop()
    a = w.add(1, P)
    w.ex.prepare(step(context=[a]))
    table = torch.full((2, 6), -7, dtype=torch.int32)
    slots = torch.zeros(16, dtype=torch.int64)
    assert w.ex.block_tables(table) == 1 and w.ex.slot_mapping(slots[4:]) == 10  # a view: an offset buffer
    assert table.tolist() == [[0, 1, 2, -7, -7, -7], [-7] * 6] and slots.tolist() == [0] * 4 + list(range(10)) + [0, 0]
    assert w.ex.block_tables(table[:, :3]) == 1                 # a column slice: row stride 6, width 3
    w.ex.commit(torch.tensor([100]))                             # int64, checked
    assert a.get_tokens()[-1] == 100


# ----------------------------------------------------------------------------- refusals, all or nothing

def prepared_world():
    """A generating, B waiting for its first chunk, nothing prepared."""
    w = Loop(blocks=6)
    a = w.add(1, P)
    w.ex.prepare(step(context=[a]))
    w.ex.commit([100])
    b = w.add(2, list(range(40, 50)))
    return w, a, b


@pytest.mark.parametrize("make, exc, words", [
    (lambda w, a, b: step(context=[a]), ValueError, "listed as a context request but is in state 13"),
    (lambda w, a, b: step(generation=[b]), ValueError, "listed as a generation request"),
    (lambda w, a, b: step(context=[b], paused=[b]), ValueError, "listed twice"),
    (lambda w, a, b: step(context=[b, b]), ValueError, "listed twice"),
    (lambda w, a, b: SchedulerOutput(E32, E32, E32, I32(99), E32), ValueError, "slot 99"),
    (lambda w, a, b: step(context=[b, w.add(3, list(range(60, 70)))], generation=[a]), ValueError,
     "may need 6 KV-cache blocks and there would be 3 free"),
    (lambda w, a, b: SchedulerOutput(E32, E32, E32, [b.slot], E32), TypeError, "context: expected a 1-D int32 numpy"),
    (lambda w, a, b: SchedulerOutput(E32, E32, E32, np.array([b.slot]), E32), TypeError, "int32"),
    (lambda w, a, b: (a, b), TypeError, "expected the Scheduler's output"),
    (lambda w, a, b: (a.set_num_draft_tokens(2), step(generation=[a]))[1], ValueError,
     "request 1 has 2 draft tokens: speculative decoding is not supported by the step API"),
], ids=["context_generating", "generation_waiting", "paused_and_run", "twice", "dead_slot", "no_blocks", "list",
        "int64", "not_an_output", "drafts"])
def test_prepare_refuses_bad_steps_and_changes_nothing(make, exc, words):
    w, a, b = prepared_world()
    scheduled = make(w, a, b)
    before = w.snap()
    with pytest.raises(exc, match=words):
        w.ex.prepare(scheduled)
    assert w.snap() == before and not w.ex.has_prepared_step
    w.kv.check_invariants()
    a.set_num_draft_tokens(0)
    w.ex.prepare(step(context=[b], generation=[a]))   # nothing lost: the valid step still runs
    w.ex.commit([1, 2])
    assert a.get_tokens()[-2:] == [100, 2] and b.state == S.GENERATION_IN_PROGRESS


@pytest.mark.parametrize("tokens, exc, words", [
    ([1], ValueError, r"expected 2 tokens \(one per row: 1 context, 1 generation"),
    ([1, 2, 3], ValueError, "expected 2 tokens"),
    (np.array([1, 2**31], dtype=np.int64), ValueError, "2147483648 at index 1 is outside the int32 range"),
    (np.array([1.0, 2.0]), TypeError, "integer values, got an array of dtype float64"),
    ([1, "x"], TypeError, "every value must be an int"),
    (None, TypeError, "expected a list of ints or a 1-D integer array"),
], ids=["short", "long", "out_of_range", "float", "str", "none"])
def test_commit_refuses_bad_tokens_and_changes_nothing(tokens, exc, words):
    w, a, b = prepared_world()
    w.ex.prepare(step(context=[b], generation=[a]))
    before = w.snap()
    with pytest.raises(exc, match=words):
        w.ex.commit(tokens)
    assert w.snap() == before and w.ex.has_prepared_step
    w.ex.commit([1, 2])                                # the step is still there, committed once
    assert not w.ex.has_prepared_step and a.get_tokens()[-1] == 2


def test_commit_refuses_a_table_changed_after_prepare():
    w, a, b = prepared_world()
    w.ex.prepare(step(context=[b], generation=[a]))
    b.context_chunk_size = 3                           # the user changed the step under the executor
    before = w.snap()
    with pytest.raises(ValueError, match="request 2 changed between prepare and commit"):
        w.ex.commit([1, 2])
    assert w.snap() == before


def test_disagg_generation_init_gets_blocks_and_its_transferred_first_token():
    # Its prompt ran on a context server: prepare gives it the prompt's blocks (before the rows'), it
    # is no row of the model's batch, and its first token comes after the rows' tokens in commit.
    w = Loop()
    a = w.add(1, P)
    d = w.t.add_request(2, list(range(30, 36)), 3, state=S.DISAGG_GENERATION_INIT)
    w.ex.prepare(step(context=[a], disagg=[d]))
    assert w.kv.get_cache_block_ids(2).tolist() == [0, 1] and w.kv.get_cache_block_ids(1).tolist() == [2, 3, 4]
    assert w.ex.num_rows == 1
    assert w.layout()["rows"] == [1]
    with pytest.raises(ValueError, match=r"expected 2 tokens .*then one per disagg-generation-init request: 1"):
        w.ex.commit([100])
    w.ex.commit([100, 77])
    assert d.state == S.GENERATION_IN_PROGRESS and d.get_tokens() == list(range(30, 36)) + [77]
    w.ex.prepare(step(generation=[a, d]))             # d now generates like any other request
    assert w.layout()["slots"] == [4 * 4 + 2, 1 * 4 + 2] and w.layout()["ids"] == [100, 77]


def test_one_step_at_a_time():
    w, a, b = prepared_world()
    with pytest.raises(ValueError, match="no step is prepared; call prepare"):
        w.ex.commit([])
    with pytest.raises(ValueError, match="no step is prepared"):
        w.ex.block_tables(np.zeros((2, 6), np.int32))
    w.ex.prepare(step(generation=[a]))
    before = w.snap()
    with pytest.raises(ValueError, match="was not committed; call commit"):
        w.ex.prepare(step(context=[b]))
    assert w.snap() == before


@pytest.mark.parametrize("call, exc, words", [
    (lambda ex: ex.block_tables(np.zeros((4, 6), np.int64)), TypeError, "2-D int32 .*got dtype int64"),
    (lambda ex: ex.block_tables(np.zeros(24, np.int32)), TypeError, "2-D int32 .*got 1-D"),
    (lambda ex: ex.block_tables(np.zeros((6, 4), np.int32).T), TypeError, "rows must be contiguous"),
    (lambda ex: ex.block_tables(np.zeros((4, 2), np.int32)), ValueError, "holds 3 blocks, the buffer has 2 columns"),
    (lambda ex: ex.block_tables(np.zeros((1, 6), np.int32)), ValueError, "room for 1 rows, this step needs 2"),
    (lambda ex: ex.block_tables([[0] * 6] * 4), TypeError, "numpy array or torch tensor in host memory, got list"),
    (lambda ex: ex.slot_mapping(np.zeros(2, np.int32)), ValueError, "room for 2 tokens, this step needs 11"),
    (lambda ex: ex.slot_mapping(np.zeros(20, np.float32)), TypeError, "int32 or int64"),
    (lambda ex: ex.slot_mapping(np.zeros(40, np.int32)[::2]), TypeError, "contiguous"),
    (lambda ex: ex.token_inputs(np.zeros(20, np.int64), None), TypeError, "input_ids: expected a 1-D int32"),
    (lambda ex: ex.sequence_lengths(None, np.zeros(1, np.int32)), ValueError, "seq_lens: the buffer has room for 1"),
], ids=["table_int64", "table_1d", "table_transposed", "table_narrow", "table_short", "table_list", "slots_short",
        "slots_float", "slots_strided", "ids_int64", "lens_short"])
def test_buffers_are_checked_before_anything_is_written(call, exc, words):
    w, a, b = prepared_world()
    w.ex.prepare(step(context=[b], generation=[a]))
    with pytest.raises(exc, match=words):
        call(w.ex)


def test_read_only_buffer_is_refused_and_left_alone():
    w, a, b = prepared_world()
    w.ex.prepare(step(generation=[a]))
    buf = np.full((2, 6), -7, np.int32)
    buf.flags.writeable = False
    with pytest.raises(TypeError, match="read-only"):
        w.ex.block_tables(buf)
    assert (buf == -7).all()


def test_executor_refuses_caches_whose_blocks_are_not_device_memory():
    t = ts.RequestTable(4)
    with pytest.raises(ValueError, match="num_secondary_blocks > 0"):
        ts.Executor(t, ts.KVCacheManager(t, 4, 8, 32, num_secondary_blocks=2))
    with pytest.raises(ValueError, match="must not be None"):
        ts.Executor(t, None)


# ----------------------------------------------------------------------------- SimExecutor is this API

def test_sim_executor_and_step_api_make_the_same_decisions_without_reuse():
    """Without reuse, the replay order (request by request) and the real loop's order (all blocks
    before the model, all commits after it) leave the same counts, so the scheduler decides alike
    step by step, pauses included."""
    def world():
        t = ts.RequestTable(32)
        kv = ts.KVCacheManager(t, 4, 24, 64)
        lst = ts.RequestList(t)
        sched = Scheduler(SchedulerConfig("MAX_UTILIZATION", 6, max_num_tokens=24), t, kv, backend="cpp")
        return t, kv, lst, sched

    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, 50, int(rng.integers(3, 20))).tolist() for _ in range(12)]
    logs = []
    for real in (False, True):
        t, kv, lst, sched = world()
        sim = ts.SimExecutor(t, kv, None, 64)
        ex = ts.Executor(t, kv)
        log, pauses = [], 0
        for it in range(200):
            if it < len(prompts):
                lst.append(t.add_request(it, prompts[it], 12))
            if not len(lst):
                break
            out = sched.schedule(lst)
            pauses += len(out.paused)
            if real:
                ex.prepare(out)
                finished = ex.commit(np.ones(ex.num_rows, np.int32))
            else:
                finished = sim.apply(out.paused, out.fitting_disagg_gen_init, np.concatenate([out.context, out.generation]))
            log.append((t.request_ids(out.context).tolist(), t.request_ids(out.generation).tolist(),
                        t.request_ids(out.paused).tolist(), sorted(t.request_ids(finished).tolist()), kv.num_free_blocks))
            lst.remove_slots(finished)
            t.remove_slots(finished)
        logs.append(log)
        assert pauses > 0 and not len(lst)
    assert logs[0] == logs[1]


def test_executor_cost_bench_runs_and_both_executors_decide_alike(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "executor_cost.py"
    out = tmp_path / "cost.json"
    proc = subprocess.run([sys.executable, str(script), "--active", "64", "--steps", "20", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["results"]
    assert [(r["workload"], r["n_active"]) for r in rows] == [("decode", 64), ("mixed", 64)]
    for r in rows:
        assert r["decisions_match"] and r["steps"] == 20
        assert 0 < r["fills"]["median_us"] < r["step_api"]["median_us"] and r["sim_apply"]["median_us"] > 0
