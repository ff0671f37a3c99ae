"""Golden model of one training step per layer: fixed-point FP, loss, EB, PG and update.

Bit-exact implementation of ``docs/training-spec.md`` (the RTL/golden contract) on numpy
``int64`` arrays. The hardware blocks that these functions stand for are the FP/EB/PG modules and
the update/loss unit of issue 4 (``fpdeep_hw/node/``); the whole-network schedule that calls them
is :mod:`sim.golden.train`. Tests: ``tests/sim/test_golden_layers.py`` (against the independent
float64 reference :mod:`sim.reference`).

Layouts
-------
* feature maps and errors: ``[C, H, W]`` (channel-major; the hardware streams them in raster
  order, pixel by pixel, which does not change any value);
* conv weights: ``[O, C/groups, K, K]``; FC weights: ``[O, F]`` with the input flattened C-major
  (``f = c*H*W + y*W + x``);
* every value is the integer of its fixed-point format (``sim.fixed`` conventions).

Return values
-------------
Every function where a saturation can happen returns ``(result, overflow_count)``, the count
being the number of clamped elements (what the block's overflow counter adds). Exceptions, with
nothing to saturate: :func:`relu` ``-> (r, mask)``, :func:`maxpool` ``-> (p, argmax)``,
:func:`relu_backward` ``-> e``; and :func:`update` ``-> (master_new, w_working, overflow_count)``.

Integer widths
--------------
Products of two 16-bit values are at most ``2**30`` in magnitude; a sum of ``N`` of them is at
most ``N * 2**30``, which fits ``int64`` for ``N < 2**32`` terms and the 48-bit accumulator for
``N < 2**17`` terms (so with the default formats the accumulators of any layer with fewer than
131,072 terms per output cannot overflow at all). The functions compute the bound
``N * max|a| * max|b|`` of the data they get and fall back to exact Python integers (numpy
``object`` arrays) when it could exceed ``2**62``, so no sum ever wraps inside numpy.

Accumulator saturation: the spec requires the 48-bit accumulators not to saturate in a bit-exact
run. The golden model computes each sum exactly and saturates it once; its accumulator overflow
count is the number of outputs whose exact sum lies outside the ``acc_width`` range. (A hardware
accumulator saturating at every step counts per step and depends on the summation order; the two
agree in the only case that matters, zero.)

Members
-------
quantize_input, conv_fp, conv_fp_acc, fp_output, relu, maxpool, fc_fp, fc_fp_acc, loss_error,
softmax_probabilities, EXP2_TABLE, LOG2E_Q14, conv_eb, conv_eb_acc, fc_eb, maxpool_backward,
relu_backward, conv_pg, conv_pg_acc, fc_pg, accumulate_gradient, average_gradient, update,
working_weight, lr_to_q, LR_FRAC, RECIP_BITS, saturate64, requantize64, partial_chain,
icp_conv_fp, ocp_conv_eb, icp_fc_fp, ocp_fc_eb

Split layers
------------
:func:`partial_chain`, :func:`icp_conv_fp` (FP of a layer cut by input channels over a span of
nodes) and :func:`ocp_conv_eb` (EB of a layer cut by output channels) follow the split rules of
``docs/training-spec.md`` ("Split layers") bit for bit with the RTL's ``FPLayer`` / ``EBLayer``
on split segments and their :class:`~fpdeep_hw.compute.partial_adder.PartialAdder` stage
(test: ``tests/hw/test_split_layers.py``). Every other phase of a split layer is the whole-layer
arithmetic on the node's slice.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fpdeep_map.numerics import FixedFormat, NumericsConfig
from sim import fixed
from sim.golden import grad_buffer, sfu

__all__ = [
    "quantize_input", "conv_fp", "conv_fp_acc", "fp_output", "relu", "maxpool", "fc_fp",
    "fc_fp_acc", "loss_error", "softmax_probabilities", "EXP2_TABLE", "LOG2E_Q14",
    "conv_eb", "conv_eb_acc", "fc_eb", "maxpool_backward", "relu_backward",
    "conv_pg", "conv_pg_acc", "fc_pg", "accumulate_gradient", "average_gradient",
    "update", "working_weight", "lr_to_q", "LR_FRAC", "RECIP_BITS",
    "saturate64", "requantize64", "partial_chain", "icp_conv_fp", "ocp_conv_eb",
    "icp_fc_fp", "ocp_fc_eb",
]

#: ``round(log2(e) * 2**14)``: the constant the softmax multiplies score differences by.
LOG2E_Q14 = 23637
#: ``EXP2_TABLE[f] = round(2**(f/256) * 2**15)`` for ``f = 0..255`` (15 fractional bits).
EXP2_TABLE = np.array([math.floor(2.0 ** (f / 256.0) * 2 ** 15 + 0.5) for f in range(256)],
                      dtype=np.int64)
#: Fractional bits of the learning-rate constant ``lr_q``.
LR_FRAC = 16
#: Width of the gradient buffer's reciprocal for a mini-batch that is not a power of two
#: (the ``recip_bits`` default of :class:`fpdeep_hw.memory.grad_buffer.GradBuffer`).
RECIP_BITS = 17

_LIMIT = 1 << 62


def _num(numerics):
    return NumericsConfig() if numerics is None else numerics


def _i64(x, what="values"):
    a = np.asarray(x)
    if a.dtype.kind == "f":
        raise TypeError(f"{what}: expected integers, got floating-point values")
    if a.dtype == object:
        return a
    if a.dtype.kind not in "iub":
        raise TypeError(f"{what}: expected an integer array, not dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


# ---------------------------------------------------------------------------------------------
# int64 fast paths of sim.fixed (identical results; tests check them against sim.fixed)

def saturate64(x, width: int):
    """:func:`sim.fixed.saturate` for int64 data (``object`` data is delegated to it)."""
    a = np.asarray(x)
    if a.dtype == object or width > 63:
        return fixed.saturate(a, width)
    a = a.astype(np.int64, copy=False)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    count = int(np.count_nonzero((a > hi) | (a < lo)))
    if count:
        a = np.clip(a, lo, hi)
    return a, count


def requantize64(x, frac_in: int, fmt: FixedFormat):
    """:func:`sim.fixed.requantize` for int64 data whose magnitude is below ``2**62``."""
    a = np.asarray(x)
    s = frac_in - fmt.frac
    if a.dtype == object or fmt.width > 63 or s < 0:
        if a.dtype != object and s < 0 and a.size and int(np.abs(a).max()) < (1 << (62 + s)):
            return saturate64(a.astype(np.int64) << (-s), fmt.width)
        return fixed.requantize(a, frac_in, fmt)
    a = a.astype(np.int64, copy=False)
    if s > 0:
        if fmt.rounding == "half_up":
            a = (a + (1 << (s - 1))) >> s
        elif fmt.rounding == "truncate":
            a = a >> s
        else:
            raise ValueError(f"unknown rounding mode {fmt.rounding!r}")
    return saturate64(a, fmt.width)


def _matmul(x, y):
    """Exact integer ``x @ y``: int64 when the bound allows it, Python ints otherwise."""
    n = x.shape[-1]
    mx = int(np.abs(x).max()) if x.size else 0
    my = int(np.abs(y).max()) if y.size else 0
    if n * mx * my < _LIMIT:
        return np.matmul(x.astype(np.int64, copy=False), y.astype(np.int64, copy=False))
    return np.matmul(fixed.as_int_array(x), fixed.as_int_array(y))


def _acc_saturate(acc, numerics):
    """Saturate exact sums to the accumulator width: ``(acc, count)``."""
    if acc.dtype == object:
        v, n = fixed.saturate(acc, numerics.acc_width)
        if numerics.acc_width <= 63:
            v = np.asarray(v).astype(np.int64)
        return v, n
    return saturate64(acc, numerics.acc_width)


# ---------------------------------------------------------------------------------------------
# geometry

def _check_conv(c, o, cg, k, stride, pad, groups):
    if groups < 1 or c % groups or o % groups:
        raise ValueError(f"groups {groups} must divide the {c} input and {o} output channels")
    if cg != c // groups:
        raise ValueError(f"weights have {cg} input channels per group, expected {c // groups}")
    if stride < 1 or pad < 0 or k < 1:
        raise ValueError("kernel and stride must be positive and padding non-negative")


def conv_out_size(size: int, k: int, stride: int, pad: int) -> int:
    """``(size + 2*pad - k) // stride + 1`` (the network format's convolution geometry)."""
    n = (size + 2 * pad - k) // stride + 1
    if n < 1:
        raise ValueError(f"kernel {k} larger than the padded input {size + 2 * pad}")
    return n


