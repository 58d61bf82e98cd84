"""bench/trtllm_fused_compare.py: our fused mode against TensorRT-LLM's own fused scheduler, step by step.

    python bench/trtllm_fused_compare.py --trtllm-src ~/TensorRT-LLM [--scenarios 500] [--seed 0]
        [--policies GUARANTEED_NO_EVICT MAX_UTILIZATION STATIC_BATCH MAX_REQUESTS]

--trtllm-src is a TensorRT-LLM source checkout (its root). Nothing of TensorRT-LLM is installed or
built: its `UnifiedScheduler` (tensorrt_llm/_torch/pyexecutor/scheduler/unified_scheduler.py, with
the sibling scheduler.py it imports) is loaded by file path, with stand-ins for its heavy imports
(`tensorrt_llm.logger`, `llm_args.CapacitySchedulerPolicy`, `llm_request.LlmRequest` /
`LlmRequestState`, `strenum` when absent). The stand-ins are adapters over our objects: a request
is one row of our RequestTable, the KV cache managers and the PEFT cache manager are ours, each
answering exactly the calls the fused policies make. Where the checkout has
scheduler/waiting_queue.py and it loads, its queue runs beside ours in scenarios with a waiting
queue: every step, the ids our queue moved into the active list must be the ones theirs pops, and
the ids left waiting must be in the same order.

Scenarios are drawn (hypothesis, seeded) with the differential test's generator
(tests/scenario_strategies.py) in the fused mode and harness "full", a KV cache on or off as the
policy needs (without one every policy is TensorRT-LLM's MaxRequestsPolicy; beams > 1 occur only
there), chunking, drafts, LoRA/PEFT, block reuse, cross caches, disagg-generation-init requests,
two micro slots, and sometimes a waiting queue (ours decides what joins the active list in every
world; theirs is compared with it, above). `max_context_length` is left unset: TensorRT-LLM's fused scheduler has no
such setting (its tracker uses the token budget).

Each scenario runs in one world per scheduler, built alike (table, caches, executor): TensorRT-LLM's
scheduler, our three backends, and python again on its large-list paths. Every step, each world schedules its own state, the answers are compared
(scheduled context ids in order with their chunk sizes, generation ids in order, paused ids,
fitting disagg-generation-init ids, num_fitting, the draft tokens left after the step's discards,
or a refusal on both sides), then each world applies its answer through our SimExecutor, so the
states stay equal as long as the answers do. The first mismatch prints the step, the scenario, the
state and the answers, and the exit status is 1; otherwise 0 with a summary. Bad input (missing
files, unknown policy, hypothesis absent): exit 2 with one line.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import importlib.util
import io
import json
import logging
import sys
import types
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCHEDULER_DIR = Path("tensorrt_llm/_torch/pyexecutor/scheduler")
TRTLLM_FILES = ("scheduler.py", "unified_scheduler.py")  # what is loaded, in this order
_PKG = "tensorrt_llm._torch.pyexecutor"


class BadInput(Exception):
    """Exit 2 with this one line."""


# ---------------------------------------------------------------------------- the adapters


def _state_enum():
    """TensorRT-LLM's LlmRequestState: our states, with the numbers our state column holds."""
    from tllm_sched import _core

    return enum.IntEnum("LlmRequestState", {n: int(v) for n, v in _core.LlmRequestState.__members__.items()})


LlmRequestState = None  # the enum their module reads `.value` of: set by _adapters_ready()


def _adapters_ready() -> None:
    global LlmRequestState
    if LlmRequestState is None:
        LlmRequestState = _state_enum()


