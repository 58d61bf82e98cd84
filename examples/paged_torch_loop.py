"""examples/paged_torch_loop.py: tllm_sched in your own serving loop, driving real paged attention.

A small decoder-only transformer (random weights, seeded) keeps its keys and values in a paged KV
tensor. tllm_sched decides every step (which requests run, which pause, how contexts are chunked)
and owns the blocks; the model reads and writes the paged tensor only through the block tables and
slot mapping that `tllm_sched.Executor` fills. README.md, "Using tllm_sched in your own loop", walks
through `serve` below line by line.

    python examples/paged_torch_loop.py --check                    # CPU, every backend, a few seconds
    python examples/paged_torch_loop.py --backend python --device cuda --check
    python examples/paged_torch_loop.py --device cuda --backend cpp --batch-sizes 8,32,128 --json out.json

The default run exercises prefix reuse (requests sharing prompts, one of them partially, so a block
is copied), chunked prefill, MAX_UTILIZATION pauses (a paused request loses its blocks and recomputes
its prompt plus the tokens it generated) and completion with release. `--check` compares every
generated sequence with a dense, cache-free run of the same model (greedy, token for token) and
exits 0 only when all match (1 on a mismatch, 2 on bad options). `--batch-sizes` measures steady
serving at a few batch sizes instead: per backend, the step time, the model's (GPU) time, the
scheduler's time and its share of the step; `--json OUT` writes them.

Layout of the KV tensor: [num_blocks, num_layers, 2 (K, V), tokens_per_block, num_heads, head_dim],
block-major like TensorRT-LLM's pools, so copying a block is one contiguous copy. A token with slot
s (the slot mapping) lives at [s // tokens_per_block, layer, :, s % tokens_per_block].
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import tllm_sched as ts
from tllm_sched.config import ChunkingConfig, SchedulerConfig
from tllm_sched.scheduler import BACKENDS, Scheduler


# ----------------------------------------------------------------------------- the model

class TinyDecoder:
    """Token and learned position embeddings, pre-norm blocks (attention, then a GELU MLP), a final
    norm and an output projection. Random weights from `seed`; created on `device`."""

    def __init__(self, vocab: int, d_model: int, n_heads: int, n_layers: int, max_positions: int, seed: int,
                 device: torch.device, dtype: torch.dtype):
        g = torch.Generator().manual_seed(seed)

        def weight(*shape, scale):
            return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

        d = d_model
        self.vocab, self.d, self.heads, self.layers = vocab, d, n_heads, n_layers
        self.head_dim = d // n_heads
        self.tok = weight(vocab, d, scale=1.0)
        self.pos = weight(max_positions, d, scale=1.0)
        self.blocks = [dict(wqkv=weight(d, 3 * d, scale=d ** -0.5), wo=weight(d, d, scale=d ** -0.5),
                            w1=weight(d, 4 * d, scale=d ** -0.5), w2=weight(4 * d, d, scale=(4 * d) ** -0.5))
                       for _ in range(n_layers)]
        self.out = weight(d, vocab, scale=3 * d ** -0.5)  # logits spread well apart: argmax ties are unlikely

    def hidden(self, ids: torch.Tensor, positions: torch.Tensor, attend) -> torch.Tensor:
        """Final hidden states [T, d] of tokens `ids` at `positions`; attend(layer, q, k, v) -> [T, H, Dh]."""
        T, d = ids.shape[0], self.d
        x = self.tok[ids] + self.pos[positions]
        for layer, w in enumerate(self.blocks):
            q, k, v = (F.layer_norm(x, (d,)) @ w["wqkv"]).view(T, 3, self.heads, self.head_dim).unbind(1)
            x = x + attend(layer, q, k, v).reshape(T, d) @ w["wo"]
            x = x + F.gelu(F.layer_norm(x, (d,)) @ w["w1"]) @ w["w2"]
        return F.layer_norm(x, (d,))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.out


def dense_generate(model: TinyDecoder, prompt: Sequence[int], max_new: int, device) -> List[int]:
    """The reference: greedy decoding with full causal attention over the whole sequence each step,
    no cache at all."""
    scale = model.head_dim ** -0.5

    def attend(layer, q, k, v):
        s = torch.einsum("qhd,khd->hqk", q, k) * scale
        n = q.shape[0]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
        return torch.einsum("hqk,khd->qhd", s.softmax(-1), v)

    tokens = list(prompt)
    for _ in range(max_new):
        ids = torch.tensor(tokens, device=device)
        h = model.hidden(ids, torch.arange(len(tokens), device=device), attend)
        tokens.append(int(model.logits(h[-1]).argmax()))
    return tokens[len(prompt):]


# ----------------------------------------------------------------------------- paged attention

class StepBuffers:
    """Caller-owned buffers the Executor fills each step, all sections of one int32 host staging
    tensor (pinned on CUDA), so one non-blocking copy per step moves them all to a device twin.
    Built once, never reallocated; the Executor fills their numpy views (the same memory)."""

    def __init__(self, max_rows: int, max_tokens: int, max_blocks: int, device: torch.device):
        sizes = dict(block_tables=max_rows * max_blocks, slot_mapping=max_tokens, input_ids=max_tokens,
                     positions=max_tokens, query_lens=max_rows, seq_lens=max_rows, token_row=max_tokens,
                     token_col=max_tokens, last_token=max_rows)
        self.max_blocks, self.device = max_blocks, device
        self.host = torch.zeros(sum(sizes.values()), dtype=torch.int32, pin_memory=device.type == "cuda")
        self.dev = self.host if device.type == "cpu" else torch.zeros_like(self.host, device=device)
        self.np, self.on_device, at = {}, {}, 0
        for name, n in sizes.items():
            self.np[name] = self._shape(name, self.host.numpy()[at:at + n])
            self.on_device[name] = self._shape(name, self.dev[at:at + n])
            at += n
        self.arange = np.arange(max(max_rows, max_tokens), dtype=np.int32)

    def _shape(self, name, part):
        return part.reshape(-1, self.max_blocks) if name == "block_tables" else part

    def fill(self, ex: ts.Executor):
        """Fills the step's metadata and starts its copy to the device: (rows, tokens, widest row)."""
        b = self.np
        rows = ex.block_tables(b["block_tables"])            # [rows, max_blocks]: block ids, 0-padded
        tokens = ex.slot_mapping(b["slot_mapping"])          # per token: block * tpb + offset
        ex.token_inputs(b["input_ids"], b["positions"])      # per token: id fed, position
        ex.sequence_lengths(b["query_lens"], b["seq_lens"])  # per row: tokens this step, KV after it
        q = b["query_lens"][:rows]
        starts = np.cumsum(q) - q
        b["token_row"][:tokens] = np.repeat(self.arange[:rows], q)  # row and column of each token
        b["token_col"][:tokens] = self.arange[:tokens] - np.repeat(starts, q)
        b["last_token"][:rows] = starts + q - 1
        if self.dev is not self.host:
            self.dev.copy_(self.host, non_blocking=True)
        return rows, tokens, int(q.max()) if rows else 0


