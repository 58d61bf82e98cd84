"""tllm_sched/replay.py: run a tllm_sched.scenario/1 file and write its decision log.

Implements the replay loop (design.md, "The replay loop"): arrivals and events, the four harnesses
(full, capacity, micro, chunking), the executor step (C++ `SimExecutor`) and the log lines.
The scheduler backend is the only thing that differs between `--backend cpp` and `python`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import IO, Callable, Dict, Optional, TypeVar

import numpy as np

from tllm_sched import _core
from tllm_sched.config import KvCacheConfig
from tllm_sched.scenario import Scenario, ScenarioError
from tllm_sched.scheduler import Scheduler

__all__ = ["RunFailure", "replay"]

_EMPTY_I32 = np.zeros(0, dtype=np.int32)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)
_T = TypeVar("_T")


class RunFailure(RuntimeError):
    """The run started but cannot go on (exit status 3)."""


def make_kv_cache_manager(table, cfg: Optional[KvCacheConfig], *, cross: bool = False):
    if cfg is None:
        return None
    return _core.KVCacheManager(
        table,
        cfg.tokens_per_block,
        cfg.num_blocks,
        cfg.max_seq_len,
        enable_block_reuse=cfg.enable_block_reuse,
        enable_partial_reuse=cfg.enable_partial_reuse,
        copy_on_partial_reuse=cfg.copy_on_partial_reuse,
        num_secondary_blocks=cfg.num_secondary_blocks,
        cross_kv=cross,
    )


@dataclass
class _Run:
    """Everything one replay holds."""

    sc: Scenario
    table: _core.RequestTable
    kv: Optional[_core.KVCacheManager]
    cross: Optional[_core.KVCacheManager]
    scheduler: Scheduler
    active: _core.RequestList
    out: IO[str]


def _built(key: str, make: Callable[[], _T]) -> _T:
    """`make()`, with the C++ constructors' refusals (sizes past their limits: ValueError, or an
    allocation that fails: MemoryError) turned into a ScenarioError naming the scenario key: a
    size the validator accepts (any int up to 2**31 - 1) may still be more than the run can hold."""
    try:
        return make()
    except ValueError as e:
        raise ScenarioError(f"{key}: {e}") from None
    except MemoryError:
        raise ScenarioError(f"{key}: too large to hold in memory") from None


def _build(sc: Scenario, backend: str, out: IO[str]) -> _Run:
    """Builds the run; raises ScenarioError (exit status 2) when the scenario's sizes cannot be held."""
    table = _built("requests", lambda: _core.RequestTable(max(1, len(sc.requests))))
    # Every request lives in the table for the whole run, so events can name any of them.
    for index, r in enumerate(sc.requests):
        _built(f"requests[{index}] (id {r.id})", lambda r=r: _add_request(table, r))
    kv = _built("kv_cache", lambda: make_kv_cache_manager(table, sc.kv_cache))
    cross = _built("cross_kv_cache", lambda: make_kv_cache_manager(table, sc.cross_kv_cache, cross=True))
    peft = None if sc.peft is None else _built(
        "peft", lambda: _core.PeftCacheManager(sc.peft.pages_per_task, sc.peft.max_device_pages))
    scheduler = _built("scheduler", lambda: Scheduler(sc.scheduler, table, kv, cross, peft, backend=backend))
    return _Run(sc, table, kv, cross, scheduler, _core.RequestList(table), out)


def _add_request(table: _core.RequestTable, r) -> None:
    table.add_request(
        r.id,
        np.asarray(r.prompt, dtype=np.int32),
        r.max_new_tokens,
        lora_task_id=r.lora_task_id,
        priority=r.priority,
        beam_width=r.beam_width,
        num_draft_tokens=r.draft_tokens,
        encoder_output_len=r.encoder_output_len,
        state=getattr(_core.LlmRequestState, r.state),
    )
    if r.context_chunk_size is not None:
        req = table.get(r.id)
        # Set as a test would, before the first iteration; the setter wants a context state.
        req.set_state(_core.LlmRequestState.CONTEXT_INIT)
        req.context_chunk_size = r.context_chunk_size
        req.set_state(getattr(_core.LlmRequestState, r.state))


