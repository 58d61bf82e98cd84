"""tests/test_first_errors.py: the mistakes a new user makes first, each found by trying, each
answered with what is wrong and what to do; and the guard that keeps a request that could never
run out of the active list (so no backend schedules it into a failure or starves it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tllm_sched as ts
from tllm_sched.config import ChunkingConfig, SchedulerConfig
from tllm_sched.scheduler import BACKENDS, Scheduler

ROOT = Path(__file__).resolve().parents[1]


def world(blocks=8, tpb=4, max_seq=32):
    t = ts.RequestTable(8)
    return t, ts.KVCacheManager(t, tpb, blocks, max_seq)


def test_backend_given_positionally_says_it_is_a_keyword():
    t, kv = world()
    with pytest.raises(TypeError, match=r"cross_kv_cache_manager: expected a KVCacheManager or None, got str "
                                        r"'python'; the backend is a keyword argument: Scheduler\(config, table, "
                                        r"kv, backend='python'\)"):
        Scheduler(SchedulerConfig("MAX_UTILIZATION", 4), t, kv, "python")
    with pytest.raises(TypeError, match="table: expected a RequestTable, got KVCacheManager"):
        Scheduler(SchedulerConfig("MAX_UTILIZATION", 4), kv, t)


def test_sim_executor_apply_with_lists_says_what_to_pass():
    t, kv = world()
    t.add_request(0, [1, 2, 3], 2)
    ex = ts.SimExecutor(t, kv, None, 32)
    with pytest.raises(TypeError, match=r"paused: expected a 1-D int32 numpy array of request slots \(a scheduler "
                                        r"output, or np.array\(..., dtype=np.int32\)\), got list"):
        ex.apply([], [], [0])
    with pytest.raises(TypeError, match="execute: .* got NoneType"):
        ex.apply(np.zeros(0, np.int32), np.zeros(0, np.int32), None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_schedule_none_is_the_same_type_error_on_every_backend(backend):
    t, kv = world()
    s = Scheduler(SchedulerConfig("MAX_UTILIZATION", 4), t, kv, backend=backend)
    with pytest.raises(TypeError, match="^active_requests: expected a RequestList, got NoneType$"):
        s.schedule(None)
    s.schedule(ts.RequestList(t))  # still usable


def test_configs_name_the_bad_field_and_the_choices():
    with pytest.raises(ValueError, match=r"^unknown context chunking policy 'FCFS' \(choose from FIRST_COME_FIRST_SERVED, "
                                         r"EQUAL_PROGRESS\)$"):
        ChunkingConfig("FCFS", 64)
    with pytest.raises(ValueError, match=r"^unknown capacity scheduler policy 'MU' \(choose from MAX_UTILIZATION"):
        SchedulerConfig("MU", 4)
    with pytest.raises(ValueError, match="^SchedulerConfig.max_num_requests must be a positive int, got 0$"):
        SchedulerConfig("MAX_UTILIZATION", 0)
    with pytest.raises(ValueError, match="^SchedulerConfig.max_batch_size must be a positive int, got -1$"):
        SchedulerConfig("MAX_UTILIZATION", 4, max_batch_size=-1)
    with pytest.raises(ValueError, match="^SchedulerConfig.max_num_tokens must be a positive int or None, got 0$"):
        SchedulerConfig("MAX_UTILIZATION", 4, max_num_tokens=0)
    with pytest.raises(ValueError, match="^ChunkingConfig.unit_size must be a positive int, got 0$"):
        ChunkingConfig("EQUAL_PROGRESS", 0)
    with pytest.raises(TypeError, match="^SchedulerConfig.max_num_requests must be a positive int, got str '4'$"):
        SchedulerConfig("MAX_UTILIZATION", "4")
    with pytest.raises(TypeError, match=r"^SchedulerConfig.max_num_requests must be a positive int, got int64 np.int64\(4\)$"):
        SchedulerConfig("MAX_UTILIZATION", np.int64(4))


def test_integer_prompts_of_any_dtype_are_taken_when_every_value_fits_int32():
    t, _ = world()
    assert t.add_request(0, np.arange(100), 2).get_tokens() == list(range(100))
    with pytest.raises(ValueError, match=r"input_tokens: value 2147483648 at index 2 is outside the int32 range"):
        t.add_request(1, np.array([1, 2, 2**31]), 2)
    assert 1 not in t


def test_importing_an_unbuilt_checkout_says_build_it_first(tmp_path):
    shutil.copytree(ROOT / "tllm_sched", tmp_path / "tllm_sched",
                    ignore=shutil.ignore_patterns("_core*", "__pycache__"))
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import tllm_sched"
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: tllm_sched._core, the package's C++ extension, is not built: "
                           "build/install the package first: pip install .")


# ----------------------------------------------------------------------------- requests that could never run

@pytest.mark.parametrize("prompt, max_new, words", [
    (30, 3, "request 7: prompt length 30 \\+ max_new_tokens 3 = 33 tokens exceeds the KV cache's max_seq_len 32: "
            "it could never run"),
    (20, 10, "request 7: prompt length 20 \\+ max_new_tokens 10 = 30 tokens need 8 blocks of 4 tokens, more than the "
             "KV cache's num_blocks 6: it could never run"),
])
def test_a_request_that_could_never_run_does_not_enter_the_active_list(prompt, max_new, words):
    t, kv = world(blocks=6)
    active = ts.RequestList(t)
    r = t.add_request(7, [1] * prompt, max_new)
    for enter in (active.append, active.insert_by_priority):
        with pytest.raises(ValueError, match=words):
            enter(r)
    assert len(active) == 0 and r not in active
    t.remove_request(r)  # the table lets it go: nothing holds it


def test_the_cross_cache_limit_is_checked_too():
    t = ts.RequestTable(4)
    ts.KVCacheManager(t, 4, 8, 32)
    cross = ts.KVCacheManager(t, 4, 2, 32, cross_kv=True)  # noqa: F841 (registers its limit while alive)
    r = t.add_request(1, [1] * 4, 2, encoder_output_len=12)
    with pytest.raises(ValueError, match="encoder_output_len 12 need 3 blocks of 4 tokens, more than the cross KV "
                                         "cache's num_blocks 2"):
        ts.RequestList(t).append(r)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy", ["MAX_UTILIZATION", "GUARANTEED_NO_EVICT"])
def test_a_request_at_the_limits_runs_to_completion(backend, policy):
    # 6 blocks of 4 tokens: a 20-token prompt + 4 new tokens needs exactly all 6 (and max_seq_len 24).
    t, kv = world(blocks=6, max_seq=24)
    active = ts.RequestList(t)
    r = t.add_request(1, [1] * 20, 4)
    active.append(r)
    s = Scheduler(SchedulerConfig(policy, 4), t, kv, backend=backend)
    ex = ts.Executor(t, kv)
    for _ in range(10):
        out = s.schedule(active)
        ex.prepare(out)
        finished = ex.commit(np.full(ex.num_rows, 5, np.int32))
        active.remove_slots(finished)
        if finished.size:
            break
    assert r.state == ts.LlmRequestState.GENERATION_COMPLETE and len(active) == 0
    t.remove_slots(finished)
    assert len(t) == 0 and kv.num_free_blocks == 6


def test_the_readme_example_runs_and_leaks_no_table_slot():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"### Python API\n\n```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert len(scope["table"]) == 0 and len(scope["active"]) == 0
