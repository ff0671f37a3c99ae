"""Shared pytest fixtures."""

import re
import warnings

import pytest

# Hypothesis imports libcst lazily to print a patch when a property test fails; with this
# environment's mypy_extensions that import emits a DeprecationWarning, which filterwarnings=error
# turns into a pytest INTERNALERROR that hides the failure and stops the run. Import it once here,
# with that warning silenced, so a failing property test is reported normally.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import libcst  # noqa: F401
    except ImportError:
        pass


@pytest.fixture
def waves(request):
    """Name for this test's waveform files: ``<test file stem>__<test name>``, file-system safe.

    Pass it to :func:`sim.waves.run_simulation`; files are only written when ``FPDEEP_WAVES=DIR``
    is set (see ``docs/hw-numerics-and-waves.md``).
    """
    stem = request.node.path.stem if hasattr(request.node, "path") else "test"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}__{request.node.name}").strip("_")
