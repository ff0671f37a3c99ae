"""Golden model of :class:`fpdeep_hw.memory.line_buffer.LineBuffer` (test: ``tests/hw/test_line_buffer.py``).

The line buffer turns a raster stream of pixels (one word = the ``S`` channel values of one pixel)
into the stream of ``K x K`` windows of the *virtual map*: the input map, zero-inserted (dilated)
by ``dilation`` between pixels, surrounded by zero padding ``(top, left, bottom, right)``, and
scanned with stride ``stride``. Windows come out in raster order of the output map, each as an
``S x K x K`` array ``window[s][ky][kx]``; with ``flip=True`` the window is rotated by 180 degrees
(``window[s][ky][kx] = virtual[oy*st + K-1-ky][ox*st + K-1-kx][s]``).

The three arrangements the node needs (paper sections 5.3-5.5):

* **FP** (:func:`fp_geometry`): padding ``P`` on all sides, stride ``st``, no dilation.
* **EB** (:func:`eb_geometry`): the transposed convolution. The error map of the layer output
  (``Ho x Wo``) is zero-inserted by the stride, padded by ``K-1-P`` on top/left and by
  ``K-1-P+r`` on bottom/right (``r = (H + 2P - K) mod st``, the rows/columns the forward
  convolution never reached), windows at stride 1, flipped. Convolving these windows with the
  *unflipped* kernels ``W[oc][ic]`` and summing over ``oc`` gives the input error ``H x W``
  (:func:`eb_input_error`).
* **PG** (:func:`pg_gradient`): the large gradient convolution ``dW = A * E`` cut into ``K x K``
  pieces: the FP windows of the activations (same geometry as FP, replayed from the Act-RAM)
  paired one to one, in the same raster order, with the error value ``E[oc][oy][ox]`` of the
  output position the window produced; ``dW[oc] += window * E[oc][oy][ox]``.

Channel groups (``groups``: a pixel arrives as several words, each position yields one window
per group -- EB with more output channels than tiles) and window repetition (``repeat``: FP/PG
with more output channels than engines) are covered by :func:`windows` and :func:`stream_words`.

All arithmetic here is exact integer arithmetic (``int64`` / Python ints); the line buffer itself
only moves values, so its model is exact by construction.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "Geometry", "normalize_pad", "fp_geometry", "eb_geometry", "virtual_map", "windows",
    "stream_words", "window_positions", "fp_conv", "eb_input_error", "pg_gradient",
]


def normalize_pad(pad):
    """Return ``pad`` as a ``(top, left, bottom, right)`` tuple (an int pads all four sides)."""
    if isinstance(pad, int):
        return (pad, pad, pad, pad)
    return tuple(pad)


class Geometry:
    """Shape bookkeeping shared by the hardware and the model.

    Parameters
    ----------
    height, width : int
        Size of the map that is streamed in.
    k : int
        Window size.
    stride : int
        Step between windows in the virtual map.
    pad : int or (top, left, bottom, right)
        Zero padding around the (dilated) map.
    dilation : int
        Zero insertion: ``dilation - 1`` zero rows/columns between neighbouring pixels.
    """

    def __init__(self, height, width, k, stride=1, pad=0, dilation=1):
        self.height, self.width, self.k = height, width, k
        self.stride, self.dilation = stride, dilation
        self.pad = normalize_pad(pad)
        pt, pl, pb, pr = self.pad
        self.vheight = pt + (height - 1) * dilation + 1 + pb
        self.vwidth = pl + (width - 1) * dilation + 1 + pr
        self.out_height = (self.vheight - k) // stride + 1
        self.out_width = (self.vwidth - k) // stride + 1

    def as_kwargs(self):
        return dict(height=self.height, width=self.width, k=self.k, stride=self.stride,
                    pad=self.pad, dilation=self.dilation)


def fp_geometry(height, width, k, stride=1, pad=0):
    """Geometry of the forward convolution (and of PG, which reuses the FP windows)."""
    return Geometry(height, width, k, stride=stride, pad=pad)


def eb_geometry(height, width, k, stride=1, pad=0):
    """Geometry of EB's transposed convolution for a forward layer on an ``height x width`` map.

    Returns the :class:`Geometry` of the streamed *error* map (``Ho x Wo`` of the forward layer):
    dilation ``stride``, padding ``K-1-P`` (+ ``r`` bottom/right), stride 1. Its output map is
    ``height x width`` again.
    """
    if pad > k - 1:
        raise ValueError(f"transposed arrangement needs pad <= k - 1, not pad={pad} with k={k}")
    fp = fp_geometry(height, width, k, stride, pad)
    rh = (height + 2 * pad - k) % stride
    rw = (width + 2 * pad - k) % stride
    q = k - 1 - pad
    g = Geometry(fp.out_height, fp.out_width, k, stride=1, pad=(q, q, q + rh, q + rw),
                 dilation=stride)
    assert (g.out_height, g.out_width) == (height, width)
    return g


def virtual_map(x, geom):
    """The dilated, padded map ``(Hv, Wv, S)`` of an input ``x`` of shape ``(H, W, S)``."""
    x = np.asarray(x)
    h, w, s = x.shape
    pt, pl, _, _ = geom.pad
    v = np.zeros((geom.vheight, geom.vwidth, s), dtype=x.dtype)
    d = geom.dilation
    v[pt:pt + (h - 1) * d + 1:d, pl:pl + (w - 1) * d + 1:d, :] = x
    return v


def window_positions(geom):
    """Raster-order list of ``(oy, ox)`` output positions."""
    return [(oy, ox) for oy in range(geom.out_height) for ox in range(geom.out_width)]


def windows(x, geom, flip=False, groups=1, repeat=1):
    """All windows of one map ``x`` ``(H, W, C)`` as a list of ``S x K x K`` int64 arrays.

    With ``groups = G`` the ``C = G * S`` channels are cut into ``G`` groups of ``S`` and each
    position yields ``G`` windows (group order); with ``repeat = R`` every window appears ``R``
    times in a row.
    """
    v = virtual_map(np.asarray(x, dtype=np.int64), geom)
    k, st = geom.k, geom.stride
    c = v.shape[2]
    if c % groups:
        raise ValueError(f"{c} channels do not split into {groups} groups")
    s = c // groups
    out = []
    for oy, ox in window_positions(geom):
        full = v[oy * st:oy * st + k, ox * st:ox * st + k, :].transpose(2, 0, 1)
        if flip:
            full = full[:, ::-1, ::-1]
        for g in range(groups):
            win = np.ascontiguousarray(full[g * s:(g + 1) * s])
            out += [win] * repeat
    return out


def stream_words(x, groups=1):
    """Input stream words of a map ``x`` ``(H, W, C)``: raster order, ``groups`` words per pixel
    (channel group 0 first), each a list of ``C / groups`` ints."""
    x = np.asarray(x)
    s = x.shape[2] // groups
    return [[int(v) for v in x[y, xx, g * s:(g + 1) * s]]
            for y in range(x.shape[0]) for xx in range(x.shape[1]) for g in range(groups)]


# --- the convolutions the three arrangements serve (reference formulas and window dataflows) ---

def fp_conv(act, weights, geom):
    """Direct forward convolution: ``act (H, W, C)``, ``weights (OC, C, K, K)`` -> ``(Ho, Wo, OC)``.

    Computed from :func:`windows` (the FP dataflow): ``out[oy][ox][oc] = sum(window * W[oc])``.
    """
    w = np.asarray(weights, dtype=object)
    wins = windows(act, geom)
    out = np.zeros((geom.out_height, geom.out_width, w.shape[0]), dtype=object)
    for (oy, ox), win in zip(window_positions(geom), wins):
        for oc in range(w.shape[0]):
            out[oy, ox, oc] = int((win.astype(object) * w[oc]).sum())
    return out


def eb_input_error(err, weights, height, width, k, stride=1, pad=0):
    """Input error of a forward conv layer via EB's arrangement (flipped windows, unflipped kernels).

    ``err (Ho, Wo, OC)``, ``weights (OC, C, K, K)`` -> ``(H, W, C)``:
    ``dX[y][x][ic] = sum_oc sum(window_oc(y, x) * W[oc][ic])`` with the windows of
    :func:`eb_geometry` and ``flip=True``.
    """
    g = eb_geometry(height, width, k, stride, pad)
    w = np.asarray(weights, dtype=object)
    wins = windows(err, g, flip=True)
    out = np.zeros((height, width, w.shape[1]), dtype=object)
    for (y, x), win in zip(window_positions(g), wins):
        win = win.astype(object)
        for ic in range(w.shape[1]):
            out[y, x, ic] = int((win * w[:, ic]).sum())
    return out


def pg_gradient(act, err, k, stride=1, pad=0):
    """Weight gradient via PG's K x K decomposition: ``act (H, W, C)``, ``err (Ho, Wo, OC)`` -> ``(OC, C, K, K)``.

    The FP windows of ``act`` arrive in the same raster order as the error values; each window
    is multiplied by the broadcast error of its output position and accumulated per ``oc``.
    """
    h, w_, c = np.asarray(act).shape
    g = fp_geometry(h, w_, k, stride, pad)
    e = np.asarray(err, dtype=object)
    dw = np.zeros((e.shape[2], c, k, k), dtype=object)
    for (oy, ox), win in zip(window_positions(g), windows(act, g)):
        win = win.astype(object)
        for oc in range(e.shape[2]):
            dw[oc] += win * e[oy, ox, oc]
    return dw
