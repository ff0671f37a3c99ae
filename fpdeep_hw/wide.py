"""Driving a wide signal element by element, in one statement.

Amaranth's ``Module`` checks every statement added to a domain against every bit of the signal
it drives (``_dsl.Module._add_statement``: a loop over ``len(signal)`` per statement), so
``m.d.comb += wide[k].eq(x_k)`` for each of the ``n`` elements of an ``n x w``-bit signal costs
``n^2 w``: for a VGG-16 node's line buffers (a 64-channel 3 x 3 window, 9,216 bits, 576
elements) and update units that was most of the node's elaboration (a minute of the build).
``wide.eq(Cat(fit(x_0, w), ..., fit(x_(n-1), w)))`` drives the same bits in one statement;
:func:`fit` gives each part the width of its element with ``.eq``'s own rule (truncated, or
extended by its own signedness), so the circuit is unchanged.

A value has at most :data:`MAX_VALUE_BITS` bits: Amaranth's netlist numbers the bits of a cell
with 16 bits, and its RTLIL back end refuses wider wires. A window of many lanes (VGG-16's
conv4 and conv5: 512 lanes x 3 x 3 x 16 bits = 73,728) is therefore held as several values, runs
of whole lanes (:func:`lane_runs`), read lane by lane through a :class:`Lanes`.
Test: ``tests/hw/test_wide.py``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Value

__all__ = ["MAX_VALUE_BITS", "Lanes", "fit", "join", "lane_runs"]

#: Widest value (signal, port, memory row) a design may hold.
MAX_VALUE_BITS = (1 << 16) - 1


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


def lane_runs(lanes: int, lane_bits: int, limit: int | None = None) -> list[tuple[int, int]]:
    """Cut ``lanes`` lanes of ``lane_bits`` bits into the fewest runs ``(lo, hi)`` of at most
    ``limit`` bits each (default :data:`MAX_VALUE_BITS`, read at the call: tests lower it to
    split small windows), as even as possible (the first runs one lane longer)."""
    if limit is None:
        limit = MAX_VALUE_BITS
    if lane_bits > limit:
        raise ValueError(f"one lane of {lane_bits:,} bits is wider than {limit:,}")
    per = limit // lane_bits
    n = max(1, -(-lanes // per))
    base, extra = divmod(lanes, n)
    runs, lo = [], 0
    for j in range(n):
        hi = lo + base + (1 if j < extra else 0)
        runs.append((lo, hi))
        lo = hi
    return runs


class Lanes:
    """Lanes held in several values: ``parts`` = ``[(lo, view)]``, ``view[c - lo]`` is lane
    ``c``. Indexed like one array view (``lanes[c]``, ``len(lanes)``)."""

    def __init__(self, parts):
        self.parts = list(parts)
        self._n = self.parts[-1][0] + len(self.parts[-1][1])

    def __len__(self):
        return self._n

    def __getitem__(self, c):
        if not isinstance(c, int) or not 0 <= c < self._n:
            raise IndexError(f"lane {c!r} outside 0..{self._n - 1}")
        for lo, view in reversed(self.parts):
            if c >= lo:
                return view[c - lo]