class LlmRequest:
    """TensorRT-LLM's LlmRequest surface over one row of our RequestTable (`view`, our
    `_core.LlmRequest`): every property reads the row, `context_chunk_size` and
    `discard_draft_tokens` write it."""

    __slots__ = ("view",)

    def __init__(self, view):
        self.view = view

    request_id = property(lambda self: self.view.request_id)
    py_request_id = property(lambda self: self.view.request_id)
    state_value = property(lambda self: self.view.state_value)
    state = property(lambda self: LlmRequestState(self.view.state_value))
    is_encoder_init_state = property(lambda self: self.view.is_encoder_init_state)
    is_context_init_state = property(lambda self: self.view.is_context_init_state)
    is_generation_in_progress_state = property(lambda self: self.view.is_generation_in_progress_state)
    is_disagg_generation_init_state = property(lambda self: self.view.is_disagg_generation_init_state)
    is_first_context_chunk = property(lambda self: self.view.is_first_context_chunk)
    is_last_context_chunk = property(lambda self: self.view.is_last_context_chunk)
    context_remaining_length = property(lambda self: self.view.context_remaining_length)
    num_draft_tokens = property(lambda self: self.view.num_draft_tokens)
    has_draft_tokens = property(lambda self: self.view.has_draft_tokens)
    encoder_output_len = property(lambda self: self.view.encoder_output_len)
    lora_task_id = property(lambda self: self.view.lora_task_id)  # None without LoRA, as theirs
    priority = property(lambda self: self.view.priority)

    @property
    def context_chunk_size(self) -> int:
        return self.view.context_chunk_size

    @context_chunk_size.setter
    def context_chunk_size(self, n: int) -> None:
        self.view.context_chunk_size = n

    def get_num_tokens(self, beam: int) -> int:
        return self.view.get_num_tokens(beam)

    def get_beam_width_by_iter(self, for_next_iteration: bool = False) -> int:
        if for_next_iteration:  # the fused policies never ask; our table keeps no per-iteration schedule
            raise NotImplementedError("get_beam_width_by_iter(for_next_iteration=True)")
        return self.view.get_beam_width_by_iter()

    def discard_draft_tokens(self, n: int) -> None:
        self.view.discard_draft_tokens(n)

    def get_unique_tokens(self, beam: int):
        return self.view.get_unique_tokens(beam)

    def get_encoder_unique_tokens(self):
        # Our cross cache keeps no reusable encoder blocks (and our reuse skipping asks only the
        # self-attention cache): "no encoder tokens" keeps their cross-cache skipping out.
        return None


class KVCacheManager:
    """The KV cache manager calls of TensorRT-LLM's fused policies, answered by ours (one window,
    the sequence length; never variable)."""

    is_variable_window = False

    def __init__(self, kv):
        self.kv = kv
        self.enable_block_reuse = kv.enable_block_reuse
        self.max_attention_window_vec = list(kv.max_attention_window_vec)

    def get_kv_cache_stats(self):
        return types.SimpleNamespace(num_free_blocks_per_window_size=dict(self.kv.get_num_free_blocks_per_window_size()))

    def get_remaining_blocks_to_completion(self, req: LlmRequest, window_size: int) -> int:
        return self.kv.get_remaining_blocks_to_completion(req.view, window_size)

    def get_remaining_blocks_to_completion_batch(self, reqs, window_size: int) -> List[int]:
        return [self.kv.get_remaining_blocks_to_completion(r.view, window_size) for r in reqs]

    def get_needed_blocks_one_step(self, req: LlmRequest, two_steps_look_ahead: bool, window_size: int) -> int:
        return self.kv.get_needed_blocks_one_step(req.view, two_steps_look_ahead, window_size)

    def start_scheduling(self) -> None:
        self.kv.start_scheduling()

    def scheduling_has_free_blocks(self, num_required: int, window_size: int) -> bool:
        return self.kv.scheduling_has_free_blocks(num_required, window_size)

    def scheduling_remove_sequence(self, request_id: int) -> None:
        self.kv.scheduling_remove_sequence(request_id)

    def find_new_context_block(self, unique_tokens, req: LlmRequest):
        """Their block key, hashable: (tokens through the first uncached block, LoRA task), or None."""
        key = self.kv.find_new_context_block(req.view)
        return None if key is None else (tuple(key[0].tolist()), key[1])


class PeftCacheManager:
    """The PEFT cache manager calls of the fused policies, answered by ours."""

    def __init__(self, peft):
        self.peft = peft
        self.max_device_pages = peft.max_device_pages

    def determine_num_pages(self, req: LlmRequest) -> int:
        return self.peft.determine_num_pages(req.view)


# ---------------------------------------------------------------------------- loading their code


class _StrEnum(str, enum.Enum):
    """The `strenum` package's StrEnum, where that package is absent."""

    def __str__(self) -> str:
        return self.value


def _quiet_logger() -> logging.Logger:
    """Their logger: errors only (their FCFS queue warns about every prioritised request)."""
    logger = logging.getLogger("trtllm_fused_compare.stand_in")
    logger.setLevel(logging.ERROR)
    return logger


def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


def _package(name: str, path: Sequence[str] = ()) -> types.ModuleType:
    m = _module(name)
    m.__path__ = list(path)
    return m


class RequestQueueItem:
    """TensorRT-LLM's waiting-queue item: a request id and the request (an LlmRequest adapter)."""

    __slots__ = ("id", "request")

    def __init__(self, id: int, request: LlmRequest):
        self.id, self.request = id, request


