"""tests/test_crossings.py: Python -> C++ crossings per scheduling step, asserted exactly (at most
8 per step, independent of the number of requests, plus one per pause).

Each expected count is the list of calls the batched Python scheduler makes, written out:
  - every step reads the active list's slots once (`RequestList.slots`), except a step handed
    whole to one C++ loop (block reuse without PEFT, below), which reads the list in place;
  - GUARANTEED_NO_EVICT with only running generations decides without any cache question
    (pass 1 admits them unconditionally and pass 2 is empty);
  - MAX_UTILIZATION: `start_scheduling` + `get_needed_blocks_one_step_sum` (when the whole list
    fits; otherwise also `get_needed_blocks_one_step_batch`);
  - with waiting contexts, GUARANTEED_NO_EVICT adds `get_remaining_blocks_to_completion_batch`
    (without reuse or PEFT: `get_remaining_blocks_to_completion_sum` for the running
    generations, the batch form for the contexts only; the fused split path asks one sum over
    the whole list and the contexts' batch only when they do not all fit; free blocks are read
    from a zero-copy view), block reuse adds `find_new_context_block_batch` (step A's keys with
    the first window's; a second window if admission gets past the first) except on the
    two-stage split path (running generations and contexts, no PEFT), where pass 2 with its keys
    is one `no_evict_split_fitting` in place of the remaining-blocks questions, PEFT adds
    `determine_num_pages_batch`, and chunked prefill commits chunk sizes and draft discards with
    one `set_context_chunk_sizes`;
  - each MAX_UTILIZATION pause adds one `scheduling_remove_sequence`, except with block reuse
    and no PEFT, where the whole loop (start_scheduling, keys, pauses) is one
    `max_utilization_fitting`.
The cpp backend makes exactly one call per step; python-naive makes several per request.
"""

import numpy as np
import pytest

import tllm_sched as ts
from tllm_sched.config import ChunkingConfig, SchedulerConfig
from tllm_sched.registry import CAPACITY_POLICIES, NO_KV_CACHE
from tllm_sched.scheduler import Scheduler


def _decoding(n, policy, backend, *, reuse=False, peft=False, chunking=None, contexts=0, budget=None, fused=False,
              prompt=lambda j: np.full(64, 7, dtype=np.int32), max_num_requests=None):
    """n running generations (their context step done), then `contexts` new requests (prompt(j))."""
    t = ts.RequestTable(n + contexts + 4)
    kv = ts.KVCacheManager(t, 16, (n + contexts) * 12 + 16, 1024, enable_block_reuse=reuse)
    pm = ts.PeftCacheManager(1, 1000) if peft else None
    lst = ts.RequestList(t)
    for i in range(n):
        lst.append(t.add_request(i, np.arange(i * 40, i * 40 + 40, dtype=np.int32), 100,  # unique prompts
                                 lora_task_id=(i % 3) if peft else None))
    cfg = SchedulerConfig(policy=policy, max_num_requests=max_num_requests or n + contexts, max_batch_size=n + contexts,
                          max_num_tokens=budget, chunking=chunking, fused=fused)
    # Everyone's context step, unbudgeted, then the scheduler under test on the same state.
    warm = Scheduler(SchedulerConfig(policy=policy, max_num_requests=n), t, kv, None, pm, backend="cpp")
    o = warm.schedule(lst)
    ts.SimExecutor(t, kv, None, 4096).apply(o.paused, o.fitting_disagg_gen_init, np.concatenate([o.context, o.generation]))
    s = Scheduler(cfg, t, kv, None, pm, backend=backend, count_crossings=True)
    for j in range(contexts):
        lst.append(t.add_request(n + j, prompt(j), 10))
    return s, lst


@pytest.mark.parametrize("n", [16, 4096])
@pytest.mark.parametrize("policy", CAPACITY_POLICIES)
def test_steady_decode(n, policy):
    """Each registry entry's decode_crossings (its calls are written out there)."""
    expected = CAPACITY_POLICIES[policy].decode_crossings
    s, lst = _decoding(n, policy, "python")
    for _ in range(3):
        out = s.schedule(lst)
        assert out.generation.size == n
        assert s.last_step_crossings == expected


@pytest.mark.parametrize("n", [16, 4096])
def test_steady_decode_without_a_kv_cache(n):
    """The max-requests path (NO_KV_CACHE): slots only."""
    t = ts.RequestTable(n)
    lst = ts.RequestList(t)
    for i in range(n):
        lst.append(t.add_request(i, np.ones(8, dtype=np.int32), 100))
    s = Scheduler(SchedulerConfig("GUARANTEED_NO_EVICT", n), t, None, backend="python", count_crossings=True)
    o = s.schedule(lst)
    ts.SimExecutor(t, None, None, 4096).apply(o.paused, o.fitting_disagg_gen_init, o.context)
    for _ in range(3):
        assert s.schedule(lst).generation.size == n
        assert s.last_step_crossings == NO_KV_CACHE.decode_crossings == 1


