"""tllm_sched.attention_dp: attention data parallelism: one scheduler per rank, one collective per
step, the same routing on every rank.

Each rank schedules its own requests (`Scheduler`, any backend, over its own table and KV cache),
packs a fixed-length state record (`rank_state`), all-gathers the records once per step over a
group (`transport`: in-process or torch.distributed), and runs the same deterministic decision on
the same gathered data (`ranks.AttentionDP`: context balancing and a router from `adp_router`), so
all ranks agree without a coordinator. `simulation` replays a request trace on N ranks.
Importing this package does not import torch (only building a `TorchGroup` does).
"""

from tllm_sched.attention_dp.adp_router import (
    ADPRouter,
    KVCacheAwareRouter,
    LoadBalancedRouter,
    NewRequests,
    ROUTERS,
    RoundRobinRouter,
    Routing,
    make_router,
)
from tllm_sched.attention_dp.rank_state import RankFailure, RankStateError, RankStates
from tllm_sched.attention_dp.ranks import AdpRank, AttentionDP, ContextBalance, ContextBalancer, StepDecision
from tllm_sched.attention_dp.transport import InProcessGroup, TorchGroup

__all__ = [
    "ADPRouter",
    "AdpRank",
    "AttentionDP",
    "ContextBalance",
    "ContextBalancer",
    "InProcessGroup",
    "KVCacheAwareRouter",
    "LoadBalancedRouter",
    "NewRequests",
    "ROUTERS",
    "RankFailure",
    "RankStateError",
    "RankStates",
    "RoundRobinRouter",
    "Routing",
    "StepDecision",
    "TorchGroup",
    "make_router",
]