def _summary(run: _Run, iterations: int) -> dict:
    stats = run.kv.get_kv_cache_stats() if run.kv is not None else {"reused_blocks": 0, "missed_blocks": 0}
    return {"iterations": iterations, "reused_blocks": stats["reused_blocks"], "missed_blocks": stats["missed_blocks"]}


def _emit(run: _Run, obj: dict) -> None:
    run.out.write(json.dumps(obj) + "\n")


def replay(sc: Scenario, backend: str, out: IO[str]) -> None:
    """Runs the scenario, writing log lines to `out`. Raises ScenarioError (before any output) when
    the scenario asks for more than the C++ objects can hold, RunFailure when the run cannot go on."""
    run = _build(sc, backend, out)
    if sc.harness == "chunking":
        _replay_chunking(run)
    else:
        _replay_loop(run)


def _replay_chunking(run: _Run) -> None:
    sc, table = run.sc, run.table
    slots_in_file_order = table.slots_of(np.array([r.id for r in sc.requests], dtype=np.int64))
    id_order = np.argsort([r.id for r in sc.requests], kind="stable")
    it = 0
    while True:
        cols = table.gather(slots_in_file_order)
        remaining = cols["prompt_len"] - cols["context_current_position"]
        todo = slots_in_file_order[remaining > 0]
        if todo.size == 0:
            break
        if it >= sc.max_iterations:
            raise RunFailure(f"requests remain after max_iterations ({sc.max_iterations})")
        run.scheduler.set_ctx_requests_chunk_size(todo)
        advanced = 0
        for s in todo.tolist():
            req = table.request_at(s)
            advanced += req.context_chunk_size
            req.move_to_next_context_chunk()
        if advanced == 0:
            raise RunFailure(f"iteration {it}: no request advances")
        cols = table.gather(slots_in_file_order)
        _emit(run, {
            "it": it,
            "positions": cols["context_current_position"][id_order].tolist(),
            "draft_tokens": cols["num_draft_tokens"][id_order].tolist(),
        })
        it += 1
    _emit(run, _summary(run, it))


def _arrivals(run: _Run, it: int) -> None:
    waiting = run.scheduler.waiting_queue
    for r in run.sc.requests:
        if r.arrive_at == it:
            if waiting is None:
                run.active.insert_by_priority(run.table.get(r.id))
            else:
                waiting.add_requests(run.table.get(r.id))
    for ev in run.sc.events:
        if ev.at == it:
            for rid in ev.ids:
                run.table.get(rid).set_num_draft_tokens(ev.count)
    if waiting is not None:
        run.scheduler.fetch_new_requests(run.active)


def _state_log(cols: dict) -> dict:
    ids = cols["request_id"].tolist()
    rows = zip(
        cols["max_new_tokens"].tolist(),
        cols["prompt_len"].tolist(),
        (cols["num_tokens"] - cols["prompt_len"]).tolist(),
        cols["context_current_position"].tolist(),
        cols["num_draft_tokens"].tolist(),
    )
    return {str(i): list(row) for i, row in zip(ids, rows)}


def _schedule(run: _Run, active_slots: np.ndarray, inflight: np.ndarray):
    """Step 3: (fitting, disagg, paused, num_fitting, context, generation, to_execute) per harness."""
    harness = run.sc.harness
    try:
        if harness == "micro":
            ctx, gen = run.scheduler.schedule_micro(active_slots, inflight)
            return _EMPTY_I32, _EMPTY_I32, _EMPTY_I32, 0, ctx, gen, np.concatenate([ctx, gen])
        if harness == "capacity":
            fit, disagg, paused = run.scheduler.schedule_capacity(active_slots)
            return fit, disagg, paused, fit.size, _EMPTY_I32, _EMPTY_I32, fit
        o = run.scheduler.schedule(run.active, inflight)
        return (o.fitting, o.fitting_disagg_gen_init, o.paused, o.num_fitting, o.context, o.generation,
                np.concatenate([o.context, o.generation]))
    except _core.SchedulingError as e:
        raise RunFailure(str(e)) from None


