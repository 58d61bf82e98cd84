"""tests/test_stub.py: the committed stub tests/_core.pyi.ref is what nanobind's stubgen prints for
the built `tllm_sched._core` (the same stub the build installs as tllm_sched/_core.pyi).

After changing ext/bindings/, rebuild and refresh the reference from the repository root:

    python -P -m nanobind.stubgen -q -m tllm_sched._core -o tests/_core.pyi.ref
"""

from pathlib import Path

import pytest

REF = Path(__file__).with_name("_core.pyi.ref")
REFRESH = "python -P -m nanobind.stubgen -q -m tllm_sched._core -o tests/_core.pyi.ref"


def test_stub_matches_reference(tmp_path, monkeypatch):
    stubgen = pytest.importorskip("nanobind.stubgen", reason="nanobind is not installed (pip install 'nanobind>=3.1')")
    monkeypatch.setenv("NB_STUBGEN", "1")  # stubgen sets it; monkeypatch restores it afterwards
    out = tmp_path / "_core.pyi"
    # In-process, so the module checked is the one these tests import.
    stubgen.main(["-q", "-m", "tllm_sched._core", "-o", str(out)])
    assert out.read_text(encoding="utf-8") == REF.read_text(encoding="utf-8"), (
        f"tests/_core.pyi.ref is stale; refresh it from the repository root with: {REFRESH}")
