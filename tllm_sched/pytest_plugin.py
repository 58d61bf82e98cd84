"""tllm_sched/pytest_plugin.py: gate a scheduler change from your own pytest suite (`tllm_gate` fixture).

Installed with tllm_sched as a pytest plugin (entry point pytest11), so any suite can write:

    def test_scheduler_cost(tllm_gate):
        tllm_gate("mu-decode", workloads=["decode"], policies=["MAX_UTILIZATION"], backends=["cpp", "python"],
                  active=[256], imports=["mypkg.my_policy"])

    pytest --tllm-gate=record    # once, on the reference commit: measures and writes the baseline
    pytest                       # later: measures again; a regression fails the test, naming the
                                 # cell, the measure, the baseline and the new figure

It runs the same record and check as `tllm-sched gate` (tllm_sched/gate.py): instructions per
step (callgrind, else perf), thread CPU time judged by a significance test and an effect size,
the ratio to cpp, crossings. `imports` are imported before measuring, here and in the
instruction-counting child, so a module that patches or registers your policy is measured.
Baselines live with pytest-benchmark's saved runs, which are kept per machine as absolute times
must be: `<--benchmark-storage>/<machine id>/tllm_gate/NAME.json` (`.benchmarks/tllm_gate/`
without pytest-benchmark), or in `--tllm-gate-dir`. Without a baseline the test is skipped
with the command that records one. `--tllm-gate=off` skips every gate.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import pytest


def pytest_addoption(parser):
    g = parser.getgroup("tllm-sched gate")
    g.addoption("--tllm-gate", choices=("check", "record", "off"), default="check",
                help="tllm_gate fixture: check against the baselines (default), record them, or skip")
    g.addoption("--tllm-gate-dir", default=None, metavar="DIR",
                help="folder of the tllm_gate baselines (default: in pytest-benchmark's storage)")


def _baseline_dir(config) -> Path:
    chosen = config.getoption("tllm_gate_dir")
    if chosen:
        return Path(chosen)
    session = getattr(config, "_benchmarksession", None)
    storage = getattr(session, "storage", None)
    if storage is not None and isinstance(getattr(storage, "path", None), Path):  # file storage only
        return storage.path / (storage.default_machine_id or "") / "tllm_gate"
    return Path(".benchmarks") / "tllm_gate"


class Gate:
    """The `tllm_gate` fixture: call it with a baseline name and the cells to gate."""

    def __init__(self, mode: str, folder: Path):
        self.mode, self.folder = mode, folder

    def path(self, name: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(f"tllm_gate: baseline name {name!r}: use letters, digits, '.', '_' and '-'")
        return self.folder / f"{name}.json"

    def __call__(self, name: str, *, workloads: Optional[Sequence[str]] = None,
                 policies: Optional[Sequence[str]] = None, backends: Optional[Sequence[str]] = None,
                 active: Optional[Sequence[int]] = None, imports: Sequence[str] = (), rounds: Optional[int] = None,
                 steps: Optional[int] = None, instructions: str = "auto", thresholds=None):
        """Record (--tllm-gate=record) or check the cells; returns the gate.CheckResult of a check."""
        from tllm_sched import gate

        path = self.path(name)
        if self.mode == "off":
            pytest.skip("--tllm-gate=off")
        try:
            gate.import_modules(imports)
            cells = gate.select_cells(workloads, policies, backends, active)
            if self.mode == "record":
                path.parent.mkdir(parents=True, exist_ok=True)
                gate.check_writable(str(path))
                doc = gate.record(cells, rounds=rounds or gate.DEFAULT_ROUNDS, steps=steps or gate.DEFAULT_STEPS,
                                  instructions=instructions, imports=imports)
                gate.write_atomic(str(path), doc)
                return None
            if not path.exists():
                pytest.skip(f"no tllm_gate baseline {path}: record it with pytest --tllm-gate=record")
            result = gate.check(gate.load_baseline(str(path)), cells, thresholds=thresholds or gate.Thresholds(),
                                instructions=instructions, imports=imports)
        except (gate.GateError, gate.RunFailure) as e:
            pytest.fail(f"tllm_gate {name}: {e}", pytrace=False)
        if result.regressions:
            pytest.fail(f"tllm_gate {name} ({path}):\n" + "\n".join(result.regressions), pytrace=False)
        return result


@pytest.fixture
def tllm_gate(request) -> Gate:
    """Gate scheduler cost against a recorded baseline (see tllm_sched/pytest_plugin.py)."""
    return Gate(request.config.getoption("tllm_gate"), _baseline_dir(request.config))


__all__ = ["Gate", "tllm_gate"]
