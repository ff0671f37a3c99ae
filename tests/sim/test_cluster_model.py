# amaranth: UnusedElaboratable=no
"""Model validation on the split and lending plans of ``tests/sim/test_cluster_split.py``:
the mapper's timing model (``docs/mapping.md``, section 6) against the cycle-exact
co-simulation, 12 images in mini-batches of 4 (three whole mini-batches).

* the spacing of the loss outputs over whole mini-batches (the update round trip at every
  boundary included) against the averaged period (``summary.cycles_per_image_with_updates``),
  within 5 %;
* the spacing over the first mini-batch against the plan's steady period
  (``summary.cycles_per_image_steady``), within 5 %;
* payload words per link stream and image against the plan's (as in the default tests);
* wire words per link direction and image over the steady images (``sim.train.wire_window``:
  start-up, drain and a lender's run-ahead left out) against the framing model, within 5 %
  except the directions of ``KNOWN_WIRE_MISSES`` (an expected failure that fails once they
  come within 5 %).

Measured (this machine, seed 0, three-bank link transmitter; first batch / whole batches
against the model; with the master copies off chip, 2026-12-07): ocp2 464.33 / 629.5 against
464 / 649.25; ocp3 275 / 451.75 against 275 / 447.75; icp2 480 / 794.5 against 480 / 793.25;
icpfc 399.67 / 682.5 against 401 / 679.25; lend 1600 / 1600 against 1600 / 1600; ocplend 2304 /
2304 against 2304 / 2304; twochains 2054.33 / 2133.25 against 2000 / 2133.25 (2548.25 before
the slowest layer's run-ahead room, ``_Context._run_ahead_room``); icplend 800.33 / 897.25
against 800 / 897.25;
earlier, with the master copies on chip and the weight-stationary PG of the borrowed layers:
icplend 800.33 / 882.5 against 800 / 882.5; ocplend 2304 / 2304 against 2304 / 2304;
twochains 2054.33 / 2118.5 against 2000 / 2533.5 (then a boundary miss); far (re-measured
with the master copies off chip, 2026-12-07: 400 / 418.84 against 400 / 400) 400 / 414.34
against 400 / 400
(lag 14: the PG's later sweeps are in conv1's lending round trip; 437.53 before conv1's lag
covered its round trip at all; the rest is two version gates coupled by back-pressure, not
modelled). The table and
the model's terms: ``docs/mapping.md`` section 6. Marked ``long`` (2-6 minutes per plan): not in
the default run, ``python -m pytest -m long`` runs them.
"""

import pytest

from sim import train

from test_cluster_split import CONFIGS, _check

_RUNS = {}


#: images per run where 12 are too few for the steady state: a plan whose first layer's lag D
#: (``far``: 14) is not small against the run holds the first update until FP of image B + D,
#: so in a 12-image run the update waits for the end of the run and the next mini-batch's
#: gradients wait for it (an end-of-run effect, not the steady period the model predicts)
_IMAGES = {"far": 40}


def _run(name):
    if name not in _RUNS:
        kw = dict(CONFIGS[name])
        images = _IMAGES.get(name, 12)
        res = train.run(kw.pop("net"), kw.pop("board"), images=images, batch=4, seed=0, **kw)
        print(name, {k: res.get(k) for k in (
            "cycles_per_image_first_batch", "predicted_cycles_per_image_steady",
            "cycles_per_image_whole_batches", "predicted_cycles_per_image_with_updates",
            "loss_output_cycles", "wall_seconds")})
        _RUNS[name] = res
    return _RUNS[name]


@pytest.mark.long
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_whole_mini_batches(name):
    res = _run(name)
    _check(res, _IMAGES.get(name, 12), 4)
    s = res["_prep"]["plan"].summary
    got, want = res["cycles_per_image_whole_batches"], s["cycles_per_image_with_updates"]
    if name in KNOWN_BOUNDARY_MISSES and got != pytest.approx(want, rel=0.05):
        pytest.xfail(f"{got} measured against {want}: {KNOWN_BOUNDARY_MISSES[name]}")
    assert got == pytest.approx(want, rel=0.05)


#: plans whose cycles per image over whole mini-batches the model misses by more than 5 %, and
#: why (``docs/mapping.md`` section 6); an expected failure while they miss
KNOWN_BOUNDARY_MISSES = {}


@pytest.mark.long
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_first_mini_batch(name):
    res = _run(name)
    s = res["_prep"]["plan"].summary
    assert res["cycles_per_image_first_batch"] == pytest.approx(
        s["cycles_per_image_steady"], rel=0.05)


#: link directions whose steady wire words the framing model misses by more than 5 %, and why
#: (``docs/mapping.md`` section 5). The test fails when one of them comes within 5 % (take it
#: off the list) as well as on any other miss.
KNOWN_WIRE_MISSES = {
    ("far", 1, 2): "streams node 1 passes on (traced, 12 images, 2026-12-07): its receiver "
                   "hands on each frame whole at its trailer, so node 0's conv1 output for "
                   "node 2 leaves in 51.2 frames per image (58 modelled, the producer's even "
                   "spread), the gradient sets in 2.8 (4), conv3's merged input in 13.4 (16): "
                   "250.6 wire words per image measured against 272.8 (251.3 on chip)",
    ("far", 2, 3): "conv3's activations leave two pixels at a time (4-word runs, fewer "
                   "frames than the model's evenly spread pixels)",
    ("far", 2, 1): "since the master copies went off chip (2026-12-07): 282.3 wire words per "
                   "image measured against 299.4 (-5.7 %; -4.8 % on chip), with far's "
                   "mini-batches 4.5 cycles per image slower than before (418.84); not traced",
}


@pytest.mark.long
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_wire_words(name):
    """Every link direction's wire words per image (payload, frame headers and trailers,
    credit frames) over the steady images (``wire_window``: the second mini-batch to the one
    before the last; a lender's run-ahead left out) against the framing model
    (``fpdeep_map/framing.py``), within 5 %."""
    res = _run(name)
    lo, hi = train.wire_window(_IMAGES.get(name, 12), 4)
    misses = []
    for lk in res["links"]:
        assert lk["wire_images"] == [lo, hi]
        got, want = lk["wire_words_per_image_steady"], lk["predicted_wire_words_per_image"]
        print(f"{name} {lk['src']} -> {lk['dst']}: {got:.2f} measured, {want:.2f} modelled, "
              f"{got / want - 1:+.1%} (whole run {lk['wire_words_per_image']:.2f})")
        if got != pytest.approx(want, rel=0.05):
            misses.append((name, lk["src"], lk["dst"]))
    unexpected = [m for m in misses if m not in KNOWN_WIRE_MISSES]
    fixed = [k for k in KNOWN_WIRE_MISSES if k[0] == name and k not in misses]
    assert not unexpected, unexpected
    assert not fixed, f"{fixed} within 5 % now: take them off KNOWN_WIRE_MISSES"
    if misses:
        pytest.xfail("; ".join(f"{a} -> {b}: {KNOWN_WIRE_MISSES[(n, a, b)]}"
                               for n, a, b in misses))
