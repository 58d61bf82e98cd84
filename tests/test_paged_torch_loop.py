"""tests/test_paged_torch_loop.py: examples/paged_torch_loop.py, a real model on the step API.

The example's attention reads and writes a paged KV tensor only through the Executor's block tables
and slot mapping; `--check` compares every generated sequence with a dense, cache-free run of the
same model. It runs on CPU here, on every backend, with its feature counts checked (so the run
really went through reuse, a copied block, chunking and pauses), and once with the block copies
skipped on purpose, to show that the check catches a wrong KV block.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tllm_sched.scheduler import BACKENDS  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "paged_torch_loop.py"


def run(*args, timeout=300):
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=timeout)


def test_every_backend_matches_the_dense_reference_and_exercises_every_path():
    proc = run("--check", "--scale", "1", "--backend", ",".join(BACKENDS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for backend in BACKENDS:
        assert re.search(rf"check {backend}: all 13 sequences match the dense reference token for token", out), out
    exercised = re.findall(r"exercised: (\d+) reused blocks \((\d+) copied\), (\d+) chunked context rows, "
                           r"(\d+) pauses, (\d+) completed", out)
    assert len(exercised) == len(BACKENDS) and len(set(exercised)) == 1, out  # every backend decides alike
    reused, copied, chunked, pauses, completed = map(int, exercised[0])
    assert reused > 0 and copied > 0 and chunked > 0 and pauses > 0 and completed == 13, out
    assert "scheduler share of the step: median" in out


def test_the_check_catches_a_block_copy_left_out():
    proc = run("--check", "--scale", "1", "--skip-block-copies")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"check cpp: MISMATCH in \d+ of 13 sequences", proc.stdout), proc.stdout


def test_batch_size_measurements_go_to_json(tmp_path):
    out = tmp_path / "m.json"
    proc = run("--batch-sizes", "2,3", "--steps", "6", "--backend", "cpp,python", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["format"] == "tllm_sched.paged_torch_loop/1" and data["device"] == "cpu"
    rows = [(r["backend"], r["batch_size"]) for r in data["results"]]
    assert rows == [("cpp", 2), ("python", 2), ("cpp", 3), ("python", 3)]
    for r in data["results"]:
        assert r["steps"] == 3  # 6 steps, the first 3 left out as warm-up
        assert 0 < r["scheduler_share_median"] < 1 and r["scheduler_us"]["median"] > 0 and r["step_ms"]["p99"] > 0


def load_example():
    spec = importlib.util.spec_from_file_location("paged_torch_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args, words", [
    (["--backend", "cuda"], "unknown backend cuda"),
    (["--batch-sizes", "8,x"], "comma-separated integers"),
    (["--batch-sizes", "0"], "must be positive"),
    (["--heads", "3"], "multiple of --heads"),
    (["--steps", "-1"], "--steps must be >= 0"),
])
def test_bad_options_exit_2_with_one_line(args, words, capsys):
    with pytest.raises(SystemExit) as e:
        load_example().parse_args(args)
    assert e.value.code == 2 and words in capsys.readouterr().err.strip().splitlines()[-1]


def test_cuda_without_a_gpu_exits_2():
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as e:
        load_example().parse_args(["--device", "cuda"])
    assert e.value.code == 2
