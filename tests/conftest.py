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


#: CPU seconds of the heaviest test files of the default run (measured with ``--durations=0``,
#: 2026-12-07, this 2-core machine). ``pytest -n auto --dist loadfile`` hands whole files to
#: the workers in collection order (``--no-loadscope-reorder`` in ``pyproject.toml``: xdist
#: would otherwise order them by their number of tests, which put the long simulations last
#: and left one worker running them alone for minutes); running the heaviest first keeps the
#: workers' ends close (longest processing time first).
HEAVY_FILES = {
    "tests/sim/test_train_node.py": 450,
    "tests/sim/test_cluster_split.py": 420,
    "tests/hw/test_build.py": 330,
    "tests/sim/test_cluster.py": 310,
    "tests/sim/test_cluster_lending.py": 230,
    "tests/sim/test_fifo_rows.py": 150,
    "tests/sim/test_offchip_act_ram_train.py": 120,
    "tests/hw/test_lend.py": 110,
    "tests/sim/test_offchip_master.py": 110,
}


def pytest_collection_modifyitems(config, items):
    """Files in :data:`HEAVY_FILES` first, heaviest first; the others after them in their
    usual order (a stable sort: the order of the tests in a file is kept)."""
    root = config.rootpath

    def weight(item):
        try:
            rel = item.path.relative_to(root).as_posix()
        except ValueError:
            return 0
        return -HEAVY_FILES.get(rel, 0)
    items.sort(key=weight)


@pytest.fixture
def waves(request):
    """Name for this test's waveform files: ``<test file stem>__<test name>``, file-system safe.

    Pass it to :func:`sim.waves.run_simulation`; files are only written when ``FPDEEP_WAVES=DIR``
    is set (see ``docs/hw-numerics-and-waves.md``).
    """
    stem = request.node.path.stem if hasattr(request.node, "path") else "test"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}__{request.node.name}").strip("_")
