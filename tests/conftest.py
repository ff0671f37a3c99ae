"""Shared pytest fixtures."""

import re

import pytest


@pytest.fixture
def waves(request):
    """Name for this test's waveform files: ``<test file stem>__<test name>``, file-system safe.

    Pass it to :func:`sim.waves.run_simulation`; files are only written when ``FPDEEP_WAVES=DIR``
    is set (see ``docs/hw-numerics-and-waves.md``).
    """
    stem = request.node.path.stem if hasattr(request.node, "path") else "test"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}__{request.node.name}").strip("_")