# TensorRT-LLM's tensorrt_llm.executor.request.DEFAULT_REQUEST_PRIORITY; our default priority too.
DEFAULT_REQUEST_PRIORITY = 0.5
WAITING_QUEUE_FILE = "waiting_queue.py"  # compared when the checkout has it and it loads


@dataclass
class Theirs:
    """What was loaded from the checkout."""

    unified: types.ModuleType  # unified_scheduler.py
    policies: type  # the CapacitySchedulerPolicy stand-in their module got
    waiting_queue: Optional[types.ModuleType]  # waiting_queue.py, or None
    waiting_queue_note: str  # why waiting_queue.py is not compared, or ""
    queue_policies: Optional[type] = None  # the WaitingQueuePolicy stand-in


def _exec(src: Path, f: str) -> types.ModuleType:
    name = f"{_PKG}.scheduler.{f[:-3]}"
    spec = importlib.util.spec_from_file_location(name, Path(src) / SCHEDULER_DIR / f)
    m = importlib.util.module_from_spec(spec)
    sys.modules[name] = m
    try:
        spec.loader.exec_module(m)
    except (ImportError, SyntaxError) as e:
        raise BadInput(f"--trtllm-src {src}: {SCHEDULER_DIR / f} does not load with the stand-ins: "
                       f"{type(e).__name__}: {e}") from None
    return m


def load_trtllm(src: Path) -> Theirs:
    """TensorRT-LLM's unified_scheduler module (and waiting_queue.py where present), executed from
    `src` (a checkout root) with the stand-ins above injected for their imports. sys.modules is
    left as it was found."""
    sched_dir = Path(src) / SCHEDULER_DIR
    if not Path(src).is_dir():
        raise BadInput(f"--trtllm-src {src}: not a directory")
    for f in TRTLLM_FILES:
        if not (sched_dir / f).is_file():
            raise BadInput(f"--trtllm-src {src}: {SCHEDULER_DIR / f} not found (expected a TensorRT-LLM checkout root)")
    from tllm_sched.registry import CAPACITY_POLICIES, WAITING_QUEUE_POLICIES

    _adapters_ready()
    str_enum = getattr(sys.modules.get("strenum"), "StrEnum", None) or _StrEnum
    policy_enum = str_enum("CapacitySchedulerPolicy", {n: n for n in CAPACITY_POLICIES})
    queue_enum = str_enum("WaitingQueuePolicy", {n: n for n in WAITING_QUEUE_POLICIES})
    stand_ins = {
        "strenum": _module("strenum", StrEnum=str_enum),
        "tensorrt_llm": _package("tensorrt_llm"),
        "tensorrt_llm.logger": _module("tensorrt_llm.logger", logger=_quiet_logger()),
        "tensorrt_llm.llmapi": _package("tensorrt_llm.llmapi"),
        "tensorrt_llm.llmapi.llm_args": _module("tensorrt_llm.llmapi.llm_args", CapacitySchedulerPolicy=policy_enum,
                                                WaitingQueuePolicy=queue_enum),
        "tensorrt_llm.executor": _package("tensorrt_llm.executor"),
        "tensorrt_llm.executor.request": _module("tensorrt_llm.executor.request",
                                                 DEFAULT_REQUEST_PRIORITY=DEFAULT_REQUEST_PRIORITY),
        "tensorrt_llm._torch": _package("tensorrt_llm._torch"),
        _PKG: _package(_PKG),
        f"{_PKG}.llm_request": _module(f"{_PKG}.llm_request", LlmRequest=LlmRequest, LlmRequestState=LlmRequestState),
        f"{_PKG}.executor_request_queue": _module(f"{_PKG}.executor_request_queue", RequestQueueItem=RequestQueueItem),
        f"{_PKG}.scheduler": _package(f"{_PKG}.scheduler", [str(sched_dir)]),
    }
    if "strenum" in sys.modules:
        del stand_ins["strenum"]
    files = (*TRTLLM_FILES, WAITING_QUEUE_FILE)
    saved = {name: sys.modules.get(name) for name in [*stand_ins, *(f"{_PKG}.scheduler.{f[:-3]}" for f in files)]}
    sys.modules.update(stand_ins)
    try:
        unified = [_exec(src, f) for f in TRTLLM_FILES][-1]
        for name in ("UnifiedScheduler", "TokenBudgetTracker"):
            if not hasattr(unified, name):
                raise BadInput(f"--trtllm-src {src}: {SCHEDULER_DIR / TRTLLM_FILES[-1]} has no {name}")
        queue, note = None, ""
        if not (sched_dir / WAITING_QUEUE_FILE).is_file():
            note = f"{SCHEDULER_DIR / WAITING_QUEUE_FILE} not found"
        else:
            try:
                queue = _exec(src, WAITING_QUEUE_FILE)
                if not hasattr(queue, "create_waiting_queue"):
                    queue, note = None, f"{SCHEDULER_DIR / WAITING_QUEUE_FILE} has no create_waiting_queue"
            except BadInput as e:  # the fused comparison goes on without it
                note = str(e).split(": ", 1)[1]
        return Theirs(unified, policy_enum, queue, note, queue_enum)
    finally:
        for name, m in saved.items():
            if m is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = m