@pytest.mark.parametrize("n", [16, 4096])
def test_cpp_backend_is_one_call(n):
    s, lst = _decoding(n, "MAX_UTILIZATION", "cpp")
    s.schedule(lst)
    assert s.last_step_crossings == 1


# Mixed prefill + decode: n running generations and a few new contexts under chunked prefill.
# (policy, reuse, PEFT, new contexts, token budget beyond the generations' n, expected crossings,
# contexts scheduled), each with the calls written out. The new contexts share one prompt: with
# block reuse the first claims its first new block's key and the others wait for it (skipped).
MIXED = {
    # Everything on (PEFT: the general path). GNE: slots, remaining_batch,
    # find_new_context_block_batch, determine_num_pages_batch, set_context_chunk_sizes
    # (num_free_blocks is read from a zero-copy view: no call). One context: the other 7 are skipped.
    "gne-everything": ("GUARANTEED_NO_EVICT", True, True, 8, 40, 5, 1),
    # MU: slots, start_scheduling, find_new_context_block_batch, needed_batch,
    # determine_num_pages_batch, set_context_chunk_sizes. One context, as above.
    "mu-everything": ("MAX_UTILIZATION", True, True, 8, 40, 6, 1),
    # The serving steady state (split paths). GNE: slots, get_remaining_blocks_to_completion_sum
    # (generations), get_remaining_blocks_to_completion_batch (contexts), set_context_chunk_sizes.
    # 100 tokens: the first context (64) whole, the second 32.
    "gne-split": ("GUARANTEED_NO_EVICT", False, False, 3, 100, 4, 2),
    # MU: slots, start_scheduling, get_needed_blocks_one_step_sum, set_context_chunk_sizes.
    "mu-split": ("MAX_UTILIZATION", False, False, 3, 100, 4, 2),
    # GNE split with block reuse: no_evict_split_fitting (the list read in place, pass 2 with its
    # keys and claims, one C++ call whatever the number of contexts), set_context_chunk_sizes. The
    # three contexts share a prompt: the first claims its first new block's key, the other two
    # wait for it (skipped).
    "gne-split-reuse": ("GUARANTEED_NO_EVICT", True, False, 3, 100, 2, 1),
}


@pytest.mark.parametrize("n", [16, 4096])
@pytest.mark.parametrize("case", MIXED)
def test_mixed_prefill(n, case):
    policy, reuse, peft, contexts, budget, expected, scheduled = MIXED[case]
    chunking = ChunkingConfig("FIRST_COME_FIRST_SERVED", 16)
    s, lst = _decoding(n, policy, "python", reuse=reuse, peft=peft, chunking=chunking, contexts=contexts,
                       budget=n + budget)
    out = s.schedule(lst)
    assert out.generation.size == n
    assert out.context.size == scheduled
    assert s.last_step_crossings == expected <= 8


@pytest.mark.parametrize("backend", ["python", "cpp"])
def test_reuse_reads_the_list_only_when_the_cpp_loop_declines(backend):
    """With block reuse the GNE split path hands the step to no_evict_split_fitting, which reads
    the list in place: a decode step is that one call. When the loop declines, changing nothing
    (the running generations reach max_num_requests, so pass 1 may cut the list), the general
    path reads the slots (`RequestList.slots`): two calls, and the decisions of cpp (every
    generation, no context)."""
    s, lst = _decoding(16, "GUARANTEED_NO_EVICT", backend, reuse=True, max_num_requests=17)
    for _ in range(2):  # the first step also checks the list's table once
        assert s.schedule(lst).generation.size == 16
    assert s.last_step_crossings == 1
    s, lst = _decoding(16, "GUARANTEED_NO_EVICT", backend, reuse=True, contexts=2, max_num_requests=16,
                       chunking=ChunkingConfig("FIRST_COME_FIRST_SERVED", 16), budget=1000)
    for _ in range(2):
        out = s.schedule(lst)
    assert (out.generation.size, out.context.size, out.fitting.size) == (16, 0, 16)
    assert s.last_step_crossings == (2 if backend == "python" else 1)


