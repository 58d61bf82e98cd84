"""tests/test_attention_dp_multiprocess.py: attention DP across processes (torch.multiprocessing +
gloo): every rank reaches the same routing as the in-process simulation over a few hundred steps of
the Mooncake trace, and a rank that raises, dies or hangs ends every other rank with RankFailure
within the group's timeout. Skipped without torch or without the trace."""

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

MOONCAKE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mooncake_conversation_trace.jsonl"
pytestmark = pytest.mark.skipif(not MOONCAKE.exists(), reason=f"{MOONCAKE} is missing")

# 150 ms per step: 300 steps cover ~50 s of the trace (~150 arrivals)
ENGINE = dict(num_blocks=4096, max_num_tokens=4096, step_base_ms=150.0)


def _options(case, rank=0):
    from tllm_sched.attention_dp.simulation import AdpOptions

    window = case.get("windows", {}).get(str(rank), 64)
    return AdpOptions(dp_ranks=case["world"], router=case["router"], route_window=window)


def _trace(case):
    from tllm_sched.traces import load_trace

    return load_trace(MOONCAKE, limit=case["limit"])


def _worker(rank, case, out_dir):
    """One rank: init gloo, build the TorchGroup, replay; write what happened to rank<r>.json."""
    import datetime

    import torch.distributed as dist

    from tllm_sched.attention_dp.simulation import run_rank
    from tllm_sched.attention_dp.transport import TorchGroup
    from tllm_sched.bench_workloads import TraceOptions

    seen = {"step": -1, "at": time.monotonic()}

    def fail(step):
        seen.update(step=step, at=time.monotonic())
        if rank == case.get("fault_rank") and step == case["fault_step"]:
            if case["fault"] == "exit":
                os._exit(7)
            if case["fault"] == "raise":
                raise ValueError("injected fault")
            time.sleep(120)  # "hang": stop answering (the test kills this process)

    result = {}
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{case['port']}", rank=rank,
                                world_size=case["world"], timeout=datetime.timedelta(seconds=60))
        opts = _options(case, rank)
        group = TorchGroup(opts.record_length, timeout_s=case.get("timeout_s", 30), staged=case.get("staged"))
        assert group.staged == bool(case.get("staged"))
        sim = run_rank(group, _trace(case), opts, TraceOptions(**ENGINE), max_steps=case["steps"], fail=fail)
        np.save(Path(out_dir) / f"routing{rank}.npy", sim.log.routing_table())
        result = dict(ok=True, steps=sim.step, collectives=group.collectives,
                      run_contexts=list(sim.log.run_contexts))
    except BaseException as e:  # noqa: BLE001 - reported to the test
        result = dict(ok=False, error=type(e).__name__, message=str(e), step=seen["step"],
                      elapsed=time.monotonic() - seen["at"])
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    os._exit(0)  # without destroy_process_group: its peers may be gone


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(case, tmp_path, wait_s=90):
    """Runs _worker on case["world"] processes (forked: the children need not import torch again) and
    returns each rank's result (None: it wrote none). Stops waiting once every rank but a faulty
    one has answered, then kills what is left of the processes it started."""
    import torch.multiprocessing as mp

    case = dict(case, port=_free_port())
    ctx = mp.start_processes(_worker, args=(case, str(tmp_path)), nprocs=case["world"], join=False,
                             start_method="fork")
    files = [tmp_path / f"rank{r}.json" for r in range(case["world"])]
    expected = [f for r, f in enumerate(files) if r != case.get("fault_rank")]
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not all(f.exists() for f in expected):
        time.sleep(0.05)
    for p in ctx.processes:  # the others exit right after writing their answer
        p.join(max(0.1, min(1.0, deadline - time.monotonic())))
        if p.is_alive():  # the hung rank of the hang case
            p.kill()
            p.join(10)
    return [json.loads(f.read_text()) if f.exists() else None for f in files]


@pytest.mark.parametrize("world, router, staged", [(2, "kv-aware", True), (4, "load", False)])
def test_every_rank_routes_as_the_in_process_simulation(world, router, staged, tmp_path):
    """staged: the record goes through a separate "device" tensor, NCCL's code path, on gloo."""
    from tllm_sched.attention_dp.simulation import simulate
    from tllm_sched.bench_workloads import TraceOptions

    case = dict(world=world, router=router, limit=120, steps=300, staged=staged)
    results = _spawn(case, tmp_path)
    assert all(r is not None and r["ok"] for r in results), results
    ref = simulate(_trace(case), _options(case), TraceOptions(**ENGINE), max_steps=case["steps"])
    expected = ref.ranks[0].log.routing_table()
    assert expected.shape[0] > 60  # the run routed a good part of the trace
    for rank, res in enumerate(results):
        assert res["steps"] == ref.steps == res["collectives"]  # one all_gather per step (plus the handshake)
        assert np.array_equal(np.load(tmp_path / f"routing{rank}.npy"), expected)
        assert res["run_contexts"] == list(ref.ranks[0].log.run_contexts)


@pytest.mark.parametrize("fault", ["raise", "exit", "hang"])
def test_a_failing_rank_stops_every_other_rank(fault, tmp_path):
    timeout = 3.0
    case = dict(world=3, router="load", limit=60, steps=200, fault=fault, fault_rank=1, fault_step=20,
                timeout_s=timeout)
    t0 = time.monotonic()
    results = _spawn(case, tmp_path, wait_s=60)
    assert time.monotonic() - t0 < 60
    for rank in (0, 2):
        res = results[rank]
        assert res is not None and not res["ok"] and res["error"] == "RankFailure", res
        if fault == "raise":  # the failing rank's record tells the others at once
            assert "attention-DP rank 1 failed at step 20" in res["message"]
            assert res["elapsed"] < timeout
        elif fault == "exit":  # a closed connection: at once
            assert "died or did not answer" in res["message"] and res["elapsed"] < timeout
        else:  # no answer: the group's timeout
            assert f"did not answer within {timeout:g} s" in res["message"]
            assert timeout - 0.5 <= res["elapsed"] < timeout + 10
    if fault == "raise":
        assert results[1]["error"] == "ValueError" and results[1]["message"] == "injected fault"
    else:
        assert results[1] is None  # it exited, or was killed while hanging


def test_ranks_with_another_record_layout_are_refused(tmp_path):
    case = dict(world=2, router="kv-aware", limit=20, steps=10, windows={"1": 32})
    results = _spawn(case, tmp_path)
    for res in results:
        assert res is not None and res["error"] == "RankStateError", res
        assert "disagree on the record layout" in res["message"]