def make_trtllm_scheduler(theirs: Theirs, config, kv, cross, peft):
    """Their UnifiedScheduler configured as our SchedulerConfig `config`, over our caches."""
    chunk = None if config.chunking is None else (config.chunking.policy, config.chunking.unit_size)
    return theirs.unified.UnifiedScheduler(
        max_batch_size=config.max_batch_size,
        max_num_tokens=config.max_num_tokens,
        kv_cache_manager=None if kv is None else KVCacheManager(kv),
        peft_cache_manager=None if peft is None else PeftCacheManager(peft),
        scheduler_policy=getattr(theirs.policies, config.policy),
        ctx_chunk_config=chunk,
        cross_kv_cache_manager=None if cross is None else KVCacheManager(cross),
        two_step_lookahead=config.two_steps_look_ahead,
        scheduler_capacity=config.max_num_requests,
    )


# ---------------------------------------------------------------------------- one step in every world


@dataclass
class Answer:
    """One world's decisions for a step, as request ids (compared), and as slots (applied)."""

    context: List[int] = field(default_factory=list)
    chunk_sizes: List[int] = field(default_factory=list)
    generation: List[int] = field(default_factory=list)
    paused: List[int] = field(default_factory=list)
    disagg_gen_init: List[int] = field(default_factory=list)
    num_fitting: int = 0
    drafts_after: Dict[int, int] = field(default_factory=dict)
    refusal: Optional[str] = None
    slots: tuple = ()  # (paused, disagg, context + generation) int32 arrays

    def compared(self) -> tuple:
        if self.refusal is not None:
            return ("refused",)
        return (self.context, self.chunk_sizes, self.generation, self.paused, self.disagg_gen_init,
                self.num_fitting, self.drafts_after)

    def text(self) -> str:
        if self.refusal is not None:
            return f"refused: {self.refusal}"
        return json.dumps({"context": self.context, "chunk_sizes": self.chunk_sizes, "generation": self.generation,
                           "paused": self.paused, "disagg_gen_init": self.disagg_gen_init,
                           "num_fitting": self.num_fitting, "draft_tokens_after": self.drafts_after})


def _answer(table, active_slots, context, generation, paused, disagg, num_fitting) -> Answer:
    ids = table.request_ids
    ctx, gen = np.asarray(context, dtype=np.int32), np.asarray(generation, dtype=np.int32)
    after = table.gather(active_slots)
    return Answer(
        context=ids(ctx).tolist(),
        chunk_sizes=table.gather(ctx)["context_chunk_size"].tolist() if ctx.size else [],
        generation=ids(gen).tolist(),
        paused=ids(np.asarray(paused, dtype=np.int32)).tolist(),
        disagg_gen_init=ids(np.asarray(disagg, dtype=np.int32)).tolist(),
        num_fitting=int(num_fitting),
        drafts_after=dict(zip(after["request_id"].tolist(), after["num_draft_tokens"].tolist())),
        slots=(np.asarray(paused, dtype=np.int32), np.asarray(disagg, dtype=np.int32), np.concatenate([ctx, gen])),
    )