def test_each_pause_adds_one_crossing():
    # MAX_UTILIZATION, 5 blocks: 4 requests of 16 tokens hold 1 block each (1 free). Their next
    # token opens a second block each: request 0 takes the free block; request 1 fails, so the
    # last started request (3) is paused (2 free), and the retry of 1 fits; request 2 fails,
    # and the last started request in [2, 3) is 2 itself: paused, the loop ends.
    # slots, start_scheduling, get_needed_blocks_one_step_sum (the list does not fit), then
    # get_needed_blocks_one_step_batch, + 2 pauses.
    t = ts.RequestTable(8)
    kv = ts.KVCacheManager(t, 16, 5, 64)
    lst = ts.RequestList(t)
    for i in range(4):
        lst.append(t.add_request(i, np.ones(16, dtype=np.int32), 30))
    cfg = SchedulerConfig(policy="MAX_UTILIZATION", max_num_requests=8)
    s = Scheduler(cfg, t, kv, backend="python", count_crossings=True)
    ex = ts.SimExecutor(t, kv, None, 4096)
    o = s.schedule(lst)
    ex.apply(o.paused, o.fitting_disagg_gen_init, np.concatenate([o.context, o.generation]))
    assert kv.num_free_blocks == 1  # 4 blocks held; KV tokens 16 each: the next token opens block 2
    o = s.schedule(lst)
    assert t.request_ids(o.paused).tolist() == [3, 2]
    assert t.request_ids(o.generation).tolist() == [0, 1]
    assert s.last_step_crossings == 4 + 2


@pytest.mark.parametrize("n", [16, 64])
@pytest.mark.parametrize("policy", ["GUARANTEED_NO_EVICT", "MAX_UTILIZATION"])
def test_naive_baseline_crosses_per_request(n, policy):
    """15 calls per request, what the batched scheduler removes. Per step: the list's
    `requests()`, `enable_block_reuse` (the skipper), and GNE `num_free_blocks` or MU
    `start_scheduling`. Per running generation: capacity 4 (`state_value`; GNE
    `is_generation_in_progress_state`, `get_remaining_blocks_to_completion`, `lora_task_id`; MU
    `lora_task_id`, `get_needed_blocks_one_step`, `scheduling_has_free_blocks`), the disagg split
    2 (`is_disagg_generation_init_state` twice), micro-batch 7 (`state_value`, `request_id`,
    `is_encoder_init_state`, `is_context_init_state`, `get_beam_width_by_iter`,
    `num_draft_tokens`, `lora_task_id` for the sort), output slots 2 (`slot` in fitting and in
    generation)."""
    s, lst = _decoding(n, policy, "python-naive")
    s.schedule(lst)
    assert s.last_step_crossings == 3 + 15 * n


# ------------------------------------------------------------------ the fused mode (policies/fused.py)

@pytest.mark.parametrize("n", [16, 4096])
@pytest.mark.parametrize("policy", CAPACITY_POLICIES)
def test_fused_steady_decode(n, policy):
    """The registry's decode_crossings hold in the fused mode too: GNE/STATIC pass 1 takes the
    generations with one sum of token counts (no cache question: pass 2 is empty); MU asks
    start_scheduling and get_needed_blocks_one_step_sum, as in the two-stage mode."""
    s, lst = _decoding(n, policy, "python", fused=True)
    for _ in range(3):
        assert s.schedule(lst).generation.size == n
        assert s.last_step_crossings == CAPACITY_POLICIES[policy].decode_crossings


# case of MIXED: fused crossings, each with its calls written out.
FUSED_MIXED = {
    # slots, remaining_batch (the whole list: PEFT), determine_num_pages_batch, find_new_context_block_batch
    # (the first window), set_context_chunk_sizes.
    "gne-everything": 5,
    # slots, start_scheduling, needed_batch, determine_num_pages_batch, find_new_context_block_batch
    # (every candidate from the first skip check on), set_context_chunk_sizes.
    "mu-everything": 6,
    # slots, remaining_sum (the whole list: the generations' and contexts' blocks all fit),
    # set_context_chunk_sizes.
    "gne-split": 3,
    # slots, start_scheduling, get_needed_blocks_one_step_sum, set_context_chunk_sizes.
    "mu-split": 4,
    # slots, remaining_batch (generations and contexts in one call), find_new_context_block_batch
    # (the first window), set_context_chunk_sizes.
    "gne-split-reuse": 4,
}


@pytest.mark.parametrize("n", [16, 4096])
@pytest.mark.parametrize("case", FUSED_MIXED)
def test_fused_mixed_prefill(n, case):
    policy, reuse, peft, contexts, budget, _, scheduled = MIXED[case]
    s, lst = _decoding(n, policy, "python", reuse=reuse, peft=peft, chunking=ChunkingConfig("FIRST_COME_FIRST_SERVED", 16),
                       contexts=contexts, budget=n + budget, fused=True)
    out = s.schedule(lst)
    assert (out.generation.size, out.context.size) == (n, scheduled)
    assert s.last_step_crossings == FUSED_MIXED[case] <= 8


