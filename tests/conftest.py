"""tests/conftest.py: fixtures shared by the unit tests.

Run the tests with `pytest` (not `python -m pytest`, which puts the working directory, the
checkout, first on sys.path, where tllm_sched/ has no built extension) or against an editable
install.
"""

import pytest

from tllm_sched.scheduler import BACKENDS


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each backend in turn, for the tests that must hold on every one."""
    return request.param
