"""Golden model of :mod:`fpdeep_hw.compute.conv_engine` (test: ``tests/hw/test_conv_engine.py``).

Bit-exact with the RTL: products and sums are exact (Python ints); the accumulator saturates to
``acc_width`` bits at every step (:func:`sim.fixed.saturating_add`), each clamping step counting
one accumulator overflow per engine; a completed accumulation is either handed out raw
(``frac = in.frac + weight.frac``) or requantised with :func:`sim.fixed.requantize` (each clamped
lane counting one output overflow).

Input words of a :class:`~fpdeep_hw.compute.conv_engine.CEArray`, one per cycle:

* a window ``win[t][ky][kx]`` of ``tiles`` channels (broadcast to every engine);
* a weight set ``wt[e][t][ky][kx]`` (one ``tiles x K x K`` filter slice per engine) and ``last``.

Engine ``e`` adds ``sum(win * wt[e])`` to its accumulator; the word with ``last`` completes the
accumulation, which leaves as one output word (``engines`` values), and the next word starts a
fresh one. :func:`fp_sequence` and :func:`eb_sequence` build these words for a whole layer (channel
groups, zero-weight padding lanes) from the line-buffer arrangements of
:mod:`sim.golden.line_buffer`.
"""

from __future__ import annotations

import numpy as np

from fpdeep_map.numerics import FixedFormat
from sim import fixed
from sim.golden import line_buffer as lb

__all__ = ["tile_sum", "engine_partial", "ce_array", "fp_sequence", "eb_sequence",
           "assemble_fp", "assemble_eb"]


def tile_sum(window, weights) -> int:
    """One ``ConvTile``: the exact ``K x K`` dot product."""
    return int((np.asarray(window, dtype=object) * np.asarray(weights, dtype=object)).sum())


def engine_partial(windows, weights) -> int:
    """One ``ConvEngine`` step: the sum over its ``S`` tiles (``S x K x K`` each)."""
    return tile_sum(windows, weights)


def ce_array(windows, weights, lasts, *, acc_width=48, frac_in=20, out_fmt=None):
    """Run a CE array over a word sequence.

    Parameters
    ----------
    windows : sequence of ``tiles x K x K`` int arrays
    weights : sequence of ``engines x tiles x K x K`` int arrays
    lasts : sequence of bool
    acc_width : int
    frac_in : int
        Fractional bits of the accumulator (input frac + weight frac).
    out_fmt : FixedFormat or None
        ``None``: outputs are the raw accumulator values.

    Returns
    -------
    (outputs, acc_overflows, out_overflows)
        ``outputs`` is a list of lists (one value per engine) per completed accumulation.
    """
    outputs = []
    acc = None
    acc_ovf = out_ovf = 0
    for win, wt, last in zip(windows, weights, lasts, strict=True):
        w = np.asarray(wt, dtype=object)
        partial = np.array([engine_partial(win, w[e]) for e in range(w.shape[0])], dtype=object)
        base = np.zeros_like(partial) if acc is None else acc
        acc, n = fixed.saturating_add(base, partial, acc_width)
        acc = fixed.as_int_array(acc)
        acc_ovf += n
        if last:
            if out_fmt is None:
                outputs.append([int(v) for v in acc])
            else:
                q, n = fixed.requantize(acc, frac_in, out_fmt)
                out_ovf += n
                outputs.append([int(v) for v in q])
            acc = None
    return outputs, acc_ovf, out_ovf


def _groups(n, size):
    return [(g * size, min((g + 1) * size, n)) for g in range((n + size - 1) // size)]


def _pad_lanes(a, lanes, axis):
    a = np.asarray(a, dtype=np.int64)
    if a.shape[axis] == lanes:
        return a
    shape = list(a.shape)
    shape[axis] = lanes - a.shape[axis]
    return np.concatenate([a, np.zeros(shape, dtype=np.int64)], axis=axis)


def fp_sequence(act, weights, geom, *, tiles, engines, filler=None):
    """CE-array words of a forward convolution (the paper's FP shape).

    ``act (H, W, C)``, ``weights (OC, C, K, K)``, ``geom`` from :func:`lb.fp_geometry`. For each
    window position, for each group of ``engines`` output channels, for each group of ``tiles``
    input channels: the window of that input group and the weights of (output group, input group),
    ``last`` on the final input group. Lanes past ``C`` (last input group) and engines past ``OC``
    get zero weights; their window lanes hold ``filler`` (an ``np.random.Generator``: random
    values, showing that masked lanes may carry anything) or zeros.
    """
    w = np.asarray(weights, dtype=np.int64)
    oc, c = w.shape[:2]
    wins = lb.windows(act, geom)
    seq_win, seq_wt, seq_last = [], [], []
    for win in wins:
        for o0, o1 in _groups(oc, engines):
            for c0, c1 in _groups(c, tiles):
                x = win[c0:c1]
                if c1 - c0 < tiles:
                    extra = (tiles - (c1 - c0), geom.k, geom.k)
                    pad = (filler.integers(-(1 << 15), 1 << 15, size=extra) if filler is not None
                           else np.zeros(extra, dtype=np.int64))
                    x = np.concatenate([x, pad], axis=0)
                ws = _pad_lanes(_pad_lanes(w[o0:o1, c0:c1], tiles, 1), engines, 0)
                seq_win.append(x)
                seq_wt.append(ws)
                seq_last.append(c1 == c)
    return seq_win, seq_wt, seq_last


def assemble_fp(outputs, geom, oc, engines):
    """Raw CE-array outputs of :func:`fp_sequence` back into a ``(Ho, Wo, OC)`` array."""
    groups = _groups(oc, engines)
    out = np.zeros((geom.out_height, geom.out_width, oc), dtype=object)
    it = iter(outputs)
    for oy, ox in lb.window_positions(geom):
        for o0, o1 in groups:
            vals = next(it)
            out[oy, ox, o0:o1] = vals[:o1 - o0]
    return out


def eb_sequence(err, weights, height, width, k, stride, pad, *, tiles, engines):
    """CE-array words of EB's transposed convolution (``engines`` = S input channels, ``tiles`` = P).

    ``err (Ho, Wo, OC)`` (the layer output's errors), ``weights (OC, C, K, K)`` as in FP. The
    windows are those of :func:`lb.eb_geometry` with ``flip=True``; engine ``s`` gets
    ``W[oc][s]`` (unflipped) for the ``tiles`` output channels of the group; ``last`` on the
    final output-channel group.
    """
    w = np.asarray(weights, dtype=np.int64)
    oc, c = w.shape[:2]
    g = lb.eb_geometry(height, width, k, stride, pad)
    wins = lb.windows(err, g, flip=True)
    seq_win, seq_wt, seq_last = [], [], []
    for win in wins:
        for s0, s1 in _groups(c, engines):
            for o0, o1 in _groups(oc, tiles):
                seq_win.append(_pad_lanes(win[o0:o1], tiles, 0))
                ws = w[o0:o1, s0:s1].transpose(1, 0, 2, 3)       # [s][oc][ky][kx]
                seq_wt.append(_pad_lanes(_pad_lanes(ws, tiles, 1), engines, 0))
                seq_last.append(o1 == oc)
    return seq_win, seq_wt, seq_last


def assemble_eb(outputs, height, width, c, engines):
    """Raw outputs of :func:`eb_sequence` back into the input error ``(H, W, C)``."""
    groups = _groups(c, engines)
    out = np.zeros((height, width, c), dtype=object)
    it = iter(outputs)
    for y in range(height):
        for x in range(width):
            for s0, s1 in groups:
                out[y, x, s0:s1] = next(it)[:s1 - s0]
    return out
