"""Golden models of the special-function unit :mod:`fpdeep_hw.compute.sfu`.

Bit-exact with the blocks (ReLU forward/backward, max-pool forward/backward), including the
argmax tie rule and the saturation of errors summed by max-pool backward.
Test: ``tests/hw/test_sfu.py``.

Max-pool geometry follows Caffe (the framework the FPDeep paper's networks come from):
*ceil mode* with no padding, ``out = ceil((size - K) / stride) + 1`` (at least 1); the last
window of a row or column may hang over the edge of the map and is *clipped* to it (it only sees
the pixels that exist). The argmax is the index ``ky * K + kx`` of the maximum within the full
``K x K`` window geometry, the *first* maximum in raster order when several are equal (Caffe's
strict ``>`` scan). Backward routes each pooled error to its argmax pixel; a pixel that is the
argmax of several overlapping windows (3x3 stride 2) receives the sum of their errors, saturated
to the error width (one overflow per clamped element).
"""

from __future__ import annotations

import numpy as np

from sim import fixed

__all__ = ["relu_forward", "relu_backward", "pooled_size", "maxpool_forward", "maxpool_backward",
           "arg_bits"]


def relu_forward(x):
    """ReLU: ``(max(x, 0), x > 0)``; the mask is what the backward pass needs."""
    x = np.asarray(x, dtype=np.int64)
    mask = (x > 0).astype(np.int64)
    return np.where(x > 0, x, 0), mask


def relu_backward(err, mask):
    """ReLU backward: errors where the forward input was positive, zero elsewhere."""
    err = np.asarray(err, dtype=np.int64)
    mask = np.asarray(mask, dtype=np.int64)
    if err.shape != mask.shape:
        raise ValueError(f"error and mask shapes differ: {err.shape} != {mask.shape}")
    return np.where(mask != 0, err, 0)


def pooled_size(size: int, k: int, stride: int) -> int:
    """Caffe ceil-mode output size (no padding): ``ceil((size - k) / stride) + 1``, at least 1."""
    if size < 1 or k < 1 or stride < 1:
        raise ValueError("size, k and stride must be positive")
    return max(-(-(size - k) // stride), 0) + 1


def arg_bits(k: int) -> int:
    """Bits of an argmax index ``0 .. k*k - 1`` (at least 1)."""
    return max((k * k - 1).bit_length(), 1)


def maxpool_forward(x, k: int, stride: int):
    """Max-pool of maps ``x`` of shape ``(H, W, lanes)``.

    Returns ``(pooled, argmax)``, both ``(Ho, Wo, lanes)`` int64: ``argmax = ky * k + kx`` of the
    first maximum in raster order of the (clipped) window.
    """
    x = np.asarray(x, dtype=np.int64)
    h, w, lanes = x.shape
    ho, wo = pooled_size(h, k, stride), pooled_size(w, k, stride)
    pooled = np.zeros((ho, wo, lanes), dtype=np.int64)
    argmax = np.zeros((ho, wo, lanes), dtype=np.int64)
    for oy in range(ho):
        for ox in range(wo):
            for lane in range(lanes):
                best, best_idx = None, 0
                for ky in range(k):
                    for kx in range(k):
                        y, xx = oy * stride + ky, ox * stride + kx
                        if y >= h or xx >= w:
                            continue
                        v = x[y, xx, lane]
                        if best is None or v > best:
                            best, best_idx = v, ky * k + kx
                pooled[oy, ox, lane] = best
                argmax[oy, ox, lane] = best_idx
    return pooled, argmax


def maxpool_backward(err, argmax, k: int, stride: int, height: int, width: int, err_width: int):
    """Route pooled errors ``(Ho, Wo, lanes)`` back to their argmax pixels of an ``H x W`` map.

    Returns ``(errors, overflow_count)``: ``errors`` of shape ``(H, W, lanes)``, the exact sum of
    the errors routed to each pixel saturated to ``err_width`` bits.
    """
    err = np.asarray(err, dtype=np.int64)
    argmax = np.asarray(argmax, dtype=np.int64)
    ho, wo, lanes = err.shape
    if (ho, wo) != (pooled_size(height, k, stride), pooled_size(width, k, stride)):
        raise ValueError(f"pooled shape {(ho, wo)} does not match a {height}x{width} map "
                         f"pooled {k}x{k} stride {stride}")
    total = np.zeros((height, width, lanes), dtype=object)
    total[...] = 0
    for oy in range(ho):
        for ox in range(wo):
            for lane in range(lanes):
                a = int(argmax[oy, ox, lane])
                ky, kx = divmod(a, k)
                y, x = oy * stride + ky, ox * stride + kx
                if not (0 <= a < k * k and y < height and x < width):
                    raise ValueError(f"argmax {a} of pooled ({oy}, {ox}) lane {lane} is outside the map")
                total[y, x, lane] += int(err[oy, ox, lane])
    out, count = fixed.saturate(total, err_width)
    return np.asarray(out, dtype=np.int64), count