class PagedAttention:
    """attend(layer, q, k, v) over the paged KV tensor: writes this step's keys and values at their
    slots, then lets every query attend to its row's blocks (gathered through the block table) up to
    its own position."""

    def __init__(self, cache: torch.Tensor, tokens_per_block: int, head_dim: int):
        self.cache, self.tpb, self.scale = cache, tokens_per_block, head_dim ** -0.5

    def set_step(self, meta, rows: int, tokens: int, widest: int, max_seq: int):
        slots = meta["slot_mapping"][:tokens].long()
        self.block, self.offset = slots // self.tpb, slots % self.tpb
        blocks_needed = -(-max_seq // self.tpb)
        self.table = meta["block_tables"][:rows, :blocks_needed].long()
        self.row, self.col = meta["token_row"][:tokens].long(), meta["token_col"][:tokens].long()
        self.rows, self.widest = rows, widest
        positions = meta["positions"][:tokens].long()
        qpos = torch.zeros(rows, widest, dtype=torch.long, device=slots.device)
        qpos[self.row, self.col] = positions
        keys = torch.arange(blocks_needed * self.tpb, device=slots.device)
        self.mask = (keys[None, None, :] <= qpos[:, :, None])[:, None]  # [rows, 1, widest, keys]

    def __call__(self, layer, q, k, v):
        c = self.cache
        c[self.block, layer, 0, self.offset] = k
        c[self.block, layer, 1, self.offset] = v
        R, H, Dh = self.rows, q.shape[1], q.shape[2]
        K = c[self.table, layer, 0].reshape(R, -1, H, Dh)  # [rows, keys, H, Dh]
        V = c[self.table, layer, 1].reshape(R, -1, H, Dh)
        Q = q.new_zeros(R, self.widest, H, Dh)
        Q[self.row, self.col] = q
        s = torch.einsum("rqhd,rkhd->rhqk", Q, K) * self.scale
        p = s.masked_fill(~self.mask, float("-inf")).softmax(-1)
        return torch.einsum("rhqk,rkhd->rqhd", p, V)[self.row, self.col]


# ----------------------------------------------------------------------------- requests

@dataclass
class Request:
    rid: int
    prompt: List[int]
    max_new: int
    arrive: int  # step at which it enters


def check_workload(rng: np.random.Generator, vocab: int, scale: int = 1) -> List[Request]:
    """Families of requests sharing prompts (exact and partial prefixes), long prompts that are
    chunked, and more demand than the cache holds, so MAX_UTILIZATION pauses."""
    reqs: List[Request] = []

    def add(prompt, max_new, arrive):
        reqs.append(Request(len(reqs), [int(t) for t in prompt], max_new, arrive))

    for family in range(scale):
        base = rng.integers(0, vocab, 44)
        long = rng.integers(0, vocab, 100)
        at = 13 * family
        add(base, 16, at)                                           # stores its blocks for reuse
        add(long, 12, at)                                           # chunked: 100 > 64 tokens a step
        add(base, 14, at + 9)                                       # the same prompt: full reuse
        add(np.concatenate([base[:36], rng.integers(0, vocab, 10)]), 12, at + 10)  # shares 4.5 blocks: a copy
        add(np.concatenate([base[:28], rng.integers(0, vocab, 20)]), 10, at + 11)  # 3.5 blocks: a copy
        add(np.concatenate([long[:60], rng.integers(0, vocab, 30)]), 16, at + 14)  # long shared prefix
        for k in range(7):                                          # demand beyond the cache: pauses
            add(rng.integers(0, vocab, int(rng.integers(24, 64))), int(rng.integers(16, 28)), at + 2 + k)
    return reqs


def steady_workload(rng: np.random.Generator, vocab: int, batch: int) -> List[Request]:
    """4 x batch requests, all waiting at the start: prompts of 32 to 96 tokens, half of them behind a
    shared 32-token system prompt, 32 new tokens each."""
    system = rng.integers(0, vocab, 32)
    reqs = []
    for i in range(4 * batch):
        prompt = rng.integers(0, vocab, int(rng.integers(32, 97)))
        if i % 2:
            prompt[:32] = system
        reqs.append(Request(i, [int(t) for t in prompt], 32, 0))
    return reqs


# ----------------------------------------------------------------------------- the loop

@dataclass
class Engine:
    """What the loop is configured with (one cache, one scheduler configuration)."""
    tokens_per_block: int
    num_blocks: int
    max_seq_len: int
    max_batch: int
    max_tokens: int
    policy: str = "MAX_UTILIZATION"


@dataclass
class RunStats:
    steps: int = 0
    sched_s: List[float] = field(default_factory=list)   # per step: Scheduler.schedule
    exec_s: List[float] = field(default_factory=list)    # per step: Executor calls and buffer filling
    model_s: List[float] = field(default_factory=list)   # per step: copies, forward, sampling (wall)
    gpu_s: List[float] = field(default_factory=list)     # per step: the same on the GPU (CUDA events)
    step_s: List[float] = field(default_factory=list)    # per step: everything
    batch: List[int] = field(default_factory=list)       # per step: rows
    paused: int = 0            # pauses (each recomputes its prompt and generated tokens later)
    chunks: int = 0            # context rows that did not finish their prompt (chunked prefill)
    reused_blocks: int = 0     # prompt blocks found in the cache (fully or partly) instead of computed
    copies: int = 0            # partially reused blocks copied
    finished: int = 0


def serve(model: TinyDecoder, engine: Engine, backend: str, requests: List[Request], device: torch.device,
          break_copies: bool = False, max_steps: int = 100_000, on_step=None):
    """Runs `requests` to completion; returns ({request id: generated tokens}, RunStats)."""
    e = engine
    table = ts.RequestTable(capacity=len(requests))
    kv = ts.KVCacheManager(table, e.tokens_per_block, e.num_blocks, e.max_seq_len, enable_block_reuse=True)
    config = SchedulerConfig(policy=e.policy, max_num_requests=e.max_batch, max_num_tokens=e.max_tokens,
                             chunking=ChunkingConfig("FIRST_COME_FIRST_SERVED", e.tokens_per_block))
    scheduler = Scheduler(config, table, kv, backend=backend)
    executor = ts.Executor(table, kv)
    active = ts.RequestList(table)
    cache = torch.zeros(e.num_blocks, model.layers, 2, e.tokens_per_block, model.heads, model.head_dim,
                        device=device, dtype=model.tok.dtype)
    max_blocks = -(-e.max_seq_len // e.tokens_per_block)
    buffers = StepBuffers(e.max_batch, e.max_tokens, max_blocks, device)
    attention = PagedAttention(cache, e.tokens_per_block, model.head_dim)
    cuda = device.type == "cuda"
    events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda else None

    outputs: Dict[int, List[int]] = {}
    stats = RunStats()
    columns = table.columns()  # zero-copy views, for the statistics only
    waiting = sorted(requests, key=lambda r: r.arrive)
    step = 0
    while waiting or len(active):
        if step >= max_steps:
            raise RuntimeError(f"not finished after {max_steps} steps")
        t0 = time.perf_counter()
        while waiting and waiting[0].arrive <= step:             # 1. arrivals enter the active list
            r = waiting.pop(0)
            active.append(table.add_request(r.rid, np.asarray(r.prompt), r.max_new))
        t1 = time.perf_counter()
        out = scheduler.schedule(active)                         # 2. decide the step
        t2 = time.perf_counter()
        executor.prepare(out)                                    # 3. pauses, KV blocks, reuse
        t_stats = time.perf_counter()
        stats.chunks += unfinished_prompts(columns, executor)    # (statistics, not timed)
        t_stats = time.perf_counter() - t_stats
        copies = executor.block_copies()
        rows, tokens, widest = buffers.fill(executor)            # 4. block tables, slots, inputs
        meta = buffers.on_device
        t3 = time.perf_counter()
        if cuda:
            events[0].record()
        if not break_copies:
            for src, dst, _ in copies.tolist():                  # 5. a partially reused block's KV
                cache[dst] = cache[src]
        if rows:
            seq_lens = buffers.np["seq_lens"][:rows]
            attention.set_step(meta, rows, tokens, widest, int(seq_lens.max()))
            h = model.hidden(meta["input_ids"][:tokens].long(), meta["positions"][:tokens].long(), attention)
            sampled = model.logits(h[meta["last_token"][:rows].long()]).argmax(-1)  # 6. greedy sampling
            sampled = sampled.cpu()
        else:
            sampled = torch.zeros(0, dtype=torch.int64)
        if cuda:
            events[1].record()
        t4 = time.perf_counter()
        finished = executor.commit(sampled)                      # 7. chunks, tokens, states, release
        for slot in finished.tolist():
            request = table.request_at(slot)
            outputs[request.request_id] = request.tokens[request.orig_prompt_len:].tolist()
        active.remove_slots(finished)                            # 8. finished requests leave
        table.remove_slots(finished)
        t5 = time.perf_counter()

        stats.steps += 1
        stats.sched_s.append(t2 - t1)
        stats.exec_s.append((t3 - t2 - t_stats) + (t5 - t4))
        stats.model_s.append(t4 - t3)
        stats.step_s.append(t5 - t0 - t_stats)
        stats.batch.append(rows)
        if cuda:
            events[1].synchronize()
            stats.gpu_s.append(events[0].elapsed_time(events[1]) / 1e3)
        stats.paused += len(out.paused)
        stats.copies += len(copies)
        stats.finished += len(finished)
        if on_step is not None:
            on_step(step, out, stats)
        step += 1
    stats.reused_blocks = kv.get_kv_cache_stats()["reused_blocks"]
    return outputs, stats


def unfinished_prompts(columns, executor: ts.Executor) -> int:
    """Context rows of the prepared step that do not reach the end of their prompt (chunked)."""
    ctx = executor.rows[:executor.num_context_rows]
    end = columns["context_current_position"][ctx] + columns["context_chunk_size"][ctx]
    return int((end < columns["prompt_len"][ctx]).sum())


# ----------------------------------------------------------------------------- reports

def summary(stats: RunStats, skip: int = 0) -> dict:
    """Per-step times (µs, ms) and the scheduler's share of the step, over the steps after `skip`."""
    def dist(values, unit):
        a = np.asarray(values[skip:], dtype=np.float64) * unit
        if a.size == 0:
            return {"median": 0.0, "mean": 0.0, "p99": 0.0}
        return {"median": float(np.median(a)), "mean": float(a.mean()), "p99": float(np.percentile(a, 99))}

    sched, step = np.asarray(stats.sched_s[skip:]), np.asarray(stats.step_s[skip:])
    share = sched / step if step.size else np.zeros(0)
    return {
        "steps": len(step),
        "rows_mean": float(np.mean(stats.batch[skip:])) if step.size else 0.0,
        "step_ms": dist(stats.step_s, 1e3),
        "model_ms": dist(stats.model_s, 1e3),
        "gpu_ms": dist(stats.gpu_s, 1e3) if stats.gpu_s else None,
        "scheduler_us": dist(stats.sched_s, 1e6),
        "executor_us": dist(stats.exec_s, 1e6),
        "scheduler_share_median": float(np.median(share)) if share.size else 0.0,
        "scheduler_share_mean": float(share.mean()) if share.size else 0.0,
        "scheduler_share_of_total": float(sched.sum() / step.sum()) if step.size else 0.0,
    }


def describe(backend: str, s: dict) -> str:
    gpu = f", GPU {s['gpu_ms']['median']:.2f} ms" if s["gpu_ms"] else ""
    return (f"{backend:>12}: {s['steps']} steps, {s['rows_mean']:.1f} rows/step; step {s['step_ms']['median']:.2f} ms "
            f"(model {s['model_ms']['median']:.2f} ms{gpu}); scheduler {s['scheduler_us']['median']:.1f} µs "
            f"(mean {s['scheduler_us']['mean']:.1f}, p99 {s['scheduler_us']['p99']:.1f}), executor calls "
            f"{s['executor_us']['median']:.1f} µs; scheduler share of the step: median "
            f"{100 * s['scheduler_share_median']:.2f}% (mean {100 * s['scheduler_share_mean']:.2f}%)")


def write_json(path: str, payload: dict) -> None:
    """Atomically: a failed run never leaves a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".paged_torch_loop.", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="cpp", help=f"scheduler backend(s), comma-separated: {', '.join(BACKENDS)}")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--check", action="store_true",
                   help="compare every generated sequence with a dense, cache-free run; exit 1 on a mismatch")
    p.add_argument("--batch-sizes", default=None,
                   help="measure steady serving at these batch sizes (comma-separated) instead of the default run")
    p.add_argument("--steps", type=int, default=0, help="with --batch-sizes: stop each run after this many steps (0: run to completion)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the measurements to OUT (JSON)")
    p.add_argument("--scale", type=int, default=2, help="default run: families of requests (13 requests each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--tokens-per-block", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--verbose", action="store_true", help="one line per step")
    p.add_argument("--skip-block-copies", action="store_true",
                   help="for the tests: do not copy partially reused blocks, to show that --check catches it")
    args = p.parse_args(argv)
    backends = [b for b in args.backend.split(",") if b]
    bad = [b for b in backends if b not in BACKENDS]
    if bad or not backends:
        p.error(f"--backend: unknown backend {', '.join(bad) or '(none)'}; choose from {', '.join(BACKENDS)}")
    args.backends = backends
    if args.batch_sizes is not None:
        try:
            args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        except ValueError:
            p.error(f"--batch-sizes: expected comma-separated integers, got {args.batch_sizes!r}")
        if not args.batch_sizes or min(args.batch_sizes) <= 0:
            p.error("--batch-sizes: every batch size must be positive")
    for name in ("scale", "layers", "d_model", "heads", "vocab", "tokens_per_block", "threads"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.steps < 0:
        p.error("--steps must be >= 0")
    if args.d_model % args.heads:
        p.error("--d-model must be a multiple of --heads")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available in this torch build or machine")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)  # a small model gains nothing from more; a busy machine loses a lot
    if device.type == "cuda":  # full float32 matmuls: the check compares argmax tokens with a dense run
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(args.seed)
    max_seq_len = 160
    model = TinyDecoder(args.vocab, args.d_model, args.heads, args.layers, max_seq_len, args.seed, device, torch.float32)
    tpb = args.tokens_per_block
    payload = {"format": "tllm_sched.paged_torch_loop/1", "device": args.device, "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "model": {"layers": args.layers, "d_model": args.d_model, "heads": args.heads, "vocab": args.vocab},
               "tokens_per_block": tpb, "results": []}
    failed = False

    if args.batch_sizes is None:  # the default run: reuse, chunking, pauses, completion
        requests = check_workload(np.random.default_rng(args.seed), args.vocab, args.scale)
        engine = Engine(tpb, num_blocks=-(-288 // tpb), max_seq_len=max_seq_len, max_batch=8, max_tokens=64)
        print(f"{len(requests)} requests, {engine.num_blocks} blocks of {tpb} tokens, batch <= {engine.max_batch}, "
              f"<= {engine.max_tokens} tokens a step, {engine.policy}, reuse on; model {args.layers} layers, "
              f"d_model {args.d_model}, {args.heads} heads, on {args.device}")
        results = {}
        for backend in args.backends:
            trace = print_step if args.verbose else None
            outputs, stats = serve(model, engine, backend, requests, device, args.skip_block_copies, on_step=trace)
            results[backend] = outputs
            s = summary(stats)
            print(describe(backend, s))
            print(f"{'':>12}  exercised: {stats.reused_blocks} reused blocks ({stats.copies} copied), "
                  f"{stats.chunks} chunked context rows, {stats.paused} pauses, {stats.finished} completed")
            payload["results"].append(dict(backend=backend, batch_size=engine.max_batch, **s,
                                           reused_blocks=stats.reused_blocks, copies=stats.copies,
                                           chunked_rows=stats.chunks, pauses=stats.paused, completed=stats.finished))
        if args.check:
            t = time.perf_counter()
            reference = {r.rid: dense_generate(model, r.prompt, r.max_new, device) for r in requests}
            print(f"dense reference: {len(reference)} sequences in {time.perf_counter() - t:.1f} s")
            for backend, outputs in results.items():
                bad = [rid for rid in reference if outputs.get(rid) != reference[rid]]
                if bad:
                    failed = True
                    rid = bad[0]
                    got, want = outputs.get(rid), reference[rid]
                    at = next((i for i, (a, b) in enumerate(zip(got or [], want)) if a != b), None)
                    print(f"check {backend}: MISMATCH in {len(bad)} of {len(reference)} sequences; request {rid} "
                          f"differs at generated token {at}: {got} != {want}")
                else:
                    print(f"check {backend}: all {len(reference)} sequences match the dense reference token for token")
    else:  # measurement: steady serving at each batch size
        serve(model, Engine(tpb, 64, max_seq_len, 4, 256), args.backends[0],  # warm-up (allocator, kernels)
              steady_workload(np.random.default_rng(args.seed), args.vocab, 2)[:4], device)
        for batch in args.batch_sizes:
            blocks = batch * (-(-128 // tpb) + 1)
            engine = Engine(tpb, blocks, max_seq_len, batch, max(256, 2 * batch))
            requests = steady_workload(np.random.default_rng(args.seed + batch), args.vocab, batch)
            for backend in args.backends:
                max_steps = args.steps or 100_000
                stop = StopAfter(max_steps)
                try:
                    _, stats = serve(model, engine, backend, requests, device, on_step=stop)
                except StopIteration:
                    stats = stop.stats
                s = summary(stats, skip=min(3, stats.steps - 1))
                print(f"batch {batch:>4} " + describe(backend, s))
                payload["results"].append(dict(backend=backend, batch_size=batch, **s))
    if args.json:
        write_json(args.json, payload)
        print(f"wrote {args.json}")
    return 1 if failed else 0


class StopAfter:
    """on_step hook that ends a measurement run after `n` steps (keeping its statistics)."""

    def __init__(self, n: int):
        self.n, self.stats = n, None

    def __call__(self, step, out, stats):
        self.stats = stats
        if step + 1 >= self.n:
            raise StopIteration


def print_step(step, out, stats):
    share = stats.sched_s[-1] / stats.step_s[-1]
    print(f"  step {step:>4}: {stats.batch[-1]:>3} rows ({len(out.context)} context), {len(out.paused)} paused; "
          f"scheduler {1e6 * stats.sched_s[-1]:7.1f} µs = {100 * share:5.2f}% of {1e3 * stats.step_s[-1]:6.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