@pytest.mark.parametrize("fused", [False, True])
def test_a_waiting_queue_costs_one_call_when_not_empty(fused):
    # n running generations, max_num_active_requests n + 1, one request waiting: the step moves it
    # (one WaitingQueue.fetch) and schedules it. The next step, with the queue empty, reads the
    # queue's length from its zero-copy view: no call.
    n = 16
    t = ts.RequestTable(n + 1)
    kv = ts.KVCacheManager(t, 16, 64, 1024)
    lst = ts.RequestList(t)
    for i in range(n):
        lst.append(t.add_request(i, np.ones(8, dtype=np.int32), 4))
    cfg = SchedulerConfig("GUARANTEED_NO_EVICT", n + 1, fused=fused, waiting_queue_policy="FCFS")
    s = Scheduler(cfg, t, kv, backend="python", count_crossings=True)
    o = s.schedule(lst)
    ts.SimExecutor(t, kv, None, 4096).apply(o.paused, o.fitting_disagg_gen_init, o.context)  # all generating now
    s.waiting_queue.add_requests(t.add_request(99, np.ones(8, dtype=np.int32), 4))
    out = s.schedule(lst)
    assert out.context.size == 1 and len(lst) == n + 1
    # slots, fetch, remaining_sum, remaining_batch (one context, no chunking: nothing to commit);
    # fused: one remaining_sum over the whole list says the context's blocks fit (no batch).
    assert s.last_step_crossings == 4 - fused
    s.schedule(lst)
    assert s.last_step_crossings == 4 - fused - 1


def test_the_fused_cpp_backend_is_one_call():
    s, lst = _decoding(64, "MAX_UTILIZATION", "cpp", fused=True)
    s.schedule(lst)
    assert s.last_step_crossings == 1


# (policy, PEFT, fused): expected crossings, written out in the test's docstring.
KEY_WINDOW_CASES = {("GUARANTEED_NO_EVICT", True, False): 8, ("MAX_UTILIZATION", True, False): 8,
                    ("GUARANTEED_NO_EVICT", False, False): 2, ("MAX_UTILIZATION", False, False): 2,
                    ("GUARANTEED_NO_EVICT", False, True): 8, ("MAX_UTILIZATION", False, True): 8}


@pytest.mark.parametrize("policy,peft,fused", KEY_WINDOW_CASES)
def test_key_windows_stay_within_the_budget(policy, peft, fused, monkeypatch):
    """Skipping lets admission past window after window. With windows of two keys (the
    thresholds lowered), the key questions a step can afford run out and the last one takes the
    rest of the list: 8 crossings with PEFT (the general paths; GNE: slots, remaining_batch,
    determine_num_pages_batch, 4 key windows, set_context_chunk_sizes; MU: slots,
    start_scheduling, needed_batch, determine_num_pages_batch, 3 key windows,
    set_context_chunk_sizes), and the decisions of cpp. Without PEFT the two-stage mode asks no
    window and reads no slots: no_evict_split_fitting (GNE's split path) or
    max_utilization_fitting (MU's loop), each reading the list in place, then
    set_context_chunk_sizes. The fused mode without PEFT still asks windows, 8 crossings
    (GNE: slots, one remaining-blocks question over generations and contexts, 5 key windows,
    set_context_chunk_sizes; MU: slots, start_scheduling, needed_batch, 4 key windows,
    set_context_chunk_sizes; MU walks the tracker over the windows' block-fitting prefix)."""
    from tllm_sched.policies import reuse_skipping

    monkeypatch.setattr(reuse_skipping, "WINDOW_CAP", 2)
    n, contexts = 16, 40
    chunking = ChunkingConfig("FIRST_COME_FIRST_SERVED", 16)
    decided = {}
    for backend in ("cpp", "python"):
        # Pairs share a prompt: the second of each pair waits for the first.
        s, lst = _decoding(n, policy, backend, reuse=True, peft=peft, chunking=chunking, contexts=contexts,
                           budget=n + 10_000, prompt=lambda j: np.full(64, 1000 + j // 2, dtype=np.int32), fused=fused)
        t = lst.table
        out = s.schedule(lst)
        decided[backend] = (t.request_ids(out.context).tolist(), sorted(t.request_ids(out.generation).tolist()))
        if backend == "python":
            assert s.last_step_crossings == KEY_WINDOW_CASES[policy, peft, fused]
    assert decided["python"] == decided["cpp"]
    assert decided["cpp"][0] == list(range(n, n + contexts, 2))