class World:
    """One replay of the scenario: our table, caches, executor and active list (replay.py's
    builder), scheduled by TensorRT-LLM's scheduler (`trtllm` given) or by our `backend`."""

    def __init__(self, sc, backend: str, trtllm: Optional[Theirs] = None, lowered=None):
        from tllm_sched import _core, replay

        self.name = "TensorRT-LLM" if trtllm is not None else backend + (" (large-list paths)" if lowered else "")
        self.lowered = lowered  # a context manager factory: the batched backend's size thresholds lowered
        self.run = replay._build(sc, "cpp" if trtllm is not None else backend, io.StringIO())
        r = self.run
        self.executor = _core.SimExecutor(r.table, r.kv, r.cross, sc.max_input_len)
        # A PEFT cache manager like replay's (it holds no state a step changes).
        peft = None if sc.peft is None else _core.PeftCacheManager(sc.peft.pages_per_task, sc.peft.max_device_pages)
        self.theirs = None if trtllm is None else make_trtllm_scheduler(trtllm, sc.scheduler, r.kv, r.cross, peft)
        self.micro_slots: Dict[int, np.ndarray] = {}
        # Their waiting queue beside ours (which decides what joins the active list in every world).
        policy = sc.scheduler.waiting_queue_policy
        self.their_queue = None
        if trtllm is not None and policy is not None and trtllm.waiting_queue is not None:
            self.their_queue = trtllm.waiting_queue.create_waiting_queue(getattr(trtllm.queue_policies, policy))

    def arrivals(self, it: int) -> Optional[tuple]:
        """replay's arrivals and fetch; with their queue beside ours, (their, our) ids fetched and
        left waiting when they differ."""
        from tllm_sched import replay

        r, q = self.run, self.their_queue
        before = len(r.active)
        replay._arrivals(r, it)
        if q is None:
            return None
        t = r.table
        q.add_requests([RequestQueueItem(x.id, LlmRequest(t.get(x.id))) for x in r.sc.requests if x.arrive_at == it])
        fetched = t.request_ids(np.array(r.active.slots[before:], dtype=np.int32)).tolist()
        theirs = ([q.pop_request().id for _ in range(min(len(fetched), len(q)))], [item.id for item in q])
        ours = (fetched, t.request_ids(r.scheduler.waiting_queue.slots).tolist())
        return None if theirs == ours else (theirs, ours)

    def schedule(self, inflight: np.ndarray) -> Answer:
        from tllm_sched import _core

        r, table = self.run, self.run.table
        active_slots = np.array(r.active.slots)
        if self.theirs is None:
            try:
                if self.lowered is None:
                    o = r.scheduler.schedule(r.active, inflight)
                else:
                    with self.lowered():
                        o = r.scheduler.schedule(r.active, inflight)
            except _core.SchedulingError as e:
                return Answer(refusal=f"SchedulingError: {e}")
            return _answer(table, active_slots, o.context, o.generation, o.paused, o.fitting_disagg_gen_init,
                           o.num_fitting)
        reqs = [LlmRequest(table.request_at(s)) for s in active_slots.tolist()]
        try:
            out = self.theirs.schedule_request(reqs, set(inflight.tolist()))
        except Exception as e:  # their assert (a context over the budget), or a stand-in refusing
            return Answer(refusal=f"{type(e).__name__}: {e}")
        slots = lambda lst: [q.view.slot for q in lst]  # noqa: E731
        return _answer(table, active_slots, slots(out.context_requests), slots(out.generation_requests),
                       slots(out.paused_requests), slots(out.fitting_disagg_gen_init_requests),
                       out.num_fitting_requests)

    def state(self) -> dict:
        """The active requests' rows (compared between worlds at every step start)."""
        t = self.run.table
        cols = t.gather(np.array(self.run.active.slots))
        names = {int(v): n for n, v in LlmRequestState.__members__.items()}
        keys = ("prompt_len", "num_tokens", "context_current_position", "context_chunk_size", "num_draft_tokens",
                "beam_width", "lora_task_id")
        return {rid: {"state": names[st], **{k: int(cols[k][i]) for k in keys}}
                for i, (rid, st) in enumerate(zip(cols["request_id"].tolist(), cols["state"].tolist()))}


@dataclass
class Mismatch(Exception):
    step: int
    what: str
    scenario: dict
    state: dict
    inflight: list
    free_blocks: Optional[int]
    answers: Dict[str, str]

    def report(self) -> str:
        lines = [f"MISMATCH at step {self.step}: {self.what}",
                 "scenario: " + json.dumps(self.scenario, separators=(",", ":")),
                 f"in flight in other micro batches: {self.inflight}; free KV blocks: {self.free_blocks}",
                 "state before the step (id: row):"]
        lines += [f"  {rid}: {json.dumps(row)}" for rid, row in self.state.items()]
        width = max(map(len, self.answers))
        lines += [f"{name:>{width}}: {text}" for name, text in self.answers.items()]
        return "\n".join(lines)


@dataclass
class Tally:
    scenarios: int = 0
    steps: int = 0
    invalid: int = 0  # drawn scenarios the validator refused (nothing to compare)
    refusals: int = 0  # scenarios ending in a refusal both sides made
    executor_refusals: int = 0  # scenarios whose decisions our executor refused, in every world alike
    queue_steps: int = 0  # steps whose waiting queue was compared with theirs
    stalled: int = 0  # scenarios stopped at a fixed point (nothing scheduled, nothing changes)
    policies: Counter = field(default_factory=Counter)
    features: Counter = field(default_factory=Counter)