def _im2col(a, k, stride, pad, groups):
    """``[groups, C/g*K*K, Ho*Wo]`` windows of ``a[C,H,W]`` (zero padding), C-major then ky, kx."""
    c, h, w = a.shape
    ho, wo = conv_out_size(h, k, stride, pad), conv_out_size(w, k, stride, pad)
    ap = np.pad(a, ((0, 0), (pad, pad), (pad, pad))) if pad else a
    win = sliding_window_view(ap, (k, k), axis=(1, 2))[:, ::stride, ::stride][:, :ho, :wo]
    # win: [C, Ho, Wo, K, K] -> [C, K, K, Ho, Wo]
    cols = np.ascontiguousarray(win.transpose(0, 3, 4, 1, 2))
    return cols.reshape(groups, (c // groups) * k * k, ho * wo), ho, wo


# ---------------------------------------------------------------------------------------------
# forward

def quantize_input(x, numerics=None):
    """Input image ``a0 = quantize(x, activation)``: ``(a0, overflow_count)``."""
    return fixed.quantize(x, _num(numerics).activation)


def conv_fp_acc(a, w, stride, pad, groups, numerics=None):
    """Alias of :func:`conv_fp` (the raw accumulator sums)."""
    return conv_fp(a, w, stride, pad, groups, numerics)


def conv_fp(a, w, stride=1, pad=0, groups=1, numerics=None):
    """Convolution sums ``acc[O,Ho,Wo]`` (spec FP step 2).

    ``acc[o][y][x] = sum_{c,ky,kx} a[c][y*s+ky-P][x*s+kx-P] * w[o][c][ky][kx]`` (zero outside the
    map; ``c`` within the group of ``o``), exact with ``activation.frac + weight.frac``
    fractional bits, saturated to ``acc_width``. Returns ``(acc, acc_overflow_count)``.
    """
    numerics = _num(numerics)
    a, w = _i64(a, "activations"), _i64(w, "weights")
    c, _, _ = a.shape
    o, cg, k, k2 = w.shape
    if k != k2:
        raise ValueError(f"kernels must be square, not {k}x{k2}")
    _check_conv(c, o, cg, k, stride, pad, groups)
    cols, ho, wo = _im2col(a, k, stride, pad, groups)
    wm = w.reshape(groups, o // groups, cg * k * k)
    acc = _matmul(wm, cols).reshape(o, ho, wo)
    return _acc_saturate(acc, numerics)


def fp_output(acc, numerics=None):
    """``y = requantize(acc, activation.frac + weight.frac, activation)``: ``(y, overflow)``."""
    n = _num(numerics)
    return requantize64(_i64(acc), n.activation.frac + n.weight.frac, n.activation)


def relu(y):
    """ReLU: ``(r, mask)`` with ``r = max(y, 0)``, ``mask = (y > 0)`` (int64 0/1)."""
    return sfu.relu_forward(y)


def maxpool(r, k, s):
    """Max-pool of ``r[C,H,W]`` (Caffe ceil mode, clipped last window): ``(p, argmax)``.

    ``argmax = ky*k + kx`` of the first maximum in raster order; both ``[C, Ho, Wo]``. The
    arithmetic is that of :func:`sim.golden.sfu.maxpool_forward` (a vectorised form of it;
    tests check both agree).
    """
    r = _i64(r)
    c, h, w = r.shape
    ho, wo = sfu.pooled_size(h, k, s), sfu.pooled_size(w, k, s)
    # pad with a value below every input so clipped positions never win
    hp, wp = (ho - 1) * s + k, (wo - 1) * s + k
    low = np.iinfo(np.int64).min
    rp = np.full((c, hp, wp), low, dtype=np.int64)
    rp[:, :h, :w] = r
    win = sliding_window_view(rp, (k, k), axis=(1, 2))[:, ::s, ::s][:, :ho, :wo]
    flat = win.reshape(c, ho, wo, k * k)
    argmax = np.argmax(flat, axis=-1).astype(np.int64)  # first maximum: numpy's rule
    pooled = np.take_along_axis(flat, argmax[..., None], axis=-1)[..., 0]
    return pooled, argmax


def fc_fp_acc(a_flat, w, numerics=None):
    """Alias of :func:`fc_fp` (the raw accumulator sums)."""
    return fc_fp(a_flat, w, numerics)


def fc_fp(a_flat, w, numerics=None):
    """FC sums ``acc[o] = sum_f w[o][f] * a[f]`` (``a`` flattened C-major), saturated to
    ``acc_width``: ``(acc, acc_overflow_count)``. Use :func:`fp_output` for the activation."""
    numerics = _num(numerics)
    a, w = _i64(a_flat, "activations").reshape(-1), _i64(w, "weights")
    if w.ndim != 2 or w.shape[1] != a.shape[0]:
        raise ValueError(f"FC weights of shape {w.shape} do not match {a.shape[0]} features")
    acc = _matmul(w, a[:, None])[:, 0]
    return _acc_saturate(acc, numerics)


# ---------------------------------------------------------------------------------------------
# loss

def softmax_probabilities(z, numerics=None):
    """Steps 1-4 of the spec's integer softmax: ``(p, overflow)``, ``p`` with 15 fractional bits.

    The overflow count is the number of ``u_i`` clamped to 16 bits (scores more than about
    88 below the maximum; their ``e_i`` is 0 either way).
    """
    n = _num(numerics)
    z = _i64(z, "scores").reshape(-1)
    d = z - z.max()
    u, over = requantize64(d * LOG2E_Q14, n.activation.frac + 14, FixedFormat(16, 8))
    nshift = (-u + 255) // 256
    f = u + 256 * nshift
    e = np.where(nshift >= 16, 0, EXP2_TABLE[f] >> np.minimum(nshift, 63))
    s = int(e.sum())
    p = (e * (1 << 16) + s) // (2 * s)
    return p.astype(np.int64), over


def loss_error(z, label, kind="softmax_cross_entropy", numerics=None):
    """Loss errors of one image from the scores ``z`` (activation format): ``(e, overflow)``.

    ``kind``: ``"softmax_cross_entropy"`` (integer algorithm of the spec) or ``"squared_error"``.
    ``e`` is in the error format.
    """
    n = _num(numerics)
    z = _i64(z, "scores").reshape(-1)
    if not 0 <= int(label) < z.shape[0]:
        raise ValueError(f"label {label} outside 0..{z.shape[0] - 1}")
    onehot = np.zeros(z.shape[0], dtype=np.int64)
    onehot[int(label)] = 1 << n.error.frac
    if kind == "softmax_cross_entropy":
        p, over = softmax_probabilities(z, n)
        q, o2 = requantize64(p, 15, n.error)
    elif kind == "squared_error":
        over = 0
        q, o2 = requantize64(z, n.activation.frac, n.error)
    else:
        raise ValueError(f"unknown loss {kind!r}")
    e, o3 = saturate64(q - onehot, n.error.width)
    return e, over + o2 + o3


# ---------------------------------------------------------------------------------------------
# backward

def conv_eb_acc(e_out, w, stride, pad, groups, in_shape, numerics=None):
    """Transposed-convolution sums of :func:`conv_eb` before rounding (``error.frac +
    weight.frac`` fractional bits, saturated to ``acc_width``): ``(acc, acc_overflow)``."""
    numerics = _num(numerics)
    e, w = _i64(e_out, "errors"), _i64(w, "weights")
    c, h, wd = in_shape
    o, cg, k, _ = w.shape
    _check_conv(c, o, cg, k, stride, pad, groups)
    ho, wo = conv_out_size(h, k, stride, pad), conv_out_size(wd, k, stride, pad)
    if e.shape != (o, ho, wo):
        raise ValueError(f"errors of shape {e.shape}, expected {(o, ho, wo)}")
    og = o // groups
    # cols[g, (c, ky, kx), (oy, ox)] = sum_o w[o][c][ky][kx] * e[o][oy][ox]
    wt = w.reshape(groups, og, cg * k * k).transpose(0, 2, 1)
    cols = _matmul(wt, e.reshape(groups, og, ho * wo))
    cols = cols.reshape(c, k, k, ho, wo)
    hp, wp = h + 2 * pad, wd + 2 * pad
    acc = np.zeros((c, hp + k + stride, wp + k + stride), dtype=cols.dtype)
    for ky in range(k):
        for kx in range(k):
            acc[:, ky:ky + stride * ho:stride, kx:kx + stride * wo:stride] += cols[:, ky, kx]
    acc = acc[:, pad:pad + h, pad:pad + wd]
    return _acc_saturate(np.ascontiguousarray(acc), numerics)


def conv_eb(e_out, w, stride, pad, groups, in_shape, numerics=None):
    """Errors of the layer's input (spec EB): ``(e_in[C,H,W], overflow)`` in the error format.

    ``E_in[c][y][x] = sum_{o,ky,kx} E_out[o][oy][ox] * w[o][c][ky][kx]`` over ``oy*s+ky-P == y``,
    ``ox*s+kx-P == x``, exact, then ``requantize(., error.frac + weight.frac, error)``. The count
    adds accumulator overflows (zero in a valid run) and output saturations.
    """
    n = _num(numerics)
    acc, o1 = conv_eb_acc(e_out, w, stride, pad, groups, in_shape, n)
    e, o2 = requantize64(acc, n.error.frac + n.weight.frac, n.error)
    return e, o1 + o2


def fc_eb(e_out, w, numerics=None, in_shape=None):
    """FC input errors ``E_in[f] = sum_o E_out[o] * w[o][f]`` requantized from
    ``error.frac + weight.frac`` to the error format: ``(e_in, overflow)``; shaped ``in_shape``
    (e.g. the ``[C,H,W]`` of the map before flattening) if given, else flat."""
    n = _num(numerics)
    e, w = _i64(e_out, "errors").reshape(-1), _i64(w, "weights")
    if w.ndim != 2 or w.shape[0] != e.shape[0]:
        raise ValueError(f"FC weights of shape {w.shape} do not match {e.shape[0]} errors")
    acc, o1 = _acc_saturate(_matmul(w.T, e[:, None])[:, 0], n)
    r, o2 = requantize64(acc, n.error.frac + n.weight.frac, n.error)
    if in_shape is not None:
        r = r.reshape(in_shape)
    return r, o1 + o2


def maxpool_backward(e_pooled, argmax, k, s, in_shape, numerics=None):
    """Route pooled errors ``[C,Ho,Wo]`` to their argmax pixels of a ``[C,H,W]`` map, summing
    overlaps exactly and saturating once to the error width: ``(e, overflow)``
    (:func:`sim.golden.sfu.maxpool_backward`)."""
    n = _num(numerics)
    c, h, w = in_shape
    e = _i64(e_pooled, "errors")
    am = _i64(argmax, "argmax")
    ho, wo = e.shape[1:]
    if (ho, wo) != (sfu.pooled_size(h, k, s), sfu.pooled_size(w, k, s)) or e.shape[0] != c:
        raise ValueError(f"pooled shape {e.shape} does not match a {in_shape} map pooled "
                         f"{k}x{k} stride {s}")
    if k > s:  # overlapping windows: the SFU's exact routing (sums, then one saturation)
        out, count = sfu.maxpool_backward(e.transpose(1, 2, 0), am.transpose(1, 2, 0), k, s,
                                          h, w, n.error.width)
        return out.transpose(2, 0, 1).copy(), count
    # non-overlapping windows (k <= s): every pixel receives at most one error, nothing to sum
    if am.size and (am.min() < 0 or am.max() >= k * k):
        raise ValueError("argmax outside the window")
    ky, kx = am // k, am % k
    oy = np.arange(ho)[None, :, None] * s + ky
    ox = np.arange(wo)[None, None, :] * s + kx
    if (oy >= h).any() or (ox >= w).any():
        raise ValueError("argmax outside the map")
    out = np.zeros((c, h, w), dtype=np.int64)
    cc = np.broadcast_to(np.arange(c)[:, None, None], e.shape)
    out[cc, oy, ox] = e
    return saturate64(out, n.error.width)


def relu_backward(e, mask):
    """Errors where the forward ReLU input was positive, zero elsewhere (nothing saturates)."""
    return sfu.relu_backward(e, mask)


def conv_pg_acc(e_out, a_in, k, stride, pad, groups, numerics=None):
    """Gradient sums of :func:`conv_pg` before rounding (``error.frac + activation.frac``
    fractional bits, saturated to ``acc_width``): ``(acc[O,C/g,K,K], acc_overflow)``."""
    numerics = _num(numerics)
    e, a = _i64(e_out, "errors"), _i64(a_in, "activations")
    c, h, w = a.shape
    o = e.shape[0]
    if not isinstance(groups, int) or groups < 1 or c % groups or o % groups:
        raise ValueError(f"groups {groups} must divide the {c} input and {o} output channels")
    _check_conv(c, o, c // groups, k, stride, pad, groups)
    cols, ho, wo = _im2col(a, k, stride, pad, groups)
    if e.shape != (o, ho, wo):
        raise ValueError(f"errors of shape {e.shape}, expected {(o, ho, wo)}")
    og = o // groups
    g = _matmul(e.reshape(groups, og, ho * wo), cols.transpose(0, 2, 1))
    return _acc_saturate(g.reshape(o, c // groups, k, k), numerics)


def conv_pg(e_out, a_in, k, stride, pad, groups, numerics=None):
    """Per-image weight gradients (spec PG): ``(g[O,C/g,K,K], overflow)`` in the gradient format.

    ``g[o][c][ky][kx] = sum_{y,x} E_out[o][y][x] * a[c][y*s+ky-P][x*s+kx-P]``, exact, then
    ``requantize(., error.frac + activation.frac, gradient)``.
    """
    n = _num(numerics)
    acc, o1 = conv_pg_acc(e_out, a_in, k, stride, pad, groups, n)
    g, o2 = requantize64(acc, n.error.frac + n.activation.frac, n.gradient)
    return g, o1 + o2


def fc_pg(e_out, a_flat, numerics=None):
    """FC gradients ``g[o][f] = E_out[o] * a[f]`` in the gradient format: ``(g[O,F], overflow)``."""
    n = _num(numerics)
    e = _i64(e_out, "errors").reshape(-1)
    a = _i64(a_flat, "activations").reshape(-1)
    acc, o1 = _acc_saturate(_matmul(e[:, None], a[None, :]), n)
    g, o2 = requantize64(acc, n.error.frac + n.activation.frac, n.gradient)
    return g, o1 + o2


# ---------------------------------------------------------------------------------------------
# gradient buffer and update

def accumulate_gradient(acc, g, numerics=None):
    """Gradient buffer step ``G = saturate(G + g, grad_acc_width)``: ``(G, overflow)``."""
    n = _num(numerics)
    return saturate64(_i64(acc) + _i64(g), n.grad_acc_width)


def average_gradient(acc, batch, numerics=None, recip_bits=RECIP_BITS):
    """Mini-batch average of the gradient buffer, in the gradient format: ``(avg, overflow)``.

    A power-of-two ``batch`` is an exact shift (``requantize(G, frac + log2 B, gradient)``);
    otherwise the reciprocal multiply of :func:`sim.golden.grad_buffer.average` with
    ``recip_bits`` (the hardware default, 17).
    """
    n = _num(numerics)
    acc = _i64(acc)
    if batch & (batch - 1) == 0:
        return requantize64(acc, n.gradient.frac + batch.bit_length() - 1, n.gradient)
    v, c = grad_buffer.average(acc, n.gradient.frac, n.gradient, batch, recip_bits)
    return np.asarray(v, dtype=np.int64), c


def lr_to_q(lr) -> int:
    """Learning rate as the unsigned 16-bit constant ``round(lr * 2**16)`` (half up).

    Raises ``ValueError`` unless ``1 <= lr_q <= 65535`` (``lr`` in about ``[2**-17, 1)``).
    """
    lr = float(lr)
    q = math.floor(lr * (1 << LR_FRAC) + 0.5)
    if not 1 <= q <= (1 << LR_FRAC) - 1:
        raise ValueError(f"learning rate {lr!r} is not representable as a 16-bit constant with "
                         f"{LR_FRAC} fractional bits (got {q})")
    return q


def working_weight(master, numerics=None):
    """The weight the engines read: ``requantize(master, master.frac, weight)``:
    ``(w, overflow)``."""
    n = _num(numerics)
    return requantize64(_i64(master), n.master.frac, n.weight)


def update(master, avg_grad, lr_q, numerics=None):
    """One weight update: ``(master_new, w_working, overflow_count)``.

    ``step = requantize(avg * lr_q, gradient.frac + 16, master)``;
    ``master_new = saturate(master - step, master.width)``;
    ``w_working = requantize(master_new, master.frac, weight)``. The count adds all three
    saturations.
    """
    n = _num(numerics)
    if isinstance(lr_q, bool) or not isinstance(lr_q, (int, np.integer)) \
            or not 0 <= int(lr_q) < (1 << LR_FRAC):
        raise ValueError(f"lr_q must be an unsigned {LR_FRAC}-bit integer, not {lr_q!r}")
    master, avg = _i64(master, "master"), _i64(avg_grad, "gradients")
    step, o1 = requantize64(avg * int(lr_q), n.gradient.frac + LR_FRAC, n.master)
    new, o2 = saturate64(master - step, n.master.width)
    w, o3 = working_weight(new, n)
    return new, w, o1 + o2 + o3


# ---------------------------------------------------------------------------------------------
# split layers (docs/training-spec.md, "Split layers")

def _check_slices(slices, total, what):
    slices = [(int(a), int(b)) for a, b in slices]
    if not slices or slices[0][0] != 0 or slices[-1][1] != total or any(
            a >= b for a, b in slices) or any(
            slices[j][1] != slices[j + 1][0] for j in range(len(slices) - 1)):
        raise ValueError(f"{what} slices {slices} must cut [0, {total}) into consecutive "
                         f"non-empty ranges")
    return slices


def partial_chain(partials, out_fmt, numerics=None):
    """Sum per-node partial sums along a chain, as the nodes' ``PartialAdder`` stages do.

    ``partials[k]`` are node ``k``'s partial sums in the ``partial`` format, in chain order (the
    order the sum travels: node order for ICP FP, reverse node order for OCP EB). Node 0 passes
    its partials on unchanged; node ``k`` (middle) sends ``saturate(s + p_k, partial.width)``;
    the last node rounds the exact ``s + p_k`` once from ``partial.frac`` to ``out_fmt``.

    Returns ``(result, sent, overflows)``: ``sent[k]`` is what node ``k`` sends on (the
    partial-format words on its link; ``len(sent) == len(partials) - 1``), ``overflows[k]`` the
    clamps of node ``k``'s adder (the last node's include the clamps to ``out_fmt``).
    """
    n = _num(numerics)
    pf = n.partial
    if len(partials) < 2:
        raise ValueError(f"a partial-sum chain needs at least 2 nodes, not {len(partials)}")
    s = _i64(partials[0])
    sent, overflows = [s], [0]
    for k in range(1, len(partials)):
        total = s + _i64(partials[k])
        if k < len(partials) - 1:
            s, c = requantize64(total, pf.frac, pf)
            sent.append(s)
        else:
            s, c = requantize64(total, pf.frac, out_fmt)
        overflows.append(c)
    return s, sent, overflows


def icp_conv_fp(a, w, stride, pad, in_slices, numerics=None):
    """FP of a conv layer cut by input channels (ICP) over the nodes of ``in_slices``.

    Node ``k`` holds input channels ``[c0, c1) = in_slices[k]`` and their weights
    ``w[:, c0:c1]``: ``acc_k = conv_fp(a[c0:c1], w[:, c0:c1])`` (exact, saturated to
    ``acc_width``), ``p_k = requantize(acc_k, activation.frac + weight.frac, partial)``; the
    ``p_k`` add along the chain in node order (:func:`partial_chain`) and the last node rounds
    the total once to the activation format (``y``, before ReLU/pool).

    Returns ``(y, info)`` with ``info`` a dict of per-node lists: ``partial`` (``p_k``),
    ``sent`` (what node ``k`` passes on; ``None`` for the last node), ``acc_overflow``, ``partial_overflow`` (the clamps of
    ``p_k``, the CE array's ``out_overflows``) and ``add_overflow`` (the adder's clamps; the last
    node's include the activation clamps).
    """
    n = _num(numerics)
    a, w = _i64(a, "activations"), _i64(w, "weights")
    slices = _check_slices(in_slices, a.shape[0], "input-channel")
    parts, acc_ov, part_ov = [], [], []
    for c0, c1 in slices:
        acc, o1 = conv_fp(a[c0:c1], w[:, c0:c1], stride, pad, 1, n)
        p, o2 = requantize64(acc, n.activation.frac + n.weight.frac, n.partial)
        parts.append(p)
        acc_ov.append(o1)
        part_ov.append(o2)
    y, sent, add_ov = partial_chain(parts, n.activation, n)
    sent = sent + [None]
    return y, {"partial": parts, "sent": sent, "acc_overflow": acc_ov,
               "partial_overflow": part_ov, "add_overflow": add_ov}


def ocp_conv_eb(e_out, w, stride, pad, in_shape, out_slices, numerics=None):
    """EB of a conv layer cut by output channels (OCP) over the nodes of ``out_slices``.

    Node ``k`` holds output channels ``[o0, o1) = out_slices[k]``, their errors and weights
    ``w[o0:o1]``: ``acc_k = conv_eb_acc(e_out[o0:o1], w[o0:o1])`` (exact, all input channels),
    ``p_k = requantize(acc_k, error.frac + weight.frac, partial)``; the ``p_k`` add backward
    along the span (last node first, :func:`partial_chain`) and the first node of the span
    rounds the total once to the error format.

    Returns ``(e_in, info)``; ``info`` as :func:`icp_conv_fp`'s, lists indexed by node (span
    order, *not* chain order): ``sent[k]`` is what node ``k`` passes back (``None`` on node 0).
    """
    n = _num(numerics)
    e, w = _i64(e_out, "errors"), _i64(w, "weights")
    slices = _check_slices(out_slices, e.shape[0], "output-channel")
    parts, acc_ov, part_ov = [], [], []
    for o0, o1 in slices:
        acc, o1_ = conv_eb_acc(e[o0:o1], w[o0:o1], stride, pad, 1, in_shape, n)
        p, o2 = requantize64(acc, n.error.frac + n.weight.frac, n.partial)
        parts.append(p)
        acc_ov.append(o1_)
        part_ov.append(o2)
    r, sent, add_ov = partial_chain(parts[::-1], n.error, n)
    sent = [None] + sent[::-1]
    return r, {"partial": parts, "sent": sent, "acc_overflow": acc_ov,
               "partial_overflow": part_ov, "add_overflow": add_ov[::-1]}


def _split_info(parts, acc_ov, part_ov, sent, add_ov):
    return {"partial": parts, "sent": sent, "acc_overflow": acc_ov,
            "partial_overflow": part_ov, "add_overflow": add_ov}


def icp_fc_fp(a_flat, w, in_slices, numerics=None):
    """:func:`icp_conv_fp` for an FC layer: node ``k`` holds the features ``in_slices[k]``
    (C-major flattening) and the columns ``w[:, f0:f1]``. Returns ``(y, info)``."""
    n = _num(numerics)
    a, w = _i64(a_flat, "activations").reshape(-1), _i64(w, "weights")
    slices = _check_slices(in_slices, a.shape[0], "feature")
    parts, acc_ov, part_ov = [], [], []
    for f0, f1 in slices:
        acc, o1 = fc_fp(a[f0:f1], w[:, f0:f1], n)
        p, o2 = requantize64(acc, n.activation.frac + n.weight.frac, n.partial)
        parts.append(p)
        acc_ov.append(o1)
        part_ov.append(o2)
    y, sent, add_ov = partial_chain(parts, n.activation, n)
    return y, _split_info(parts, acc_ov, part_ov, sent + [None], add_ov)


def ocp_fc_eb(e_out, w, out_slices, numerics=None, in_shape=None):
    """:func:`ocp_conv_eb` for an FC layer (node ``k``: outputs ``out_slices[k]``, rows
    ``w[o0:o1]``). Returns ``(e_in, info)``, ``e_in`` shaped ``in_shape`` if given."""
    n = _num(numerics)
    e, w = _i64(e_out, "errors").reshape(-1), _i64(w, "weights")
    slices = _check_slices(out_slices, e.shape[0], "output")
    parts, acc_ov, part_ov = [], [], []
    for o0, o1 in slices:
        acc, c1 = _acc_saturate(_matmul(w[o0:o1].T, e[o0:o1, None])[:, 0], n)
        p, c2 = requantize64(acc, n.error.frac + n.weight.frac, n.partial)
        parts.append(p)
        acc_ov.append(c1)
        part_ov.append(c2)
    r, sent, add_ov = partial_chain(parts[::-1], n.error, n)
    sent = [None] + sent[::-1]
    if in_shape is not None:
        r = r.reshape(in_shape)
    return r, _split_info(parts, acc_ov, part_ov, sent, add_ov[::-1])
