"""Golden model of the partial-activation adder :mod:`fpdeep_hw.compute.partial_adder`.

Bit-exact with the block, including rounding and the overflow count.
Test: ``tests/hw/test_partial_adder.py``.
"""

from __future__ import annotations

import numpy as np

from fpdeep_map.numerics import FixedFormat
from sim import fixed

__all__ = ["sum_frac", "partial_add"]


def sum_frac(local: FixedFormat, partial: FixedFormat, first: bool) -> int:
    """Fractional bits of the exact sum the block forms before its single requantisation."""
    return local.frac if first else max(local.frac, partial.frac)


def partial_add(local_words, upstream_words, *, local: FixedFormat, partial: FixedFormat,
                output: FixedFormat | None = None):
    """Add local and upstream partial sums word by word; requantise the exact sum once.

    Parameters
    ----------
    local_words : array-like, shape (n, lanes)
        Locally computed partial sums, integers in ``local``.
    upstream_words : array-like of shape (n, lanes), or None
        Partial sums from the preceding node, integers in ``partial``; ``None`` for the first
        node of a split layer (``first`` mode: the local sums pass through).
    local, partial : FixedFormat
    output : FixedFormat, optional
        Activation format on the last node of an ICP split; ``None`` keeps the partial format.

    Returns
    -------
    (words, overflow_count) : (int64 ndarray of shape (n, lanes), int)
        ``requantize(local * 2**(f - local.frac) + upstream * 2**(f - partial.frac), f, out)``
        with ``f = sum_frac(...)`` and ``out = output or partial``; one overflow per clamped lane.
    """
    out_fmt = output if output is not None else partial
    first = upstream_words is None
    f = sum_frac(local, partial, first)
    total = fixed.as_int_array(local_words) << (f - local.frac)
    if not first:
        up = fixed.as_int_array(upstream_words)
        if up.shape != total.shape:
            raise ValueError(f"local and upstream shapes differ: {total.shape} != {up.shape}")
        total = total + (up << (f - partial.frac))
    words, count = fixed.requantize(total, f, out_fmt)
    return np.asarray(words, dtype=np.int64), count
