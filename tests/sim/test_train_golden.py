"""Tests of the whole-network golden trainer :mod:`sim.golden.train` (schedule and records)."""

from types import SimpleNamespace

import numpy as np
import pytest

from fpdeep_map.board import load_board
from fpdeep_map.mapper import map_network
from fpdeep_map.network import load_network
from fpdeep_map.numerics import NumericsConfig
from sim.data import synthetic
from sim.golden import layers as L
from sim.golden.train import GoldenTrainer, init_weights, lags_from_plan, weight_shape

N = NumericsConfig()


@pytest.fixture(scope="module")
def tiny():
    return load_network("tiny")


@pytest.fixture(scope="module")
def digits_net():
    return load_network("digits")


def test_lags_from_real_plan(digits_net):
    plan = map_network(digits_net, load_board("sim-node"), 1, max_row_lanes=1, batch=16)
    assert lags_from_plan(plan) == {"conv1": 3, "conv2": 2, "fc3": 1}


def test_lags_of_a_split_layer_take_the_minimum():
    seg = lambda layer, r: SimpleNamespace(layer=layer, act_ram_images=r)
    plan = SimpleNamespace(node_plans=[
        SimpleNamespace(segments=[seg("c1", 5.9), seg("c2", 4.2)]),
        SimpleNamespace(segments=[seg("c2", 3.99), seg("f3", 1.0)]),
    ])
    assert lags_from_plan(plan) == {"c1": 5, "c2": 3, "f3": 1}


