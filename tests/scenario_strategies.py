"""tests/scenario_strategies.py: hypothesis strategies that draw tllm_sched.scenario/1 scenarios.

Shared by the differential test (tests/test_differential.py), tests/test_fused.py and the
comparison with TensorRT-LLM's fused scheduler (bench/trtllm_fused_compare.py, which loads this
file by path). Not a test module: nothing here is collected.
"""

from __future__ import annotations

from hypothesis import strategies as st

from tllm_sched.registry import CAPACITY_POLICIES, CHUNKING_POLICIES, WAITING_QUEUE_POLICIES


@st.composite
def scenarios(draw, with_kv=None):
    """A valid-or-nearly tllm_sched.scenario/1 dict; `with_kv` forces a KV cache on or off (None:
    drawn, always on except in some `micro` harness scenarios)."""
    tpb = draw(st.sampled_from([1, 2, 4, 8]))
    max_seq_len = draw(st.integers(8, 64))
    reuse = draw(st.sampled_from([False, True, True]))
    harness = draw(st.sampled_from(["full", "full", "full", "capacity", "micro"]))
    if with_kv is None:
        with_kv = harness != "micro" or draw(st.booleans())
    kv = None
    min_blocks = max(2, -(-max_seq_len // tpb))
    if with_kv:
        kv = {
            "tokens_per_block": tpb,
            # Often just above the minimum, so MAX_UTILIZATION has to pause.
            "num_blocks": draw(st.one_of(st.integers(min_blocks, min_blocks + 3), st.integers(min_blocks, min_blocks + 40))),
            "max_seq_len": max_seq_len,
            "enable_block_reuse": reuse,
            "enable_partial_reuse": draw(st.booleans()),
            "copy_on_partial_reuse": draw(st.booleans()),
            "num_secondary_blocks": draw(st.sampled_from([0, 0, 0, 4])),
        }
    cross = None
    if with_kv and draw(st.integers(0, 5)) == 0:
        cross = {"tokens_per_block": tpb, "num_blocks": kv["num_blocks"], "max_seq_len": max_seq_len}
    chunking = None
    if draw(st.booleans()):
        unit = tpb * draw(st.integers(1, 3)) if (with_kv and reuse) else draw(st.integers(1, 8))
        chunking = {"policy": draw(st.sampled_from(CHUNKING_POLICIES)), "unit_size": unit}
    max_num_requests = draw(st.integers(1, 6))
    sched = {
        "policy": draw(st.sampled_from(list(CAPACITY_POLICIES))),
        "max_num_requests": max_num_requests,
        "max_batch_size": draw(st.integers(1, 6)),
        "max_num_tokens": draw(st.one_of(st.none(), st.integers(4, 80))),
        "max_context_length": draw(st.one_of(st.none(), st.integers(4, 64))),
        "chunking": chunking,
        "two_steps_look_ahead": draw(st.booleans()),
    }
    prefixes = [draw(st.lists(st.integers(0, 3), min_size=max_seq_len, max_size=max_seq_len)) for _ in range(2)]
    n = draw(st.integers(1, 8))
    reqs = []
    for i in range(n):
        max_new = draw(st.integers(1, min(8, max_seq_len - 1)))
        plen = draw(st.integers(1, max_seq_len - max_new))
        prompt = list(draw(st.sampled_from(prefixes))[:plen])
        if draw(st.booleans()):  # diverge after a shared prefix
            cut = draw(st.integers(0, plen - 1))
            prompt[cut:] = draw(st.lists(st.integers(0, 3), min_size=plen - cut, max_size=plen - cut))
        r = {"id": draw(st.sampled_from([i, i + 10, 100 - i])), "prompt": prompt, "max_new_tokens": max_new,
             "arrive_at": draw(st.integers(0, 4)), "priority": draw(st.sampled_from([0.3, 0.5, 0.5, 0.8])),
             "lora_task_id": draw(st.sampled_from([None, None, 1, 2, 3])), "draft_tokens": draw(st.integers(0, 3)),
             "state": draw(st.sampled_from(["CONTEXT_INIT"] * 6 + ["ENCODER_INIT"] +
                                           (["DISAGG_GENERATION_INIT"] if harness != "micro" else [])))}
        if not with_kv:
            r["beam_width"] = draw(st.sampled_from([1, 1, 2]))
        if cross is not None:
            r["encoder_output_len"] = draw(st.integers(1, max_seq_len))
        if chunking is not None and draw(st.integers(0, 3)) == 0:
            r["context_chunk_size"] = draw(st.integers(1, 4)) * (chunking["unit_size"] if reuse else 1)
        reqs.append(r)
    events = []
    if draw(st.booleans()):
        events.append({"at": draw(st.integers(0, 6)), "set_draft_tokens": {
            "ids": [reqs[0]["id"]], "count": draw(st.integers(0, 3))}})
    return {
        "format": "tllm_sched.scenario/1",
        "harness": harness,
        "kv_cache": kv,
        "cross_kv_cache": cross,
        "peft": draw(st.one_of(st.none(), st.builds(
            lambda p, m: {"pages_per_task": p, "max_device_pages": p + m}, st.integers(1, 5), st.integers(0, 10)))),
        "scheduler": sched,
        "micro_slots": draw(st.sampled_from([1, 1, 2])),
        "max_input_len": draw(st.integers(4, 64)),
        "requests": reqs,
        "events": events,
        "max_iterations": 120,
    }



@st.composite
def fused_or_queued(draw):
    """`scenarios()` in the fused mode (three times in four) and/or with a waiting queue (every
    other one): the same three-backend comparison covers both features."""
    raw = draw(scenarios())
    sched = raw["scheduler"]
    if draw(st.integers(0, 3)):
        sched["fused"] = True
        raw["harness"] = "full"
    if draw(st.booleans()):
        sched["waiting_queue_policy"] = draw(st.sampled_from(WAITING_QUEUE_POLICIES))
        sched["max_num_active_requests"] = draw(st.one_of(st.none(), st.integers(1, 6)))
    return raw

