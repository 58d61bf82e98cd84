"""tests/conftest.py: fixtures and settings shared by the unit tests.

Run the tests with `pytest` (not `python -m pytest`, which puts the working directory, the
checkout, first on sys.path, where tllm_sched/ has no built extension) or against an editable
install.

Hypothesis: with CI=true the "ci" profile runs (derandomised, so a run is reproducible, with no
example database, a bounded deadline and no explain phase); by hand the "dev" profile draws new
examples every run. With CI=true a missing ../shared (scenarios, traces) fails the run instead
of skipping the tests that read it.
"""

import os
from datetime import timedelta

import pytest
from hypothesis import Phase, settings

from tllm_sched.scheduler import BACKENDS
from utils import SHARED, lowered_thresholds

IN_CI = os.environ.get("CI") == "true"

settings.register_profile("dev", deadline=None)
settings.register_profile(
    "ci", derandomize=True, database=None, print_blob=True,
    deadline=timedelta(seconds=30),  # far above any example here: only a hang-like slowdown fails
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
)
settings.load_profile("ci" if IN_CI else "dev")


def pytest_configure(config):
    if IN_CI and not SHARED.is_dir():
        raise pytest.UsageError(f"CI=true, but the shared folder {SHARED} (scenarios, traces) is missing: "
                                "clone the repository beside it")


@pytest.fixture(params=[*BACKENDS, "python-lowered"])
def backend(request):
    """Each backend in turn, for the tests that must hold on every one; "python-lowered" is the
    batched Python backend with its size thresholds lowered (tests/utils.py LOWERED_THRESHOLDS),
    so the hand-built cases reach its large-list paths too."""
    if request.param != "python-lowered":
        yield request.param
        return
    with lowered_thresholds():
        yield "python"
