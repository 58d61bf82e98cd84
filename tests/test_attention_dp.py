"""tests/test_attention_dp.py: the attention-DP step protocol in one process: the prefix probe of
the reuse tree, context balancing, AttentionDP's pack/decide, and the in-process trace replay
(one collective per step, nothing lost, no torch)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tllm_sched.attention_dp import AttentionDP, ContextBalance, ContextBalancer, InProcessGroup, NewRequests, make_router
from tllm_sched.attention_dp.rank_state import RankFailure, RankStateError, failed_record, record_length
from utils import add_req, kv_snapshot, new_kv, new_table, toks

MOONCAKE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mooncake_conversation_trace.jsonl"
needs_mooncake = pytest.mark.skipif(not MOONCAKE.exists(), reason=f"{MOONCAKE} is missing")


# ------------------------------------------------------------------------ probe_prefix_match_lengths


def probe(kv, prompts, lora=None):
    tokens = np.concatenate([np.asarray(p, dtype=np.int32) for p in prompts]) if prompts else np.zeros(0, np.int32)
    offsets = np.zeros(len(prompts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in prompts])
    return kv.probe_prefix_match_lengths(tokens, offsets, lora).tolist()


def cached_tree():
    """tpb 10: A = [0..19] + [100..104] stored: [0..9] <- [10..19] <- partial [100..103]."""
    t = new_table()
    kv = new_kv(t, 10, 20, 100, enable_block_reuse=True)
    a = add_req(t, 1, toks(20) + toks(5, 100))
    kv.add_sequence(1, 25, 1, a)
    kv.remove_sequence(1, a)
    return t, kv


def test_probe_counts_whole_cached_blocks_of_the_prompt_without_its_last_token():
    t, kv = cached_tree()
    before, stats = kv_snapshot(kv), kv.get_kv_cache_stats()
    walks = kv.num_key_walks
    assert probe(kv, [
        toks(20) + toks(5, 100),        # 24 usable tokens: [0..9], [10..19] cached, [100..103] not a full block -> 20
        toks(10) + toks(10, 50) + [1],  # [0..9] cached, [50..59] not -> 10
        toks(20),                       # 19 usable: only [0..9] is a full block -> 10
        toks(21),                       # 20 usable -> 20
        toks(20) + toks(11, 100),       # third full block [100..109] vs the cached partial [100..103]: no -> 20
        toks(26, 5),                    # no cached first block -> 0
        [],                             # nothing -> 0
        [7],
    ]) == [20, 10, 10, 20, 20, 0, 0, 0]
    assert probe(kv, [toks(21), toks(21)], lora=np.array([3, -1], dtype=np.int64)) == [0, 20]  # A had no LoRA
    assert kv_snapshot(kv) == before and kv.num_key_walks == walks  # a dry run: nothing changed,
    assert kv.get_kv_cache_stats() == stats  # not even the work statistics (blocks hashed, compared)
    kv.check_invariants()


def test_probe_without_reuse_and_bad_inputs():
    t = new_table()
    kv = new_kv(t, 10, 20, 100)
    assert probe(kv, [toks(40)]) == [0]
    _, kv = cached_tree()
    i32, i64 = np.arange(5, dtype=np.int32), np.array([0, 5], dtype=np.int64)
    with pytest.raises(ValueError, match="offsets: must rise"):
        kv.probe_prefix_match_lengths(i32, np.array([0, 6], dtype=np.int64))
    with pytest.raises(ValueError, match="offsets: must rise"):
        kv.probe_prefix_match_lengths(i32, np.array([3, 2], dtype=np.int64))
    with pytest.raises(ValueError, match="expected n \\+ 1 entries"):
        kv.probe_prefix_match_lengths(i32, np.zeros(0, dtype=np.int64))
    with pytest.raises(TypeError, match="dtype int32"):
        kv.probe_prefix_match_lengths(i32.astype(np.int64), i64)
    with pytest.raises(ValueError, match="one entry per prompt"):
        kv.probe_prefix_match_lengths(i32, i64, np.zeros(2, dtype=np.int64))
    with pytest.raises(TypeError, match="int64 numpy array or None"):
        kv.probe_prefix_match_lengths(i32, i64, [1])


# ---------------------------------------------------------------------------------- context balance


def run(balancer, ctx, gen):
    return balancer.run_contexts(np.array(ctx), np.array(gen))


def test_context_balance_batching_wait_when_every_rank_has_contexts():
    b = ContextBalancer(ContextBalance(timeout_iters=3, batching_wait_iters=2), max_batch_size=8)
    # all ranks have contexts, generations and free slots: wait 2 steps to gather more, then run
    assert [run(b, [1, 2], [3, 3]) for _ in range(4)] == [False, False, True, False]
    # all have contexts but one rank has no generation: run at once (nothing to overlap with)
    assert run(b, [1, 1], [0, 3]) is True


def test_context_balance_holds_until_every_rank_has_contexts_or_timeout():
    b = ContextBalancer(ContextBalance(timeout_iters=3, batching_wait_iters=0), max_batch_size=8)
    # rank 1 has no context: hold for up to 3 steps, the third one runs (timeout), then it starts over
    assert [run(b, [2, 0], [4, 4]) for _ in range(4)] == [False, False, True, False]
    assert b.waiting_iters == 1
    # a rank without generations: never hold (it would idle)
    assert run(b, [2, 0], [4, 0]) is True and b.waiting_iters == 0
    # a rank whose batch is full of generations counts as "no free slot": the waiting path again
    assert run(b, [2, 1], [8, 4]) is False
    # contexts on every rank: run (batching_wait_iters 0) and reset the wait
    assert run(b, [2, 1], [4, 4]) is True and b.waiting_iters == 0
    with pytest.raises(ValueError):
        ContextBalance(timeout_iters=-1)


# ------------------------------------------------------------------------------------ AttentionDP


COUNTS = dict(active_requests=2, active_tokens=100, uncached_tokens=40, free_blocks=9, waiting=0, context=1,
              generation=1, scheduled_tokens=11)


def test_attention_dp_pack_gather_decide():
    new = NewRequests.make([5, 6], [100, 10])
    dps = [AttentionDP(r, 2, make_router("kv-aware"), max_num_active_requests=4, max_batch_size=8, route_window=4,
                       balance=None) for r in range(2)]
    assert dps[0].record_length == record_length(4)
    group = InProcessGroup(2)
    matches = [np.array([0, 0]), np.array([64, 0])]
    gathered = group.all_gather([dp.pack(3, COUNTS, new.request_id, matches[dp.rank]) for dp in dps])
    decisions = [dp.decide(gathered, 3, new) for dp in dps]
    assert group.collectives == 1
    # request 5: 64 of 100 cached on rank 1: score0 = 100 + 40/100*100 = 140, score1 = 36 + 40 = 76 -> rank 1
    # request 6 (10 tokens, no match): loads [40, 76]: denom 116: rank 0 -> 10 + 40/116*10 < 10 + 76/116*10
    assert [d.routing.ranks.tolist() for d in decisions] == [[1, 0], [1, 0]]
    assert all(d.run_contexts for d in decisions)
    with pytest.raises(RankStateError, match="rank 0 routes a queue head of 1 requests, the records describe 2"):
        dps[0].decide(gathered, 3, new.head(1))
    with pytest.raises(RankStateError, match="out of step"):
        dps[0].decide(gathered, 4, new)
    bad = group.all_gather([dps[0].pack(3, COUNTS, new.request_id, matches[0]).copy(),
                            failed_record(dps[1].record_length, 1, 3)])
    with pytest.raises(RankFailure, match="rank 1 failed at step 3"):
        dps[0].decide(bad, 3, new)
    load = AttentionDP(0, 2, make_router("load"), max_num_active_requests=4, max_batch_size=8)
    assert load.record_length == record_length(0)  # no match slots for a router that needs none
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        AttentionDP(2, 2, make_router("load"), max_num_active_requests=4, max_batch_size=8)
    with pytest.raises(ValueError, match="expected 2 records"):
        group.all_gather([gathered[0]])


# ------------------------------------------------------------------------------ in-process replay


def replay(router="kv-aware", ranks=2, limit=40, steps=100_000, **opts):
    from tllm_sched.attention_dp.simulation import AdpOptions, simulate
    from tllm_sched.bench_workloads import TraceOptions
    from tllm_sched.traces import load_trace

    trace = load_trace(MOONCAKE, limit=limit)
    return trace, simulate(trace, AdpOptions(dp_ranks=ranks, router=router, **opts),
                           TraceOptions(num_blocks=4096, max_num_tokens=4096), max_steps=steps)


@needs_mooncake
@pytest.mark.parametrize("router", ["round-robin", "load", "kv-aware"])
def test_replay_routes_every_request_once_with_one_collective_per_step(router):
    trace, res = replay(router, ranks=3, limit=40)
    assert not res.truncated and res.collectives == res.steps
    table = res.ranks[0].log.routing_table()
    assert sorted(table[:, 1].tolist()) == list(range(len(trace)))  # routed exactly once each
    for r in res.ranks[1:]:
        assert np.array_equal(r.log.routing_table(), table)
    finished = sum(int(np.frombuffer(r.log.finished, dtype=np.int64).sum()) for r in res.ranks)
    assert finished == len(trace)  # and every request ran to completion on its rank
    for r, sim in enumerate(res.ranks):  # each rank finished what was routed to it
        assert int(np.frombuffer(sim.log.finished, dtype=np.int64).sum()) == int((table[:, 2] == r).sum())
        assert len(sim.engine.active) == 0
        sim.engine.kv.check_invariants()


@needs_mooncake
def test_replay_with_the_python_backends_decides_alike():
    _, a = replay("kv-aware", limit=30)
    _, b = replay("kv-aware", limit=30, router_backend="python", scheduler_backend="python")
    assert np.array_equal(a.ranks[0].log.routing_table(), b.ranks[0].log.routing_table())
    assert a.ranks[0].log.run_contexts == b.ranks[0].log.run_contexts


ROOT = Path(__file__).resolve().parents[1]


@needs_mooncake
def test_in_process_replay_does_not_import_torch(tmp_path):
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_attention_dp as t; "
            "t.replay('kv-aware', limit=10, steps=50); import tllm_sched.attention_dp; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    # Not the checkout as cwd: `-c` puts the cwd first on sys.path, and the checkout's tllm_sched/
    # has no built extension.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p and Path(p).resolve() != ROOT))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