def test_init_weights_deterministic_and_he_scaled(tiny):
    a, b, c = init_weights(tiny, 7), init_weights(tiny, 7), init_weights(tiny, 8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    for l in tiny.compute_layers():
        w = a[l.name] / 2.0 ** N.master.frac
        assert w.shape == weight_shape(l)
        fan_in = np.prod(weight_shape(l)[1:])
        assert 0.7 < w.std() / np.sqrt(2 / fan_in) < 1.3


def test_version_rule_b2_d3(tiny):
    """B = 2, D = 3: which images used which weight version, and that they really did."""
    x, y = synthetic(tiny, 12, seed=3)
    lags = {"conv1": 3, "conv2": 3, "conv3": 2, "fc4": 0}
    t = GoldenTrainer(tiny, N, 2, 0.25, lags, init_weights(tiny, 1))
    recs = t.run(x, y)
    fp_expected = {3: [0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4],
                   2: [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4],
                   0: [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]}
    bp_expected = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    for name, d in lags.items():
        assert [r["fp_version"][name] for r in recs] == fp_expected[d]
        assert [r["bp_version"][name] for r in recs] == bp_expected
    assert all(len(v) == 7 for v in t.versions.values())  # 6 updates after 12 images
    # the versions differ (the learning rate is not negligible), so using one means something
    assert not np.array_equal(t.working("conv1", 0), t.working("conv1", 1))
    for r in recs:
        for l in tiny.compute_layers():
            a = r["act_in"][l.name]
            wf = t.working(l.name, r["fp_version"][l.name])
            if l.kind == "conv":
                acc, _ = L.conv_fp(a, wf, l.stride, l.padding, l.groups, N)
            else:
                acc, _ = L.fc_fp(a.reshape(-1), wf, N)
            assert np.array_equal(L.fp_output(acc, N)[0], r["act"][l.name])
            # PG and EB use version i // B, on the errors of the layer's output
            e = r["err"][l.name]
            wb = t.working(l.name, r["bp_version"][l.name])
            if l.kind == "conv":
                g, _ = L.conv_pg(e, a, l.kernel, l.stride, l.padding, l.groups, N)
            else:
                g, _ = L.fc_pg(e, a.reshape(-1), N)
            assert np.array_equal(g, r["grad"][l.name])
            if l.needs_error:
                if l.kind == "conv":
                    ei, _ = L.conv_eb(e, wb, l.stride, l.padding, l.groups, a.shape, N)
                else:
                    ei, _ = L.fc_eb(e, wb, N, in_shape=a.shape)
                assert np.array_equal(ei, r["err_in"][l.name])
            else:
                assert l.name not in r["err_in"]


def test_updates_average_the_batch_gradients(tiny):
    x, y = synthetic(tiny, 9, seed=4)
    t = GoldenTrainer(tiny, N, 3, 0.125, None, init_weights(tiny, 2))
    recs = t.run(x, y)
    for l in tiny.compute_layers():
        for m in range(3):
            total = sum(r["grad"][l.name] for r in recs[3 * m:3 * m + 3])
            avg, _ = L.average_gradient(total, 3, N)
            assert np.array_equal(avg, t.avg_grads[l.name][m])
            new, w, _ = L.update(t.master(l.name, m), avg, t.lr_q, N)
            assert np.array_equal(new, t.master(l.name, m + 1))
            assert np.array_equal(w, t.working(l.name, m + 1))


def test_error_chain_records(digits_net):
    x, y = synthetic(digits_net, 2, seed=5)
    t = GoldenTrainer(digits_net, N, 2, 0.125, {"conv1": 3, "conv2": 2, "fc3": 1},
                      init_weights(digits_net, 3))
    r = t.run(x, y)[1]
    assert np.array_equal(r["err"]["fc3"], r["loss_error"])
    assert np.array_equal(r["loss_error"], L.loss_error(r["scores"], r["label"],
                                                        "softmax_cross_entropy", N)[0])
    assert np.array_equal(r["err"]["pool2"], r["err_in"]["fc3"])
    e, _ = L.maxpool_backward(r["err"]["pool2"], r["argmax"]["pool2"], 2, 2, (16, 8, 8), N)
    assert np.array_equal(r["err"]["relu2"], e)
    assert np.array_equal(r["err"]["conv2"], L.relu_backward(e, r["mask"]["relu2"]))
    assert np.array_equal(r["err"]["relu1"], r["err_in"]["conv2"])
    assert np.array_equal(r["err"]["conv1"],
                          L.relu_backward(r["err_in"]["conv2"], r["mask"]["relu1"]))
    assert np.array_equal(r["act"]["pool2"], L.maxpool(r["act"]["relu2"], 2, 2)[0])
    assert np.array_equal(r["act_in"]["fc3"], r["act"]["pool2"])
    assert t.overflow_total() == 0


def test_lag_changes_the_result(tiny):
    x, y = synthetic(tiny, 16, seed=6)
    m = init_weights(tiny, 4)
    a = GoldenTrainer(tiny, N, 4, 0.25, None, m)
    b = GoldenTrainer(tiny, N, 4, 0.25, {"conv1": 3, "conv2": 3, "conv3": 2, "fc4": 1}, m)
    a.run(x, y)
    b.run(x, y)
    assert not np.array_equal(a.master("conv1"), b.master("conv1"))


def test_deterministic(tiny):
    x, y = synthetic(tiny, 8, seed=7)
    runs = []
    for _ in range(2):
        t = GoldenTrainer(tiny, N, 4, 0.125, {"conv1": 2, "conv2": 2, "conv3": 1, "fc4": 1},
                          init_weights(tiny, 5))
        runs.append(t.run(x, y))
        runs[-1].append({l.name: t.master(l.name) for l in tiny.compute_layers()})
    for ra, rb in zip(*runs):
        for key, va in ra.items():
            vb = rb[key]
            if isinstance(va, dict):
                assert va.keys() == vb.keys()
                assert all(np.array_equal(va[k], vb[k]) for k in va)
            else:
                assert np.array_equal(va, vb)


def test_small_run_loss_decreases(tiny):
    x, y = synthetic(tiny, 8, seed=6)
    t = GoldenTrainer(tiny, N, 4, 0.0625, {"conv1": 4, "conv2": 3, "conv3": 2, "fc4": 1},
                      init_weights(tiny, 6), record=False)
    for _ in range(15):
        t.run(x, y)
    first, last = np.mean(t.losses[:8]), np.mean(t.losses[-8:])
    assert last < 0.25 * first
    assert t.accuracy(x, y) == 1.0
    assert t.overflow_total() == 0
    # versions nobody needs any more are dropped without record
    assert t.versions["conv1"][0] is None and t.versions["conv1"][-1] is not None


def test_bad_arguments(tiny):
    m = init_weights(tiny, 1)
    with pytest.raises(ValueError, match="no lag for layer"):
        GoldenTrainer(tiny, N, 2, 0.1, {"conv1": 1}, m)
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        GoldenTrainer(tiny, N, 0, 0.1, None, m)
    with pytest.raises(ValueError, match="not representable"):
        GoldenTrainer(tiny, N, 2, 1.5, None, m)
    bad = dict(m, conv1=m["conv1"][:1])
    with pytest.raises(ValueError, match="initial weights of 'conv1'"):
        GoldenTrainer(tiny, N, 2, 0.1, None, bad)


def test_synthetic_shapes(tiny):
    x, y = synthetic(tiny, 5, seed=1)
    assert x.shape == (5, 3, 8, 8) and y.shape == (5,) and y.max() < 10
    x2, y2 = synthetic(tiny, 5, seed=1)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_digits_data():
    pytest.importorskip("sklearn")
    from sim.data import digits
    tx, ty, vx, vy = digits(seed=0)
    assert tx.shape == (1438, 1, 8, 8) and vx.shape == (359, 1, 8, 8)
    assert tx.min() == 0.0 and tx.max() == 1.0 and set(ty.tolist()) == set(range(10))
    tx2, *_ = digits(seed=0)
    assert np.array_equal(tx, tx2)


def _batch_gradients(net, numerics, images, labels, seed):
    """Mini-batch gradient sums of the golden model and of float64 backprop on the same
    (exactly representable) inputs and working weights."""
    from sim.reference import FloatTrainer
    m = init_weights(net, seed, numerics)
    t = GoldenTrainer(net, numerics, len(labels) + 1, 0.125, None, m)  # no update inside
    f = FloatTrainer(net, {k: t.working(k) / 2.0 ** numerics.weight.frac for k in m},
                     len(labels) + 1, 0.125)
    gq = {k: 0.0 for k in m}
    for x, y in zip(images, labels):
        x = np.floor(x * 2**numerics.activation.frac + 0.5) / 2**numerics.activation.frac
        r = t.step(x, y)
        f.step(x, y)
        for k in m:
            gq[k] = gq[k] + r["grad"][k] / 2.0 ** numerics.gradient.frac
    return {k: np.linalg.norm(gq[k] - f._grad[k]) / np.linalg.norm(f._grad[k]) for k in m}


@pytest.mark.parametrize("seed", [0, 1])
def test_network_gradients_against_float(digits_net, seed):
    """Whole-network gradients (digits, a mini-batch of 16 at He init) against float64: the
    measured relative L2 error is at most 13% (conv1), 6% (conv2), 0.4% (fc3) over seeds 0-2;
    the bound asserted is twice that. The error comes from the Q8.8 activations (ReLU masks and
    pool winners that flip, rounded small activations): with 16 fractional activation bits it
    drops below 2% (docs/golden-model.md)."""
    pytest.importorskip("sklearn")
    from fpdeep_map.numerics import FixedFormat
    from sim.data import digits
    tx, ty, _, _ = digits()
    rel = _batch_gradients(digits_net, N, tx[:16], ty[:16], seed)
    assert rel["conv1"] < 0.26 and rel["conv2"] < 0.12 and rel["fc3"] < 0.008
    wide = NumericsConfig(activation=FixedFormat(24, 16))
    rel = _batch_gradients(digits_net, wide, tx[:16], ty[:16], seed)
    assert all(v < 0.04 for v in rel.values())


# ---- split layers: the trainer follows the plan's ICP/OCP chains ------------------------------

@pytest.mark.parametrize("kw,kind", [(dict(ocp_threshold=1), "icp"),
                                     (dict(max_row_lanes=1), "ocp")])
def test_split_plan_follows_chains(kw, kind):
    from sim.golden.train import splits_from_plan
    net = load_network("tiny")
    plan = map_network(net, load_board("sim-node"), 2, **kw)
    splits = splits_from_plan(plan)
    assert splits["conv2"][0] == kind
    rng = np.random.default_rng(5)
    xs = rng.random((3,) + tuple(net.input_shape))
    ys = rng.integers(0, 10, 3)
    init = init_weights(net, 3, plan.numerics)
    t = GoldenTrainer(net, plan.numerics, 2, 0.05, lags_from_plan(plan), init, plan=plan)
    t.run(xs, ys)
    l2 = net.layer("conv2")
    n = plan.numerics
    for rec in t.images:
        w = t.working("conv2", rec["fp_version"]["conv2"])
        a = rec["act_in"]["conv2"]
        if kind == "icp":
            y, _ = L.icp_conv_fp(a, w, l2.stride, l2.padding, splits["conv2"][1], n)
            assert "conv2" in rec["fp_split"] and "eb_split" not in rec
        else:
            y, _ = L.fp_output(L.conv_fp(a, w, l2.stride, l2.padding, 1, n)[0], n)
            wb = t.working("conv2", rec["bp_version"]["conv2"])
            e, _ = L.ocp_conv_eb(rec["err"]["conv2"], wb, l2.stride, l2.padding, a.shape,
                                 splits["conv2"][1], n)
            assert (rec["err_in"]["conv2"] == e).all() and "fp_split" not in rec
        assert (rec["act"]["conv2"] == y).all()
    # without the plan every layer is whole
    t0 = GoldenTrainer(net, plan.numerics, 2, 0.05, lags_from_plan(plan), init)
    assert t0.splits == {}
    t0.run(xs, ys)
    assert "fp_split" not in t0.images[0] and "eb_split" not in t0.images[0]
