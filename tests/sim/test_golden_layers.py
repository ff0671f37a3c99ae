"""Tests of the per-layer golden model :mod:`sim.golden.layers` against the independent float64
reference :mod:`sim.reference` (and PyTorch autograd when it is installed).

Tolerances (derived in ``docs/golden-model.md``):

* exactly representable inputs (the golden model's own integers, dequantized): the float64
  reference is exact, so the golden output is the reference rounded once: within 0.5 LSB of the
  output format (half-up; < 1 LSB when truncating), and equal to ``floor(ref * 2**frac + 1/2)``;
* real-valued inputs (quantized by the golden model first): per output the bound
  ``sum |w| da + |a| dw + da dw`` over the terms of the sum (``da``, ``dw`` half an LSB of the
  input formats) plus 0.5 LSB of the output, computed from the data.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fpdeep_map.numerics import FixedFormat, NumericsConfig
from sim import fixed, reference as ref
from sim.golden import layers as L, sfu

N = NumericsConfig()
A, W, E, G = N.activation, N.weight, N.error, N.gradient


def _deq(q, fmt):
    return np.asarray(q, dtype=np.float64) / 2.0 ** fmt.frac


def _round_half_up(x, frac):
    return np.floor(np.asarray(x) * 2.0 ** frac + 0.5).astype(np.int64)


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 3))
    og = draw(st.integers(1, 3))
    k = draw(st.integers(1, 4))
    pad = draw(st.integers(0, min(2, k - 1) if k > 1 else 0))
    stride = draw(st.integers(1, 3))
    h = draw(st.integers(max(1, k - 2 * pad), 9))
    w = draw(st.integers(max(1, k - 2 * pad), 9))
    seed = draw(st.integers(0, 2**32 - 1))
    return dict(c=cg * groups, o=og * groups, groups=groups, k=k, pad=pad, stride=stride, h=h,
                w=w, seed=seed)


def _data(case, rng):
    c, o, g, k = case["c"], case["o"], case["groups"], case["k"]
    a = rng.integers(-3 * 256, 3 * 256, (c, case["h"], case["w"]))
    w = rng.integers(-4096, 4096, (o, c // g, k, k))
    return a, w


def _eshape(case):
    ho = (case["h"] + 2 * case["pad"] - case["k"]) // case["stride"] + 1
    wo = (case["w"] + 2 * case["pad"] - case["k"]) // case["stride"] + 1
    return (case["o"], ho, wo)


# ---------------------------------------------------------------------------------------------
# int64 fast paths = sim.fixed

@given(st.integers(0, 2**32 - 1), st.integers(0, 30), st.sampled_from(["half_up", "truncate"]),
       st.integers(2, 40))
@settings(max_examples=60, deadline=None)
def test_requantize64_matches_sim_fixed(seed, frac_in, rounding, width):
    rng = np.random.default_rng(seed)
    x = rng.integers(-2**45, 2**45, 50)
    fmt = FixedFormat(width, min(frac_in + 3, 40) if seed % 3 == 0 else frac_in // 2, rounding)
    v1, n1 = L.requantize64(x, frac_in, fmt)
    v2, n2 = fixed.requantize(x, frac_in, fmt)
    assert np.array_equal(v1, v2) and n1 == n2
    s1, c1 = L.saturate64(x, width)
    s2, c2 = fixed.saturate(x, width)
    assert np.array_equal(s1, s2) and c1 == c2


# ---------------------------------------------------------------------------------------------
# forward

@given(conv_cases())
@settings(max_examples=80, deadline=None)
def test_conv_fp_exact_against_float(case):
    rng = np.random.default_rng(case["seed"])
    a, w = _data(case, rng)
    acc, over = L.conv_fp(a, w, case["stride"], case["pad"], case["groups"], N)
    r = ref.conv_forward(_deq(a, A), _deq(w, W), case["stride"], case["pad"], case["groups"])
    assert over == 0
    # the accumulator is exact (float64 is exact too: dyadic values, sums far below 2**53)
    assert np.array_equal(acc, np.round(r * 2.0 ** (A.frac + W.frac)).astype(np.int64))
    y, yo = L.fp_output(acc, N)
    expect, eo = fixed.saturate(_round_half_up(r, A.frac), A.width)
    assert np.array_equal(y, expect) and yo == eo
    ok = np.abs(r) < 127
    assert np.all(np.abs(_deq(y, A) - r)[ok] <= 0.5 * A.lsb)


@given(conv_cases())
@settings(max_examples=40, deadline=None)
def test_conv_fp_real_inputs_within_derived_bound(case):
    rng = np.random.default_rng(case["seed"])
    c, o, g, k = case["c"], case["o"], case["groups"], case["k"]
    x = rng.uniform(0, 4, (c, case["h"], case["w"]))
    w0 = rng.normal(0, 0.5, (o, c // g, k, k))
    a, _ = L.quantize_input(x, N)
    wq, _ = fixed.quantize(w0, W)
    acc, _ = L.conv_fp(a, wq, case["stride"], case["pad"], g, N)
    y, _ = L.fp_output(acc, N)
    s, p = case["stride"], case["pad"]
    r = ref.conv_forward(x, w0, s, p, g)
    da, dw = 0.5 * A.lsb, 0.5 * W.lsb
    bound = (ref.conv_forward(np.full(x.shape, da), np.abs(w0), s, p, g)
             + ref.conv_forward(np.abs(x), np.full(w0.shape, dw), s, p, g)
             + ref.conv_forward(np.full(x.shape, da), np.full(w0.shape, dw), s, p, g)
             + 0.5 * A.lsb)
    assert np.all(np.abs(_deq(y, A) - r) <= bound + 1e-12)


def test_conv_fp_truncate_within_one_lsb():
    num = NumericsConfig(activation=FixedFormat(16, 8, "truncate"))
    rng = np.random.default_rng(5)
    a = rng.integers(0, 512, (3, 6, 7))
    w = rng.integers(-4096, 4096, (4, 3, 3, 3))
    y, _ = L.fp_output(L.conv_fp(a, w, 1, 1, 1, num)[0], num)
    r = ref.conv_forward(_deq(a, A), _deq(w, W), 1, 1, 1)
    d = _deq(y, A) - r
    assert np.all((d <= 0) & (d > -A.lsb))
    assert np.array_equal(y, np.floor(r * 256).astype(np.int64))


def test_accumulator_overflow_is_counted_and_int64_never_wraps():
    num = NumericsConfig(acc_width=24)
    a = np.full((2, 3, 3), 32767)
    w = np.full((1, 2, 3, 3), 32767)
    acc, over = L.conv_fp(a, w, 1, 0, 1, num)
    assert over == 1 and acc[0, 0, 0] == 2**23 - 1
    # a sum that does not fit int64: exact Python integers, then saturation to 96 bits
    wide = NumericsConfig(acc_width=96)
    a = np.full((1, 1, 2**13), 2**31 - 1, dtype=np.int64)
    w = np.full((1, 2**13), 2**31 - 1, dtype=np.int64)
    acc, over = L.fc_fp(a.reshape(-1), w, wide)
    assert over == 0 and int(acc[0]) == 2**13 * (2**31 - 1) ** 2


def test_fc_fp_is_c_major_dot_product():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 1000, (4, 3, 3))
    w = rng.integers(-4096, 4096, (5, 36))
    acc, over = L.fc_fp(a.reshape(-1), w, N)
    r = ref.fc_forward(_deq(a, A), _deq(w, W))
    assert over == 0
    assert np.array_equal(acc, np.round(r * 2**20).astype(np.int64))
    # the FC equals a convolution whose kernel covers the map (C-major flattening)
    acc2, _ = L.conv_fp(a, w.reshape(5, 4, 3, 3), 1, 0, 1, N)
    assert np.array_equal(acc, acc2.reshape(-1))


@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 9), st.integers(1, 3),
       st.integers(1, 3), st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_maxpool_matches_sfu_and_float(c, h, w, k, s, seed):
    k = min(k, h, w)
    if k < s and (h - k) % s or k < s and (w - k) % s:
        s = k  # ceil mode with k < s can produce windows wholly outside the map
    rng = np.random.default_rng(seed)
    r = rng.integers(0, 6, (c, h, w))  # few values: many ties
    p, am = L.maxpool(r, k, s)
    p2, am2 = sfu.maxpool_forward(r.transpose(1, 2, 0), k, s)
    assert np.array_equal(p, p2.transpose(2, 0, 1)) and np.array_equal(am, am2.transpose(2, 0, 1))
    pf, (iy, ix) = ref.maxpool_forward(r.astype(float), k, s)
    assert np.array_equal(p, pf)
    ho, wo = p.shape[1:]
    assert np.array_equal(am // k, iy - (np.arange(ho) * s)[None, :, None])
    assert np.array_equal(am % k, ix - (np.arange(wo) * s)[None, None, :])
    e = rng.integers(-30000, 30000, p.shape)
    eb, over = L.maxpool_backward(e, am, k, s, r.shape, N)
    eb2, over2 = sfu.maxpool_backward(e.transpose(1, 2, 0), am.transpose(1, 2, 0), k, s, h, w,
                                      E.width)
    assert np.array_equal(eb, eb2.transpose(2, 0, 1)) and over == over2
    ef = ref.maxpool_backward(e.astype(float), (iy, ix), r.shape)
    assert np.array_equal(eb, np.clip(ef, -32768, 32767))


def test_relu_and_backward():
    y = np.array([[[-3, 0, 5], [7, -1, 0]]])
    r, m = L.relu(y)
    assert r.tolist() == [[[0, 0, 5], [7, 0, 0]]] and m.tolist() == [[[0, 0, 1], [1, 0, 0]]]
    e = np.array([[[1, 2, 3], [4, 5, 6]]])
    assert L.relu_backward(e, m).tolist() == [[[0, 0, 3], [4, 0, 0]]]


# ---------------------------------------------------------------------------------------------
# backward

@given(conv_cases())
@settings(max_examples=80, deadline=None)
def test_conv_eb_exact_against_float(case):
    rng = np.random.default_rng(case["seed"])
    a, w = _data(case, rng)
    e = rng.integers(-4096, 4096, _eshape(case))
    s, p, g = case["stride"], case["pad"], case["groups"]
    ein, over = L.conv_eb(e, w, s, p, g, a.shape, N)
    r = ref.conv_input_grad(_deq(e, E), _deq(w, W), s, p, g, a.shape)
    expect, eo = fixed.saturate(_round_half_up(r, E.frac), E.width)
    assert ein.shape == a.shape
    assert np.array_equal(ein, expect) and over == eo
    ok = np.abs(r) < 7.99
    assert np.all(np.abs(_deq(ein, E) - r)[ok] <= 0.5 * E.lsb)
    acc, ao = L.conv_eb_acc(e, w, s, p, g, a.shape, N)
    assert ao == 0 and np.array_equal(acc, np.round(r * 2**24).astype(np.int64))


@given(conv_cases())
@settings(max_examples=80, deadline=None)
def test_conv_pg_exact_against_float(case):
    rng = np.random.default_rng(case["seed"])
    a, w = _data(case, rng)
    e = rng.integers(-1024, 1024, _eshape(case))
    s, p, g = case["stride"], case["pad"], case["groups"]
    gr, over = L.conv_pg(e, a, case["k"], s, p, g, N)
    r = ref.conv_weight_grad(_deq(e, E), _deq(a, A), case["k"], s, p, g)
    expect, eo = fixed.saturate(_round_half_up(r, G.frac), G.width)
    assert gr.shape == w.shape
    assert np.array_equal(gr, expect) and over == eo
    ok = np.abs(r) < 7.99
    assert np.all(np.abs(_deq(gr, G) - r)[ok] <= 0.5 * G.lsb)


@given(conv_cases())
@settings(max_examples=30, deadline=None)
def test_backward_real_inputs_within_derived_bound(case):
    rng = np.random.default_rng(case["seed"])
    c, o, g, k, s, p = (case[n] for n in ("c", "o", "groups", "k", "stride", "pad"))
    x = rng.uniform(0, 2, (c, case["h"], case["w"]))
    w0 = rng.normal(0, 0.3, (o, c // g, k, k))
    e0 = rng.normal(0, 0.05, _eshape(case))
    a, _ = fixed.quantize(x, A)
    wq, _ = fixed.quantize(w0, W)
    eq, _ = fixed.quantize(e0, E)
    da, dw, de = 0.5 * A.lsb, 0.5 * W.lsb, 0.5 * E.lsb
    # EB
    ein, _ = L.conv_eb(eq, wq, s, p, g, x.shape, N)
    r = ref.conv_input_grad(e0, w0, s, p, g, x.shape)
    bound = (ref.conv_input_grad(np.full(e0.shape, de), np.abs(w0), s, p, g, x.shape)
             + ref.conv_input_grad(np.abs(e0), np.full(w0.shape, dw), s, p, g, x.shape)
             + ref.conv_input_grad(np.full(e0.shape, de), np.full(w0.shape, dw), s, p, g,
                                   x.shape) + 0.5 * E.lsb)
    assert np.all(np.abs(_deq(ein, E) - r) <= bound + 1e-12)
    # PG
    gr, _ = L.conv_pg(eq, a, k, s, p, g, N)
    r = ref.conv_weight_grad(e0, x, k, s, p, g)
    bound = (ref.conv_weight_grad(np.full(e0.shape, de), np.abs(x), k, s, p, g)
             + ref.conv_weight_grad(np.abs(e0), np.full(x.shape, da), k, s, p, g)
             + ref.conv_weight_grad(np.full(e0.shape, de), np.full(x.shape, da), k, s, p, g)
             + 0.5 * G.lsb)
    assert np.all(np.abs(_deq(gr, G) - r) <= bound + 1e-12)


def test_fc_backward_exact_against_float():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2000, 48)
    w = rng.integers(-4096, 4096, (10, 48))
    e = rng.integers(-4096, 4096, 10)
    ein, over = L.fc_eb(e, w, N, in_shape=(3, 4, 4))
    r = _deq(w, W).T @ _deq(e, E)
    assert ein.shape == (3, 4, 4) and over == 0
    assert np.array_equal(ein.reshape(-1), _round_half_up(r, E.frac))
    g, over = L.fc_pg(e, a, N)
    r = np.outer(_deq(e, E), _deq(a, A))
    assert np.array_equal(g, fixed.saturate(_round_half_up(r, G.frac), G.width)[0])


def test_errors_saturate_and_count():
    w = np.full((1, 1, 3, 3), 32767)
    e = np.full((1, 3, 3), 32767)
    ein, over = L.conv_eb(e, w, 1, 1, 1, (1, 3, 3), N)
    assert over == 9 and (ein == 32767).all()


# ---------------------------------------------------------------------------------------------
# loss

def test_exp2_table_and_constant():
    assert L.LOG2E_Q14 == round(math.log2(math.e) * 2**14) == 23637
    assert L.EXP2_TABLE.shape == (256,) and L.EXP2_TABLE[0] == 2**15
    assert all(L.EXP2_TABLE[f] == math.floor(2 ** (f / 256) * 2**15 + 0.5) for f in range(256))
    assert L.EXP2_TABLE[255] < 2**16


def _softmax_bound(z_q):
    """Derived bound on |p_fixed - softmax(z)| (see docs/golden-model.md)."""
    d = (z_q - z_q.max()) / 2.0 ** A.frac
    t = np.exp(d)
    # exponent error: rounding of d*log2e to 8 bits (2**-9) + the constant's error |d| * 2**-15
    rel = math.log(2) * (2.0**-9 + np.abs(d) * abs(L.LOG2E_Q14 / 2**14 - math.log2(math.e)))
    de = t * (np.expm1(rel)) + 2.0**-16 + 2.0**-15  # table rounding + shift truncation
    s = t.sum()
    dp = (de + t / s * de.sum()) / (s - de.sum()) + 2.0**-16
    return dp


@given(st.integers(0, 2**32 - 1), st.integers(2, 16), st.floats(0.1, 40))
@settings(max_examples=80, deadline=None)
def test_softmax_cross_entropy_against_float(seed, classes, spread):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, spread, classes).clip(-127, 127)
    zq, _ = fixed.quantize(z, A)
    label = int(rng.integers(classes))
    e, over = L.loss_error(zq, label, "softmax_cross_entropy", N)
    p, _ = L.softmax_probabilities(zq, N)
    pr = ref.softmax(_deq(zq, A))
    assert np.all(np.abs(p / 2**15 - pr) <= _softmax_bound(zq))
    r = ref.loss_grad(_deq(zq, A), label)
    assert np.all(np.abs(_deq(e, E) - r) <= _softmax_bound(zq) + 0.5 * E.lsb)
    assert over == int(np.count_nonzero((zq - zq.max()) * L.LOG2E_Q14 < -(2**15) * 2**14
                                        - 2**13))


def test_softmax_integer_steps_by_hand():
    # z = (0, -1.0): d*log2e = -1.4427 -> u = round(-369.33) = -369 -> n = 2, f = 143
    z = np.array([0, -256])
    p, over = L.softmax_probabilities(z, N)
    e1 = int(L.EXP2_TABLE[143]) >> 2
    s = 32768 + e1
    assert over == 0
    assert p.tolist() == [(32768 * 2**16 + s) // (2 * s), (e1 * 2**16 + s) // (2 * s)]
    e, _ = L.loss_error(z, 1, "softmax_cross_entropy", N)
    assert e.tolist() == [(int(p[0]) + 4) >> 3, ((int(p[1]) + 4) >> 3) - 4096]


def test_squared_error():
    z = np.array([256, -128, 32767])
    e, over = L.loss_error(z, 0, "squared_error", N)
    assert e.tolist() == [0, -2048, 32767] and over == 1
    with pytest.raises(ValueError, match="unknown loss"):
        L.loss_error(z, 0, "hinge", N)


# ---------------------------------------------------------------------------------------------
# gradient buffer and update

def test_average_power_of_two_and_reciprocal():
    rng = np.random.default_rng(2)
    acc = rng.integers(-90000, 90000, 100)
    avg, _ = L.average_gradient(acc, 16, N)
    assert np.array_equal(avg, np.floor(acc / 16 + 0.5).astype(np.int64).clip(-32768, 32767))
    avg3, _ = L.average_gradient(acc, 3, N)
    from sim.golden.grad_buffer import average
    assert np.array_equal(avg3, average(acc, 12, G, 3, 17)[0])
    assert np.all(np.abs(avg3 - acc / 3) <= 0.5 + np.abs(acc) / 3 * 2**-17 + 1e-9)


def test_update_matches_float_within_rounding():
    rng = np.random.default_rng(4)
    master = rng.integers(-2**22, 2**22, 200)
    avg = rng.integers(-32768, 32768, 200)
    lr_q = L.lr_to_q(0.05)
    assert lr_q == 3277
    new, w, over = L.update(master, avg, lr_q, N)
    step = avg / 2**12 * lr_q / 2**16
    exact = master / 2**20 - step
    assert over == 0
    assert np.all(np.abs(new / 2**20 - exact) <= 0.5 * 2**-20)
    assert np.array_equal(w, (new + 128) >> 8)
    assert np.array_equal(L.working_weight(new, N)[0], w)


def test_update_saturates():
    master = np.array([2**23 - 1, -2**23])
    new, w, over = L.update(master, np.array([-32768, 32767]), 65535, N)
    assert new.tolist() == [2**23 - 1, -2**23] and w.tolist() == [32767, -32768]
    assert over == 3  # two master saturations + one working-weight rounding past the top


def test_lr_to_q_range():
    assert L.lr_to_q(2**-16) == 1 and L.lr_to_q(0.5) == 32768
    for bad in (0.0, 1.0, -0.1, 2**-18):
        with pytest.raises(ValueError, match="not representable"):
            L.lr_to_q(bad)


# ---------------------------------------------------------------------------------------------
# split layers (docs/training-spec.md, "Split layers"): independent loops over sim.fixed

def _chain_ref(parts, out_fmt, pf):
    s, counts = parts[0], [0]
    for k, p in enumerate(parts[1:], 1):
        fmt = pf if k < len(parts) - 1 else out_fmt
        s, c = fixed.requantize(fixed.as_int_array(s) + fixed.as_int_array(p), pf.frac, fmt)
        counts.append(c)
    return np.asarray(s, dtype=np.int64), counts


def test_icp_fp_chain_against_loops():
    rng = np.random.default_rng(21)
    a = rng.integers(-3000, 3000, (8, 5, 6))
    w = rng.integers(-4096, 4096, (4, 8, 3, 3))
    slices = [(0, 3), (3, 6), (6, 8)]
    y, info = L.icp_conv_fp(a, w, 1, 1, slices, N)
    parts = []
    for c0, c1 in slices:
        acc, _ = L.conv_fp(a[c0:c1], w[:, c0:c1], 1, 1, 1, N)
        p, _ = fixed.requantize(acc, A.frac + W.frac, N.partial)
        parts.append(np.asarray(p, dtype=np.int64))
    want, counts = _chain_ref(parts, A, N.partial)
    assert (y == want).all() and info["add_overflow"] == counts
    assert all((x == p).all() for x, p in zip(info["partial"], parts))
    assert (info["sent"][1] == np.asarray(fixed.requantize(parts[0] + parts[1], 16,
                                                          N.partial)[0])).all()
    # double rounding: equal to the whole layer up to one LSB
    whole, _ = L.fp_output(L.conv_fp(a, w, 1, 1, 1, N)[0], N)
    assert np.abs(y - whole).max() <= 1


def test_partial_chain_saturation_counts():
    pf = N.partial
    big = np.array([pf.max_int, pf.min_int, 5])
    r, sent, ov = L.partial_chain([big, big, np.array([0, 0, 1 << 16])], A, N)
    # middle node clamps two lanes; the last node clamps the two extremes to the activation
    assert ov == [0, 2, 2]
    assert sent[1].tolist() == [pf.max_int, pf.min_int, 10]
    assert r.tolist() == [A.max_int, A.min_int, (10 + (1 << 16) + 128) >> 8]
    with pytest.raises(ValueError, match="at least 2 nodes"):
        L.partial_chain([big], A, N)


def test_ocp_eb_chain_against_loops():
    rng = np.random.default_rng(22)
    e = rng.integers(-3000, 3000, (6, 4, 4))
    w = rng.integers(-4096, 4096, (6, 3, 3, 3))
    slices = [(0, 2), (2, 5), (5, 6)]
    r, info = L.ocp_conv_eb(e, w, 1, 1, (3, 4, 4), slices, N)
    parts = []
    for o0, o1 in slices:
        acc, _ = L.conv_eb_acc(e[o0:o1], w[o0:o1], 1, 1, 1, (3, 4, 4), N)
        parts.append(np.asarray(fixed.requantize(acc, E.frac + W.frac, N.partial)[0],
                                dtype=np.int64))
    want, counts = _chain_ref(parts[::-1], E, N.partial)
    assert (r == want).all() and info["add_overflow"] == counts[::-1]
    assert info["sent"][0] is None and (info["sent"][2] == parts[2]).all()
    with pytest.raises(ValueError, match="must cut"):
        L.ocp_conv_eb(e, w, 1, 1, (3, 4, 4), [(0, 2), (3, 6)], N)


def test_icp_fc_and_ocp_fc():
    rng = np.random.default_rng(23)
    a = rng.integers(-3000, 3000, 20)
    w = rng.integers(-4096, 4096, (5, 20))
    y, _ = L.icp_fc_fp(a, w, [(0, 7), (7, 20)], N)
    p = [np.asarray(fixed.requantize(L.fc_fp(a[f0:f1], w[:, f0:f1], N)[0], A.frac + W.frac,
                                     N.partial)[0], dtype=np.int64) for f0, f1 in [(0, 7), (7, 20)]]
    assert (y == _chain_ref(p, A, N.partial)[0]).all()
    e = rng.integers(-3000, 3000, 5)
    r, _ = L.ocp_fc_eb(e, w, [(0, 2), (2, 5)], N, in_shape=(4, 5))
    q = [np.asarray(fixed.requantize(w[o0:o1].T @ e[o0:o1], E.frac + W.frac, N.partial)[0],
                    dtype=np.int64) for o0, o1 in [(0, 2), (2, 5)]]
    assert r.shape == (4, 5) and (r.reshape(-1) == _chain_ref(q[::-1], E, N.partial)[0]).all()


# ---------------------------------------------------------------------------------------------
# optional: PyTorch autograd

def test_against_pytorch_autograd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    a = rng.integers(0, 700, (4, 7, 6))
    w = rng.integers(-4096, 4096, (6, 2, 3, 3))
    e = rng.integers(-2048, 2048, (6, 4, 3))
    at = torch.tensor(_deq(a, A)[None], requires_grad=True, dtype=torch.float64)
    wt = torch.tensor(_deq(w, W), requires_grad=True, dtype=torch.float64)
    y = torch.nn.functional.conv2d(at, wt, stride=2, padding=1, groups=2)
    y.backward(torch.tensor(_deq(e, E)[None]))
    yq, _ = L.fp_output(L.conv_fp(a, w, 2, 1, 2, N)[0], N)
    assert np.all(np.abs(_deq(yq, A) - y.detach().numpy()[0]) <= 0.5 * A.lsb)
    ein, _ = L.conv_eb(e, w, 2, 1, 2, a.shape, N)
    assert np.all(np.abs(_deq(ein, E) - at.grad.numpy()[0]) <= 0.5 * E.lsb)
    g, _ = L.conv_pg(e, a, 3, 2, 1, 2, N)
    assert np.all(np.abs(_deq(g, G) - wt.grad.numpy()) <= 0.5 * G.lsb)