def compare_scenario(raw: dict, trtllm: Theirs, backends: Sequence[str], tally: Tally) -> None:
    """Runs one scenario in every world; raises Mismatch at the first difference."""
    from tllm_sched import _core
    from tllm_sched.scenario import ScenarioError, parse_scenario

    changes = raw.get(STATE_CHANGES, [])
    try:
        sc = parse_scenario({k: v for k, v in raw.items() if k != STATE_CHANGES})
        worlds = [World(sc, "cpp", trtllm)] + [World(sc, b) for b in backends]
        if "python" in backends:
            worlds.append(World(sc, "python", lowered=_lowered_thresholds()))
    except ScenarioError:
        tally.invalid += 1
        return
    tally.scenarios += 1
    policy = sc.scheduler.policy if sc.kv_cache is not None else "MAX_REQUESTS"
    tally.policies[policy] += 1
    last_arrival = max((r.arrive_at for r in sc.requests), default=-1)
    last_event = max([last_arrival, *(e.at for e in sc.events), *(c[0] for c in changes)])
    previous = None
    ctx_state, enc_state = int(_core.LlmRequestState.CONTEXT_INIT), int(_core.LlmRequestState.ENCODER_INIT)
    it = 0
    while True:
        w0 = worlds[0]
        waiting = w0.run.scheduler.waiting_queue
        if not (len(w0.run.active) > 0 or it <= last_arrival or (waiting is not None and len(waiting) > 0)):
            return
        if it >= sc.max_iterations:
            return  # the same in every world (the answers were equal so far)
        for w in worlds:
            queues = w.arrivals(it)
            if w.their_queue is not None:
                tally.queue_steps += 1
            if queues is not None:
                raise Mismatch(it, "the waiting queues differ (fetched ids, then the ids left waiting)", raw,
                               w0.state(), [], None, {"TensorRT-LLM": json.dumps(queues[0]), "ours": json.dumps(queues[1])})
            slots = np.array(w.run.active.slots)
            for s in slots[w.run.table.gather(slots)["state"] == enc_state].tolist():
                w.run.table.request_at(s).set_state(ctx_state)
            _change_states(w, [c for c in changes if c[0] == it])
        cur = it % sc.micro_slots
        others = [ids for k, ids in w0.micro_slots.items() if k != cur]
        inflight = np.unique(np.concatenate(others)) if others else np.zeros(0, dtype=np.int64)
        state = w0.state()
        free = w0.run.kv.num_free_blocks if w0.run.kv is not None else None

        def mismatch(what, answers):
            return Mismatch(it, what, raw, state, inflight.tolist(), free, answers)

        for w in worlds[1:]:
            if w.state() != state:
                raise mismatch(f"the states diverged ({w.name})", {w0.name: json.dumps(state), w.name: json.dumps(w.state())})
        answers = [w.schedule(inflight) for w in worlds]
        tally.steps += 1
        ref = answers[0]
        differing = [w.name for w, a in zip(worlds[1:], answers[1:]) if a.compared() != ref.compared()]
        if differing:
            raise mismatch("TensorRT-LLM and " + ", ".join(differing) + " decide differently",
                           {w.name: a.text() for w, a in zip(worlds, answers)})
        if ref.refusal is not None:
            tally.refusals += 1
            return
        idle = not (ref.context or ref.generation or ref.paused or ref.disagg_gen_init)
        if idle and it > last_event and state == previous:
            tally.stalled += 1  # a fixed point (e.g. every chunk 0): each further step would repeat this one
            return
        previous = state
        _features(tally, state, ref, inflight)
        refused = {}
        for w, a in zip(worlds, answers):
            try:
                finished = w.executor.apply(*a.slots)
            except ValueError as e:  # e.g. MAX_UTILIZATION admits past the cross cache (no policy checks it)
                refused[w.name] = str(e)
                continue
            w.run.active.remove_slots(finished)
            ids = np.concatenate([np.asarray(a.context, dtype=np.int64), np.asarray(a.generation, dtype=np.int64)])
            if ids.size:
                w.micro_slots[cur] = ids
            else:
                w.micro_slots.pop(cur, None)
        if refused:
            if len(refused) < len(worlds) or len(set(refused.values())) > 1:
                raise mismatch("our executor refused the decisions of some worlds only", refused)
            tally.executor_refusals += 1  # replay's RunFailure, the same in every world
            return
        it += 1


