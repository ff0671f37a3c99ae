# amaranth: UnusedElaboratable=no
"""Model validation on the split and lending plans of ``tests/sim/test_cluster_split.py``:
the mapper's timing model (``docs/mapping.md``, section 6) against the cycle-exact
co-simulation, 12 images in mini-batches of 4 (three whole mini-batches).

* the loss-output spacing over the first mini-batch against the plan's steady period
  (``summary.cycles_per_image_steady``), within 5 %;
* the spacing over whole mini-batches (the update round trip at every boundary included)
  against the averaged period (``summary.cycles_per_image_with_updates``), within 5 %;
* payload words per link stream and image against the plan's (as in the default tests).

Slow: about 3-5 minutes per plan on this 2-core machine.
"""

import pytest

from sim import train

from test_cluster_split import CONFIGS, _check


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cycles_per_image_model_vs_cosimulation(name):
    kw = dict(CONFIGS[name])
    res = train.run(kw.pop("net"), kw.pop("board"), images=12, batch=4, seed=0, **kw)
    s = res["_prep"]["plan"].summary
    print(name, {k: res.get(k) for k in (
        "cycles_per_image_first_batch", "predicted_cycles_per_image_steady",
        "cycles_per_image_whole_batches", "predicted_cycles_per_image_with_updates",
        "wall_seconds")})
    _check(res, 12, 4)
    assert res["cycles_per_image_first_batch"] == pytest.approx(
        s["cycles_per_image_steady"], rel=0.05)
    assert res["cycles_per_image_whole_batches"] == pytest.approx(
        s["cycles_per_image_with_updates"], rel=0.05)