def _replay_loop(run: _Run) -> None:
    sc, table = run.sc, run.table
    # The micro harness performs no KV-cache operations.
    kv, cross = (None, None) if sc.harness == "micro" else (run.kv, run.cross)
    executor = _core.SimExecutor(table, kv, cross, sc.max_input_len)
    last_arrival = max((r.arrive_at for r in sc.requests), default=-1)
    # The ids each micro slot remembers, for the non-empty slots only: memory follows the requests,
    # not `micro_slots` (which may be as large as 2**31 - 1).
    micro_slots: Dict[int, np.ndarray] = {}
    ctx_state = int(_core.LlmRequestState.CONTEXT_INIT)
    enc_state = int(_core.LlmRequestState.ENCODER_INIT)
    waiting = run.scheduler.waiting_queue
    it = 0
    while len(run.active) > 0 or it <= last_arrival or (waiting is not None and len(waiting) > 0):
        if it >= sc.max_iterations:
            raise RunFailure(f"requests remain after max_iterations ({sc.max_iterations})")
        _arrivals(run, it)
        active_slots = np.array(run.active.slots)  # a copy: the list changes below
        for s in active_slots[table.gather(active_slots)["state"] == enc_state].tolist():
            table.request_at(s).set_state(ctx_state)
        cur = it % sc.micro_slots
        others = [ids for k, ids in micro_slots.items() if k != cur]
        inflight = np.unique(np.concatenate(others)) if others else _EMPTY_I64
        free_blocks = run.kv.num_free_blocks if run.kv is not None else None

        fit, disagg, paused, num_fitting, ctx, gen, execute = _schedule(run, active_slots, inflight)
        cols = table.gather(active_slots)
        if sc.harness == "capacity":
            chunk_slots = fit[np.isin(table.gather(fit)["state"], (ctx_state, 11))] if fit.size else fit
        else:
            chunk_slots = ctx
        chunk_sizes = table.gather(chunk_slots) if chunk_slots.size else None
        line = {"it": it, "active": cols["request_id"].tolist()}
        if waiting is not None:
            line["waiting"] = table.request_ids(waiting.slots).tolist()
        line.update({
            "fitting": table.request_ids(fit).tolist(),
            "disagg_gen_init": table.request_ids(disagg).tolist(),
            "paused": table.request_ids(paused).tolist(),
        })
        if sc.scheduler.fused:
            line["num_fitting"] = num_fitting
        line.update({
            "context": table.request_ids(ctx).tolist(),
            "generation": table.request_ids(gen).tolist(),
            "chunk_sizes": {} if chunk_sizes is None else {
                str(i): c for i, c in zip(chunk_sizes["request_id"].tolist(), chunk_sizes["context_chunk_size"].tolist())
            },
        })
        state = _state_log(cols)
        try:
            finished = executor.apply(paused, disagg, np.ascontiguousarray(execute, dtype=np.int32))
        except ValueError as e:  # a sequence added twice, a block from an empty pool
            raise RunFailure(f"iteration {it}: {e}") from None
        line["finished"] = table.request_ids(finished).tolist()
        line["free_blocks"] = free_blocks
        line["state"] = state
        _emit(run, line)
        run.active.remove_slots(finished)
        if sc.harness != "capacity":
            ids = table.request_ids(np.concatenate([ctx, gen]))
            if ids.size:
                micro_slots[cur] = ids
            else:
                micro_slots.pop(cur, None)
        it += 1
    _emit(run, _summary(run, it))
