"""Driving a wide signal element by element, in one statement.

Amaranth's ``Module`` checks every statement added to a domain against every bit of the signal
it drives (``_dsl.Module._add_statement``: a loop over ``len(signal)`` per statement), so
``m.d.comb += wide[k].eq(x_k)`` for each of the ``n`` elements of an ``n x w``-bit signal costs
``n^2 w``: for a VGG-16 node's line buffers (a 64-channel 3 x 3 window, 9,216 bits, 576
elements) and update units that was most of the node's elaboration (a minute of the build).
``wide.eq(Cat(fit(x_0, w), ..., fit(x_(n-1), w)))`` drives the same bits in one statement;
:func:`fit` gives each part the width of its element with ``.eq``'s own rule (truncated, or
extended by its own signedness), so the circuit is unchanged. Test: ``tests/hw/test_wide.py``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Value

__all__ = ["fit", "join"]


def fit(value, width: int) -> Value:
    """``value`` as exactly ``width`` bits, as ``Signal(width).eq(value)`` would take it."""
    v = Value.cast(value)
    n = len(v)
    if n == width:
        return v
    if n > width:
        return v[:width]
    if n == 0:
        return Const(0, width)
    if v.shape().signed:
        return Cat(v, v[-1].replicate(width - n))
    return Cat(v, Const(0, width - n))


def join(parts, width: int) -> Value:
    """``Cat`` of ``parts`` (element 0 first), each :func:`fit` to ``width`` bits."""
    return Cat(*(fit(p, width) for p in parts))
