"""tests/test_bench_dp.py: `tllm-sched bench --dp-ranks N` (tllm_sched/bench_dp.py): the attention-DP
trace replay side by side, the router-cost run, and the refusals."""

import json
from pathlib import Path

import pytest

from tllm_sched import bench

MOONCAKE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mooncake_conversation_trace.jsonl"


def _run(tmp_path, *argv, plot=False):
    return bench.main([*argv, "--out", str(tmp_path / "out"), "--no-progress"] + ([] if plot else ["--no-plot"]))


def _doc(tmp_path):
    return json.loads((tmp_path / "out" / "results.json").read_text())


@pytest.mark.skipif(not MOONCAKE.exists(), reason=f"{MOONCAKE} is missing")
def test_trace_replay_compares_routers_side_by_side(tmp_path, capsys):
    assert _run(tmp_path, "--trace", str(MOONCAKE), "--trace-limit", "25", "--dp-ranks", "3",
                "--router", "load,kv-aware", "--adp-balance", "off,on", "--num-blocks", "4096", plot=True) == 0
    doc = _doc(tmp_path)
    assert doc["format"] == "tllm_sched.bench_dp/1" and doc["kind"] == "dp-trace"
    assert [(r["router"], r["balance"]) for r in doc["results"]] == [
        ("load", "off"), ("kv-aware", "off"), ("load", "on"), ("kv-aware", "on")]
    for r in doc["results"]:
        assert r["collectives_per_step"] == 1.0 and r["collectives"] == r["steps"]
        assert r["requests_done"] == 25 and not r["truncated"]
        assert len(r["rank_hit_rates"]) == 3 and 0 <= r["reuse_hit_rate"] <= 1
        assert 0 < r["balance_ratio"] <= 1 and 0 < r["balance_sol"] <= 1
        assert 0 < r["route_median_us"] <= r["route_p99_us"] and 0 < r["route_share"] < 1
        assert r["latency_mean_s"] > 0 and sum(r["rank_tokens"]) == r["tokens_total"]
    held = {r["balance"]: r["contexts_held_steps"] for r in doc["results"] if r["router"] == "load"}
    assert held["off"] == 0
    out = capsys.readouterr().out
    assert "route us med/p99" in out and "rank hit rates" in out
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.startswith("# tllm_sched attention-DP benchmark (dp-trace)") and "| kv-aware | on |" in md
    has_mpl = doc["machine"]["matplotlib"] is not None
    assert (tmp_path / "out" / "report.png").exists() == has_mpl


def test_router_cost_against_a_decode_step(tmp_path, capsys):
    assert _run(tmp_path, "--dp-ranks", "4", "--dp-new", "32", "--dp-repeats", "40") == 0
    doc = _doc(tmp_path)
    assert doc["kind"] == "dp-router-cost" and doc["config"]["new_requests"] == 32
    names = [r["name"] for r in doc["results"]]
    assert names[0] == "decode step, 1,024 active (cpp)" and doc["results"][0]["ratio_to_decode_step"] == 1.0
    for router in ("round-robin", "load", "kv-aware"):
        assert f"router {router} (cpp)" in names
    assert {r["name"]: r["calls"] for r in doc["results"]}["router load (python)"] == 20
    assert "x decode step" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--router", "load"], "--router and --adp-balance need --dp-ranks N"),
    (["--dp-ranks", "0"], "must be positive"),
    (["--dp-ranks", "2", "--router", "fastest"], "unknown router 'fastest'"),
    (["--dp-ranks", "2", "--adp-balance", "maybe"], "unknown --adp-balance value 'maybe'"),
    (["--dp-ranks", "2", "--compare", "x.json"], "--compare is gone"),
    (["--dp-ranks", "2", "--trace", "/nonexistent.jsonl"], "/nonexistent.jsonl:1: cannot read the trace"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, argv, message):
    assert _run(tmp_path, *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and not any("Traceback" in line for line in err)
    assert not (tmp_path / "out").exists()
