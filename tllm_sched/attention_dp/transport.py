"""tllm_sched/attention_dp/transport.py: the one all_gather per step that attention DP needs.

Two groups, one job: gather every rank's int64 state record into a (world_size, length) array.

  - `InProcessGroup`: N simulated ranks in one process (benchmarks, tests). Its `all_gather`
    takes every rank's record at once. No torch.
  - `TorchGroup`: one rank of a torch.distributed job; its `all_gather` takes this rank's record.
    gloo gathers host tensors; NCCL gathers a device copy of the record (the state tensor lives on
    the GPU, staged through pinned host memory). torch is imported only when one is built.

Both count their collectives (`collectives`), so a benchmark can show exactly one per step.
Faults: a TorchGroup gathers on its own process group created with `timeout_s`, and waits for the
collective at most that long; a peer that died (connection closed) or stopped answering (timeout)
raises `RankFailure` on every rank still running, never a hang.
"""

from __future__ import annotations

import datetime
from typing import Optional, Sequence

import numpy as np

from tllm_sched.attention_dp.rank_state import RECORD_VERSION, RankFailure, RankStateError, stack_records

__all__ = ["InProcessGroup", "TorchGroup"]

_MAGIC = 0x74446150  # "tDaP": the first value of the handshake, to tell our group from a stray one


class InProcessGroup:
    """N ranks simulated in one process: `all_gather(records)` takes rank r's record at index r."""

    def __init__(self, world_size: int):
        if world_size <= 0:
            raise ValueError(f"world_size must be positive, got {world_size}")
        self.world_size = int(world_size)
        self.collectives = 0

    def all_gather(self, records: Sequence[np.ndarray]) -> np.ndarray:
        if len(records) != self.world_size:
            raise ValueError(f"expected {self.world_size} records (one per rank), got {len(records)}")
        self.collectives += 1
        return stack_records(records)


class TorchGroup:
    """This rank's end of a torch.distributed all_gather of fixed-length int64 records.

    Call after `torch.distributed.init_process_group` on every rank of the job (the constructor is
    collective: it creates a process group with `timeout_s` and checks in one handshake that every
    rank runs this record version and length). `device`: where the gathered tensor lives (default
    the current CUDA device for NCCL, the CPU otherwise). Pack each step's record into `record`
    (a numpy view of the host tensor) and call `all_gather(record)`; the result is a numpy view
    that the next call overwrites. `staged` (default: on for a device other than the CPU) gathers a
    device copy of the record; staged on the CPU runs NCCL's code path on gloo (tests)."""

    def __init__(self, record_length: int, *, timeout_s: float = 60.0, backend: Optional[str] = None,
                 device=None, ranks: Optional[Sequence[int]] = None, staged: Optional[bool] = None):
        import torch
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("TorchGroup needs torch.distributed initialised (init_process_group) on every rank")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self._torch, self._dist = torch, dist
        # all_gather_single is all_gather_into_tensor's new name (the old one warns from torch 2.13)
        self._all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        self.timeout = datetime.timedelta(seconds=float(timeout_s))
        backend = backend or dist.get_backend()
        self.group = dist.new_group(ranks=None if ranks is None else list(ranks), backend=backend, timeout=self.timeout)
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        self.backend = str(backend)
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")
        self.device = torch.device(device)
        self.length = int(record_length)
        self.collectives = 0
        pin = self.device.type == "cuda"
        self._host_in = torch.zeros(self.length, dtype=torch.int64, pin_memory=pin)
        # gloo wants the gathered tensor flat: (world_size * length,), viewed as rows in numpy.
        self._host_out = torch.zeros(self.world_size * self.length, dtype=torch.int64, pin_memory=pin)
        self.record = self._host_in.numpy()  # zero-copy: pack here
        self._gathered = self._host_out.numpy().reshape(self.world_size, self.length)
        self.staged = self.device.type != "cpu" if staged is None else bool(staged)
        if not self.staged:
            self._dev_in, self._dev_out = self._host_in, self._host_out
        else:
            self._dev_in = torch.zeros(self.length, dtype=torch.int64, device=self.device)
            self._dev_out = torch.zeros(self.world_size * self.length, dtype=torch.int64, device=self.device)
        self._handshake()

    def _gather(self, dev_in, dev_out, host_in=None, host_out=None, what: str = "the step's state all_gather"):
        try:
            if host_in is not None and dev_in is not host_in:
                dev_in.copy_(host_in, non_blocking=True)
            work = self._all_gather_single(dev_out, dev_in, group=self.group, async_op=True)
            work.wait(self.timeout)
            if host_out is not None and dev_out is not host_out:
                host_out.copy_(dev_out)
        except Exception as e:  # gloo / NCCL errors: a closed peer, a timeout, an aborted communicator
            raise RankFailure(f"attention-DP rank {self.rank}: {what} failed, so another rank died or did not "
                              f"answer within {self.timeout.total_seconds():g} s: {' '.join(str(e).split())[:300]}"
                              ) from e

    def _handshake(self) -> None:
        torch = self._torch
        mine = torch.tensor([_MAGIC, RECORD_VERSION, self.length, self.rank], dtype=torch.int64)
        out = torch.zeros(self.world_size * 4, dtype=torch.int64)
        if not self.staged:
            self._gather(mine, out, what="the attention-DP handshake")
        else:
            dev_out = out.to(self.device)
            self._gather(mine.to(self.device), dev_out, what="the attention-DP handshake")
            out.copy_(dev_out)
        seen = out.numpy().reshape(self.world_size, 4)
        for r in range(self.world_size):
            magic, version, length, rank = (int(v) for v in seen[r])
            if magic != _MAGIC or rank != r:
                raise RankStateError(f"rank {r} answered the attention-DP handshake with {seen[r].tolist()}: not a "
                                     f"tllm_sched rank")
            if version != RECORD_VERSION:
                raise RankStateError(f"rank {r} runs state record version {version}, this rank {RECORD_VERSION}: "
                                     f"mixed tllm_sched versions")
            if length != self.length:
                raise RankStateError(f"rank {r} gathers records of {length} values, this rank {self.length}: the "
                                     f"ranks disagree on the record layout (router or route window)")

    def all_gather(self, record: np.ndarray) -> np.ndarray:
        """Every rank's record, row r from rank r. `record` is normally `self.record` (no copy)."""
        if record is not self.record:
            if record.shape != (self.length,):
                raise RankStateError(f"this rank's record has shape {record.shape}, the group gathers {self.length}")
            self.record[:] = record
        self._gather(self._dev_in, self._dev_out, self._host_in, self._host_out)
        self.collectives += 1
        return self._gathered

    def destroy(self) -> None:
        """Releases the group's process group (not the default one)."""
        self._dist.destroy_process_group(self.group)
