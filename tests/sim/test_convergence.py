"""Convergence of the golden model against float64 SGD on the 8x8 digits (issue 4): one epoch
of ``bench/convergence.py`` (the full run, a few epochs and seeds, writes docs/convergence.md)."""

import importlib.util
import os

import pytest

pytest.importorskip("sklearn")

_spec = importlib.util.spec_from_file_location(
    "bench_convergence", os.path.join(os.path.dirname(__file__), "..", "..", "bench",
                                      "convergence.py"))
convergence = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convergence)


@pytest.mark.slow
def test_one_epoch_fixed_point_within_two_points_of_float():
    r = convergence.run(epochs=1, batch=16, lr=0.125, seed=0, with_d0=False)
    assert r["lags"] == {"conv1": 3, "conv2": 2, "fc3": 1}
    golden, flt = r["acc"]["golden"][-1], r["acc"]["float"][-1]
    assert flt > 0.85  # it did learn
    assert abs(golden - flt) <= 0.02
    assert r["loss"]["golden"][-1] < 0.5 * 2.3026  # well below chance-level cross-entropy
    assert r["overflow_total"]["golden"] == 0
