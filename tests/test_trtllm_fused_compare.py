"""tests/test_trtllm_fused_compare.py: bench/trtllm_fused_compare.py, the comparison with TensorRT-LLM's fused scheduler.

What runs everywhere: the command line's refusals (exit 2, one line), the adapters reading and
writing our table and answering from our caches (values derived by hand), the loading of a
checkout with the stand-ins injected (and sys.modules left as found), and the whole step loop
against two fake checkouts whose `UnifiedScheduler` is our own fused scheduler: unchanged it agrees
at every step (exit 0), with num_fitting off by one from its third step it is caught there (exit 1);
likewise a fake waiting_queue.py that serves by priority agrees and one that serves first-come is caught.
The real comparison runs when TLLM_TRTLLM_SRC names a TensorRT-LLM checkout.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tllm_sched as ts

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "trtllm_fused_compare.py"
TRTLLM_SRC = os.environ.get("TLLM_TRTLLM_SRC")


def _load():
    spec = importlib.util.spec_from_file_location("tllm_bench_trtllm_fused_compare", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


h = _load()


def cli(capsys, *args):
    code = h.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------- bad input: exit 2, one line


def test_missing_checkout_exits_2_with_one_line(capsys, tmp_path):
    code, out, err = cli(capsys, "--trtllm-src", str(tmp_path / "nowhere"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "not a directory" in err


def test_a_directory_without_the_scheduler_files_exits_2(capsys, tmp_path):
    code, _, err = cli(capsys, "--trtllm-src", str(tmp_path))
    assert code == 2 and err.count("\n") == 1
    assert "tensorrt_llm/_torch/pyexecutor/scheduler/scheduler.py not found" in err


def test_unknown_policy_and_bad_counts_exit_2(capsys, tmp_path):
    code, _, err = cli(capsys, "--trtllm-src", str(tmp_path), "--policies", "GNE", "FIFO")
    assert code == 2 and err.count("\n") == 1 and "unknown policy 'FIFO'" in err
    code, _, err = cli(capsys, "--trtllm-src", str(tmp_path), "--scenarios", "0")
    assert code == 2 and err.count("\n") == 1 and "--scenarios must be at least 1" in err
    code, _, err = cli(capsys, "--scenarios", "3")
    assert code == 2 and err.count("\n") == 1 and "--trtllm-src" in err


def test_policy_names_short_names_and_aliases_resolve():
    assert h.resolve_policies(["gne", "MU", "MAX_UTIL", "SB", "MR"]) == [
        "GUARANTEED_NO_EVICT", "MAX_UTILIZATION", "STATIC_BATCH", "MAX_REQUESTS"]


def test_a_checkout_that_does_not_load_exits_2(capsys, tmp_path):
    d = _checkout(tmp_path, "from tensorrt_llm.bindings import executor\n")
    code, _, err = cli(capsys, "--trtllm-src", str(d), "--scenarios", "1")
    assert code == 2 and err.count("\n") == 1
    assert "does not load with the stand-ins: ModuleNotFoundError" in err


def test_the_command_exits_2_in_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--trtllm-src", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------- the adapters


def _table():
    """One request: id 7, prompt 10, 6 new tokens, 2 drafts, LoRA task 3; one without LoRA."""
    t = ts.RequestTable(4)
    t.add_request(7, np.arange(10, dtype=np.int32), 6, lora_task_id=3, num_draft_tokens=2)
    t.add_request(8, np.arange(5, dtype=np.int32), 2)
    return t


def test_the_request_adapter_reads_and_writes_its_table_row():
    h._adapters_ready()
    t = _table()
    r = h.LlmRequest(t.get(7))
    assert (r.request_id, r.py_request_id, r.state_value) == (7, 7, 10)  # CONTEXT_INIT is 10
    assert r.state == h.LlmRequestState.CONTEXT_INIT and r.state.value == 10
    assert (r.is_context_init_state, r.is_generation_in_progress_state, r.is_disagg_generation_init_state,
            r.is_encoder_init_state) == (True, False, False, False)
    assert (r.get_num_tokens(0), r.context_remaining_length, r.num_draft_tokens, r.has_draft_tokens) == (10, 10, 2, True)
    assert (r.lora_task_id, h.LlmRequest(t.get(8)).lora_task_id) == (3, None)  # None without LoRA, as theirs
    assert r.get_beam_width_by_iter(for_next_iteration=False) == 1 and r.is_first_context_chunk
    r.context_chunk_size = 4  # writes the row: 4 of 10 is not the last chunk
    assert t.get(7).context_chunk_size == 4 and not r.is_last_context_chunk
    r.context_chunk_size = 10
    assert r.is_last_context_chunk
    assert (r.priority, h.LlmRequest(t.get(8)).priority) == (0.5, 0.5)  # the default priority
    r.discard_draft_tokens(2)
    assert t.get(7).num_draft_tokens == 0 and not r.has_draft_tokens
    t.get(7).set_state(ts.LlmRequestState.GENERATION_TO_COMPLETE)
    assert r.state_value == 14 and r.is_generation_in_progress_state  # TensorRT-LLM's predicate includes it
    assert r.get_encoder_unique_tokens() is None


def test_the_kv_cache_adapter_answers_from_our_cache():
    h._adapters_ready()
    t = _table()
    kv = ts.KVCacheManager(t, 4, 20, 32, enable_block_reuse=True)
    a = h.KVCacheManager(kv)
    # One window: the sequence length (32), all 20 blocks free.
    assert a.get_kv_cache_stats().num_free_blocks_per_window_size == {32: 20}
    assert a.max_attention_window_vec == [32] and a.enable_block_reuse and not a.is_variable_window
    r7, r8 = h.LlmRequest(t.get(7)), h.LlmRequest(t.get(8))
    # Fresh: 10 + 6 tokens in blocks of 4 -> 4 blocks; 5 + 2 -> 2 blocks.
    assert a.get_remaining_blocks_to_completion(r7, 32) == 4
    assert a.get_remaining_blocks_to_completion_batch([r7, r8], 32) == [4, 2]
    # First step of a fresh context: prompt + drafts = 12 tokens -> 3 blocks.
    assert a.get_needed_blocks_one_step(r7, False, 32) == 3
    a.start_scheduling()
    assert a.scheduling_has_free_blocks(20, 32) and not a.scheduling_has_free_blocks(21, 32)
    # Nothing cached: the first new block is the first one, tokens 0..3, LoRA task 3; a hashable key.
    assert a.find_new_context_block(None, r7) == ((0, 1, 2, 3), 3)
    assert a.find_new_context_block(None, r8) == ((0, 1, 2, 3), None)


def test_the_peft_adapter_answers_from_our_cache():
    h._adapters_ready()
    t = _table()
    p = h.PeftCacheManager(ts.PeftCacheManager(3, 10))
    assert p.max_device_pages == 10
    assert p.determine_num_pages(h.LlmRequest(t.get(7))) == 3  # a LoRA request: pages_per_task


# ---------------------------------------------------------------------------- loading and the loop, on fake checkouts

# A fake unified_scheduler.py: imports what theirs imports (so the stand-ins must be in place),
# and its UnifiedScheduler is our own fused scheduler (backend cpp) behind their interface.
FAKE = textwrap.dedent('''
    import numpy as np
    from strenum import StrEnum
    from tensorrt_llm.llmapi.llm_args import CapacitySchedulerPolicy
    from tensorrt_llm.logger import logger
    from ..llm_request import LlmRequest, LlmRequestState
    from .scheduler import SchedulerOutput

    from tllm_sched import _core
    from tllm_sched.config import ChunkingConfig, SchedulerConfig
    from tllm_sched.scheduler import Scheduler

    SKEW_FROM = {skew}  # from this step of a run on, num_fitting is reported one too high (None: never)
    STATE_VALUES = (LlmRequestState.CONTEXT_INIT.value, LlmRequestState.GENERATION_IN_PROGRESS.value)


    class TokenBudgetTracker:
        pass


    class UnifiedScheduler:
        def __init__(self, max_batch_size, max_num_tokens, kv_cache_manager, peft_cache_manager, scheduler_policy,
                     ctx_chunk_config=None, cross_kv_cache_manager=None, two_step_lookahead=False,
                     scheduler_capacity=None):
            self.table = kv_cache_manager.kv.table
            chunking = None if ctx_chunk_config is None else ChunkingConfig(str(ctx_chunk_config[0]), ctx_chunk_config[1])
            config = SchedulerConfig(str(scheduler_policy), scheduler_capacity, max_batch_size, max_num_tokens,
                                     chunking=chunking, two_steps_look_ahead=two_step_lookahead, fused=True)
            self.ours = Scheduler(config, self.table, kv_cache_manager.kv,
                                  cross_kv_cache_manager and cross_kv_cache_manager.kv,
                                  peft_cache_manager and peft_cache_manager.peft, backend="cpp")
            self.calls = 0

        def schedule_request(self, active_requests, inflight_request_ids=None):
            self.calls += 1
            active = _core.RequestList(self.table)
            for r in active_requests:
                active.append(r.view)
            o = self.ours.schedule(active, np.array(sorted(inflight_request_ids), dtype=np.int64))
            by_slot = {{r.view.slot: r for r in active_requests}}
            back = lambda slots: [by_slot[s] for s in slots.tolist()]
            skew = int(SKEW_FROM is not None and self.calls >= SKEW_FROM)
            return SchedulerOutput(back(o.context), back(o.generation), back(o.paused),
                                   back(o.fitting_disagg_gen_init), o.num_fitting + skew)
''')
FAKE_SIBLING = textwrap.dedent('''
    from collections import namedtuple
    from tensorrt_llm._torch.pyexecutor.llm_request import LlmRequest

    SchedulerOutput = namedtuple("SchedulerOutput", ["context_requests", "generation_requests", "paused_requests",
                                                     "fitting_disagg_gen_init_requests", "num_fitting_requests"])
''')


def _checkout(tmp_path, unified: str) -> Path:
    d = tmp_path / "TensorRT-LLM"
    sched = d / h.SCHEDULER_DIR
    sched.mkdir(parents=True)
    (sched / "scheduler.py").write_text(FAKE_SIBLING)
    (sched / "unified_scheduler.py").write_text(unified)
    return d


def test_loading_injects_the_stand_ins_and_leaves_sys_modules_as_found(tmp_path):
    before = set(sys.modules)
    theirs = h.load_trtllm(_checkout(tmp_path, FAKE.format(skew=None)))
    mod = theirs.unified
    assert set(sys.modules) == before
    assert theirs.waiting_queue is None and theirs.waiting_queue_note.endswith("waiting_queue.py not found")
    assert mod.LlmRequest is h.LlmRequest  # their `from ..llm_request import LlmRequest` got the adapter
    assert mod.STATE_VALUES == (10, 13)  # our state numbers
    assert [p.value for p in mod.CapacitySchedulerPolicy] == ["MAX_UTILIZATION", "GUARANTEED_NO_EVICT", "STATIC_BATCH"]


# A fake waiting_queue.py: FCFS always (`priority_aware` False: PRIORITY served first-come too).
FAKE_QUEUE = textwrap.dedent('''
    from tensorrt_llm.executor.request import DEFAULT_REQUEST_PRIORITY
    from tensorrt_llm.llmapi.llm_args import WaitingQueuePolicy
    from ..executor_request_queue import RequestQueueItem

    PRIORITY_AWARE = {priority_aware}


    class Queue(list):
        def __init__(self, by_priority):
            self.by_priority = by_priority

        def add_requests(self, items):
            for item in items:
                self.append(item)
                if self.by_priority:  # stable: first-come among equals
                    self.sort(key=lambda i: -(i.request.priority if i.request else DEFAULT_REQUEST_PRIORITY))

        def pop_request(self):
            return self.pop(0)


    def create_waiting_queue(policy=WaitingQueuePolicy.FCFS):
        return Queue(PRIORITY_AWARE and policy == WaitingQueuePolicy.PRIORITY)
''')

# Three requests arrive at once, one may be active: PRIORITY serves 0.8 (id 1), then 0.5 (id 2),
# then 0.3 (id 0); FCFS would serve id 0 first.
QUEUED = {
    "format": "tllm_sched.scenario/1", "harness": "full",
    "kv_cache": {"tokens_per_block": 4, "num_blocks": 16, "max_seq_len": 16},
    "scheduler": {"policy": "GUARANTEED_NO_EVICT", "max_num_requests": 2, "fused": True,
                  "waiting_queue_policy": "PRIORITY", "max_num_active_requests": 1},
    "requests": [{"id": 0, "prompt_len": 3, "max_new_tokens": 1, "priority": 0.3},
                 {"id": 1, "prompt_len": 3, "max_new_tokens": 1, "priority": 0.8},
                 {"id": 2, "prompt_len": 3, "max_new_tokens": 1, "priority": 0.5}],
}


def _with_queue(tmp_path, priority_aware: bool):
    d = _checkout(tmp_path, FAKE.format(skew=None))
    (d / h.SCHEDULER_DIR / "waiting_queue.py").write_text(FAKE_QUEUE.format(priority_aware=priority_aware))
    return h.load_trtllm(d)


def test_their_waiting_queue_is_compared_with_ours_step_by_step(tmp_path):
    tally = h.Tally()
    h.compare_scenario(QUEUED, _with_queue(tmp_path, True), ("cpp",), tally)
    # One request at a time, each done in one step (1 new token): 3 steps, each with its queue compared.
    assert (tally.scenarios, tally.steps, tally.queue_steps) == (1, 3, 3)


def test_a_waiting_queue_that_serves_otherwise_is_caught(tmp_path):
    with pytest.raises(h.Mismatch) as e:
        h.compare_scenario(QUEUED, _with_queue(tmp_path, False), ("cpp",), h.Tally())
    m = e.value
    assert m.step == 0 and m.what.startswith("the waiting queues differ")
    # (fetched, left waiting): theirs first-come [0] then [1, 2]; ours by priority [1] then [2, 0].
    assert m.answers == {"TensorRT-LLM": "[[0], [1, 2]]", "ours": "[[1], [2, 0]]"}


def test_a_scheduler_that_decides_as_ours_agrees_at_every_step(tmp_path):
    out = io.StringIO()
    code = h.run_comparison(_checkout(tmp_path, FAKE.format(skew=None)), 15, 5,
                            ["GUARANTEED_NO_EVICT", "MAX_UTILIZATION", "STATIC_BATCH"], out=out)
    text = out.getvalue()
    assert code == 0, text
    steps = int(text.split(" steps:")[0].split()[-1])
    assert text.startswith("OK: 15 scenarios,") and steps > 15


def test_a_scheduler_that_decides_otherwise_is_caught_at_that_step(tmp_path):
    out = io.StringIO()
    code = h.run_comparison(_checkout(tmp_path, FAKE.format(skew=3)), 15, 5, ["GUARANTEED_NO_EVICT"], out=out)
    text = out.getvalue()
    assert code == 1
    # The third step (step 2) of the first scenario that has one; everything before it agreed.
    assert text.startswith("MISMATCH at step 2: TensorRT-LLM and cpp, python, python-naive, python (large-list paths) "
                           "decide differently")
    their = next(line for line in text.splitlines() if line.strip().startswith("TensorRT-LLM:"))
    ours = next(line for line in text.splitlines() if line.strip().startswith("cpp:"))
    n_their, n_ours = (int(s.split('"num_fitting": ')[1].split(",")[0]) for s in (their, ours))
    assert n_their == n_ours + 1
    assert "scenario: {" in text and "state before the step" in text and "equal steps over" in text


# ---------------------------------------------------------------------------- the real comparison


@pytest.mark.skipif(not TRTLLM_SRC, reason="TLLM_TRTLLM_SRC does not name a TensorRT-LLM checkout")
@pytest.mark.parametrize("policies", [["GUARANTEED_NO_EVICT", "STATIC_BATCH"], ["MAX_UTILIZATION"], ["MAX_REQUESTS"]])
def test_tensorrt_llm_fused_scheduler_and_ours_agree(policies):
    out = io.StringIO()
    code = h.run_comparison(Path(TRTLLM_SRC), 300, 0, policies, out=out)
    assert code == 0, out.getvalue()
