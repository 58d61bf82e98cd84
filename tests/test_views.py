"""tests/test_views.py: lifetime and aliasing of the zero-copy views (tokens, token_buffer, columns)."""

import gc
import subprocess
import sys

import pytest

import tllm_sched as ts
from tllm_sched.scheduler import BACKENDS
from utils import add_req, new_kv, new_table, toks


def ptr(a):
    return a.__array_interface__["data"][0]


def test_tokens_view_outlives_request_table_and_cache():
    t = new_table(4)
    kv = new_kv(t, 4, 8, 64, enable_block_reuse=True)
    r = add_req(t, 1, toks(6, 50), max_new=4)
    kv.add_sequence(1, 6, 1, r)
    r.add_new_token(77)
    kv.add_token(1)
    view = r.tokens
    assert view.tolist() == [50, 51, 52, 53, 54, 55, 77]
    assert not view.flags.writeable
    kv.remove_sequence(1, r)
    t.remove_request(r)
    del r, kv, t
    gc.collect()
    # Churn the allocator so freed memory would be reused if the view did not own its storage.
    junk = []
    for i in range(50):
        t2 = new_table(4)
        junk.append(t2)
        add_req(t2, i, [9999] * 7, max_new=4).add_new_token(9999)
    gc.collect()
    assert view.tolist() == [50, 51, 52, 53, 54, 55, 77]
    assert view.sum() == sum(range(50, 56)) + 77


def test_token_buffer_sees_appends_without_reallocation():
    t = new_table(2)
    r = add_req(t, 1, [1, 2, 3], max_new=5, num_draft_tokens=2)
    buf = r.token_buffer
    assert buf.shape == (3 + 5 + 2,)           # reserved once: prompt + max_new + drafts
    assert not buf.flags.writeable
    p = ptr(buf)
    assert ptr(r.tokens) == p
    before = r.tokens                           # length fixed when taken: 3
    for i in range(7):
        r.add_new_token(10 + i)
    assert buf[:10].tolist() == [1, 2, 3, 10, 11, 12, 13, 14, 15, 16]
    assert ptr(r.tokens) == p and ptr(r.token_buffer) == p
    assert r.tokens.shape == (10,) and before.shape == (3,)
    assert before.tolist() == [1, 2, 3]


def test_pause_truncation_keeps_the_buffer():
    t = new_table(2)
    r = add_req(t, 1, toks(10), max_new=5, state=ts.LlmRequestState.GENERATION_IN_PROGRESS)
    buf = r.token_buffer
    p = ptr(buf)
    for tok in (100, 101, 102):
        r.add_new_token(tok)
    old = r.tokens                               # 13 tokens
    r.pause(12)                                  # prompt 12 (see test_request_table): truncated to 12
    assert r.tokens.shape == (12,) and ptr(r.tokens) == p and ptr(r.token_buffer) == p
    assert r.tokens.tolist() == toks(10) + [100, 101]
    # A view is a window on the same storage: the next append rewrites position 12 in place.
    r.add_new_token(555)
    assert buf[12] == 555 and old[12] == 555 and r.tokens.tolist()[-1] == 555


def test_columns_outlive_the_table_object():
    t = new_table(4)
    r = add_req(t, 3, 5, max_new=2)
    cols = t.columns()
    slot = r.slot
    del t, r
    gc.collect()
    assert cols["request_id"][slot] == 3 and cols["prompt_len"][slot] == 5


def test_tokens_torch_shares_memory():
    torch = pytest.importorskip("torch")
    t = new_table(2)
    r = add_req(t, 1, [4, 5, 6], max_new=3)
    tt = r.tokens_torch()
    view = r.tokens
    assert tt.dtype == torch.int32 and tt.tolist() == [4, 5, 6]
    assert tt.data_ptr() == ptr(view)
    t.remove_request(r)
    del r, t
    gc.collect()
    assert tt.tolist() == [4, 5, 6]


def test_import_does_not_import_torch(tmp_path):
    code = "import sys, tllm_sched; assert 'torch' not in sys.modules, 'torch imported'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("contexts", [0, 2])
def test_scheduler_outputs_do_not_alias_the_active_list(backend, contexts):
    """Outputs are the caller's arrays: changing the list afterwards (removing the finished,
    appending arrivals) leaves them as they were. The list's `slots` is a live view, and the
    Python schedulers return slices, so they must slice a copy."""

    from tllm_sched.config import ChunkingConfig, SchedulerConfig
    from tllm_sched.scheduler import Scheduler

    t = new_table(16)
    kv = new_kv(t, 4, 64, 64)
    lst = ts.RequestList(t)
    for i in range(4):  # running generations: their context step is done
        r = add_req(t, i, toks(4, 10 * i), max_new=8)
        kv.add_sequence(i, 4, 1, r)
        r.move_to_next_context_chunk()
        r.set_state(ts.LlmRequestState.GENERATION_IN_PROGRESS)
        lst.append(r)
    for j in range(contexts):  # new arrivals at the end of the list
        lst.append(add_req(t, 10 + j, toks(6, 100 + j), max_new=2))
    cfg = SchedulerConfig(policy="GUARANTEED_NO_EVICT", max_num_requests=8, max_batch_size=8,
                          max_num_tokens=64, chunking=ChunkingConfig("FIRST_COME_FIRST_SERVED", 4))
    s = Scheduler(cfg, t, kv, backend=backend)
    out = s.schedule(lst)
    cap = s.schedule_capacity(lst)
    micro = s.schedule_micro(lst)
    arrays = [out.fitting, out.generation, out.context, *cap, *micro]
    kept = [a.tolist() for a in arrays]
    assert t.request_ids(out.generation).tolist() == [0, 1, 2, 3]
    lst.remove(t.get(0))  # the list shifts left
    lst.append(add_req(t, 99, toks(3), max_new=1))
    assert [a.tolist() for a in arrays] == kept


def test_free_block_counts_view_stays_current():
    """KVCacheManager.free_block_counts(): [num_free_blocks, num_free_secondary_blocks], read
    without a call, current after every change (the schedulers read it each step)."""
    t = new_table(4)
    kv = new_kv(t, 4, 8, 64, num_secondary_blocks=2)
    counts = kv.free_block_counts()
    assert counts.tolist() == [8, 2] and not counts.flags.writeable
    r = add_req(t, 1, toks(10), max_new=4)
    kv.add_sequence(1, 10, 1, r)  # 10 tokens, 4 per block: 3 blocks
    assert counts.tolist() == [5, 2] == [kv.num_free_blocks, kv.num_free_secondary_blocks]
    kv.remove_sequence(1, r)
    assert counts.tolist() == [8, 2]
    del kv
    gc.collect()
    assert counts.tolist() == [8, 2]  # the view keeps its manager alive