# States the scenario format cannot start a request in, reached by the harness moving an active
# request (in every world alike, before the step): [step, request id, new state], applied only from
# the state named here. The fused policies test states exactly (design.md, the fused mode, item 7).
STATE_CHANGES = "harness_state_changes"
CHANGEABLE = {
    "GENERATION_TO_COMPLETE": "GENERATION_IN_PROGRESS",
    "DISAGG_GENERATION_TRANS_COMPLETE": "GENERATION_IN_PROGRESS",
    "DISAGG_CONTEXT_INIT_AND_TRANS": "CONTEXT_INIT",
}


def _change_states(w: World, changes) -> None:
    from tllm_sched import _core

    t = w.run.table
    for _, rid, new in changes:
        if rid not in t:
            continue
        req = t.get(rid)
        if req.slot in w.run.active.slots and req.state == getattr(_core.LlmRequestState, CHANGEABLE[new]):
            req.set_state(getattr(_core.LlmRequestState, new))


def _features(tally: Tally, state: dict, a: Answer, inflight) -> None:
    """What the compared steps exercised (the summary's coverage line)."""
    f = tally.features
    rows = state.values()
    f["chunked contexts"] += sum(1 for rid, c in zip(a.context, a.chunk_sizes)
                                 if c < state[rid]["prompt_len"] - state[rid]["context_current_position"])
    f["steps with num_fitting > batch"] += int(a.num_fitting > len(a.context) + len(a.generation))
    f["drafts"] += sum(1 for r in rows if r["num_draft_tokens"] > 0)
    f["lora"] += sum(1 for r in rows if r["lora_task_id"] >= 0)
    f["beam > 1"] += sum(1 for r in rows if r["beam_width"] > 1)
    f["paused"] += len(a.paused)
    f["disagg admitted"] += len(a.disagg_gen_init)
    f["generation"] += len(a.generation)
    names = ("GENERATION_TO_COMPLETE", "DISAGG_GENERATION_TRANS_COMPLETE", "DISAGG_CONTEXT_INIT_AND_TRANS")
    for r in rows:
        if r["state"] in names:
            f[r["state"]] += 1
    f["in flight"] += len(inflight)


# ---------------------------------------------------------------------------- scenarios and the command line

POLICY_NAMES = ("GUARANTEED_NO_EVICT", "MAX_UTILIZATION", "STATIC_BATCH", "MAX_REQUESTS")


def resolve_policies(names: Sequence[str]) -> List[str]:
    from tllm_sched.registry import CAPACITY_POLICIES, NO_KV_CACHE

    known = {p.name: p.name for p in (*CAPACITY_POLICIES.values(), NO_KV_CACHE)}
    known.update({p.short: p.name for p in (*CAPACITY_POLICIES.values(), NO_KV_CACHE)})
    for p in (*CAPACITY_POLICIES.values(), NO_KV_CACHE):
        known.update({a: p.name for a in p.aliases})
    out = []
    for n in names:
        if n.upper() not in known:
            raise BadInput(f"--policies: unknown policy {n!r} (one of {', '.join(POLICY_NAMES)} or their short names)")
        if known[n.upper()] not in out:
            out.append(known[n.upper()])
    return out


