"""tests/conftest.py: make `python -m pytest` in a checkout test the built package.

`python -m` puts the current folder first on sys.path. Unless a developer put a built _core extension
into the checkout's tllm_sched/, drop the checkout so that the installed tllm_sched is the one tested,
and keep child interpreters (`python -m tllm_sched ...` run with cwd=ROOT) from adding it back.
"""

import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if not any((_ROOT / "tllm_sched" / f"_core{s}").exists() for s in EXTENSION_SUFFIXES):
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]
    os.environ["PYTHONSAFEPATH"] = "1"  # Python >= 3.11: `python -m` does not prepend the cwd


import pytest  # noqa: E402

from tllm_sched.scheduler import BACKENDS  # noqa: E402


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each backend in turn, for the tests that must hold on every one."""
    return request.param