def _tests_module(name: str):
    spec = importlib.util.spec_from_file_location(f"tllm_tests_{name}", ROOT / "tests" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_LOWERED = []


def _lowered_thresholds():
    """tests/utils.py's lowered_thresholds: the batched Python backend takes its large-list paths
    on these small scenarios too (as in the differential test)."""
    if not _LOWERED:
        _LOWERED.append(_tests_module("utils").lowered_thresholds)
    return _LOWERED[0]


def _strategies():
    return _tests_module("scenario_strategies")


def compare_scenarios_strategy(policies: Sequence[str]):
    """The differential test's scenarios, made comparable with TensorRT-LLM's fused scheduler."""
    from hypothesis import strategies as st

    from tllm_sched.registry import WAITING_QUEUE_POLICIES

    gen = _strategies()

    @st.composite
    def draw_one(draw):
        policy = draw(st.sampled_from(list(policies)))
        raw = draw(gen.scenarios(with_kv=policy != "MAX_REQUESTS"))
        sched = raw["scheduler"]
        if policy != "MAX_REQUESTS":
            sched["policy"] = policy
        raw["harness"] = "full"
        sched["fused"] = True
        sched["max_context_length"] = None  # not a setting of their fused scheduler
        if sched["chunking"] is not None and draw(st.booleans()):  # budgets that cut contexts into chunks
            unit = sched["chunking"]["unit_size"]
            sched["max_num_tokens"] = unit * draw(st.integers(1, 4)) + draw(st.integers(0, unit - 1))
        if draw(st.integers(0, 3)) == 0:
            sched["waiting_queue_policy"] = draw(st.sampled_from(WAITING_QUEUE_POLICIES))
            sched["max_num_active_requests"] = draw(st.one_of(st.none(), st.integers(1, 6)))
        kv = raw["kv_cache"]
        if policy == "MAX_UTILIZATION" and draw(st.booleans()):  # memory pressure: pauses
            kv["num_blocks"] = max(2, -(-kv["max_seq_len"] // kv["tokens_per_block"])) + draw(st.integers(0, 2))
            sched["max_num_requests"] = max(sched["max_num_requests"], 4)
            for r in raw["requests"]:
                r["arrive_at"] = min(r["arrive_at"], 1)
        if draw(st.booleans()):  # LoRA task 0 is a task (sorted after no LoRA), not "none"
            for r in raw["requests"]:
                if r["lora_task_id"] == 3:
                    r["lora_task_id"] = 0
        if draw(st.booleans()):
            ids = [r["id"] for r in raw["requests"]]
            raw[STATE_CHANGES] = draw(st.lists(st.tuples(st.integers(0, 24), st.sampled_from(ids),
                                                         st.sampled_from(sorted(CHANGEABLE))).map(list), max_size=4))
        return raw

    return draw_one()


def run_comparison(trtllm_src: Path, n: int, seed: int, policies: Sequence[str], out=sys.stdout) -> int:
    """The command's body: 0 all equal, 1 a mismatch (reported on `out`). Raises BadInput."""
    try:
        from hypothesis import HealthCheck, Phase, Verbosity, given, settings
        from hypothesis import seed as hseed
    except ModuleNotFoundError:
        raise BadInput("hypothesis is needed to draw the scenarios: pip install hypothesis") from None
    from tllm_sched.scheduler import BACKENDS

    trtllm = load_trtllm(trtllm_src)
    tally, found = Tally(), []

    @hseed(seed)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate], verbosity=Verbosity.quiet,
              suppress_health_check=list(HealthCheck))
    @given(compare_scenarios_strategy(policies))
    def each(raw):
        if found:
            raise found[0]
        try:
            compare_scenario(raw, trtllm, BACKENDS, tally)
        except Mismatch as m:
            found.append(m)
            raise

    try:
        each()
    except Mismatch:
        pass
    if found:
        print(found[0].report(), file=out)
        print(f"after {tally.steps} equal steps over {tally.scenarios} scenarios", file=out)
        return 1
    loaded = (*TRTLLM_FILES, *((WAITING_QUEUE_FILE,) if trtllm.waiting_queue is not None else ()))
    digest = ", ".join(f"{f} sha256:{hashlib.sha256((Path(trtllm_src) / SCHEDULER_DIR / f).read_bytes()).hexdigest()[:12]}"
                       for f in loaded)
    print(f"OK: {tally.scenarios} scenarios, {tally.steps} steps: TensorRT-LLM's fused scheduler and ours "
          f"({', '.join(BACKENDS)}; python also on its large-list paths) decide alike at every step", file=out)
    print(f"  ended by a refusal both sides made: {tally.refusals}; by our executor refusing the (equal) "
          f"decisions: {tally.executor_refusals}; stopped at a fixed point: {tally.stalled}; "
          f"invalid draws skipped: {tally.invalid}", file=out)
    print("  policies: " + ", ".join(f"{p} {c}" for p, c in sorted(tally.policies.items())), file=out)
    print("  exercised (request-steps): " + ", ".join(f"{k} {v}" for k, v in sorted(tally.features.items())), file=out)
    print(f"  waiting queue (their {WAITING_QUEUE_FILE} beside ours): " + (
        f"compared at {tally.queue_steps} steps" if trtllm.waiting_queue is not None
        else f"not compared: {trtllm.waiting_queue_note}"), file=out)
    print(f"  their files: {digest}", file=out)
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise BadInput(message)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = _Parser(prog="trtllm_fused_compare.py", description=__doc__.split("\n")[0])
    p.add_argument("--trtllm-src", required=True, type=Path, help="a TensorRT-LLM source checkout (its root)")
    p.add_argument("--scenarios", type=int, default=200, help="generated scenarios (default 200)")
    p.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    p.add_argument("--policies", nargs="+", default=list(POLICY_NAMES),
                   help="capacity policies to draw (default all: " + " ".join(POLICY_NAMES) + ")")
    try:
        a = p.parse_args(argv)
        if a.scenarios < 1:
            raise BadInput(f"--scenarios must be at least 1, got {a.scenarios}")
        return run_comparison(a.trtllm_src, a.scenarios, a.seed, resolve_policies(a.policies))
    except BadInput as e:
        print(f"trtllm_fused_compare.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
