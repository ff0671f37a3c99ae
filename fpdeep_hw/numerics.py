"""Fixed-point arithmetic in Amaranth: rounding, saturation and overflow counting.

Combinational helpers that build logic following the numerics contract of
:mod:`fpdeep_map.numerics`; the golden model of every helper here is :mod:`sim.fixed` (bit-exact),
and both are compared in ``tests/hw/test_numerics.py``.

- :func:`saturate` clamps a value to a signed width and flags the overflow;
- :func:`requantize` drops (``half_up``: add ``2**(s-1)`` then arithmetic shift; ``truncate``:
  arithmetic shift) or adds fractional bits, then saturates;
- :func:`saturating_add` adds two values and saturates the sum;
- :class:`OverflowCounter` counts overflow flags (several per cycle) in a saturating register.

The helpers return ``(result, overflow)`` where ``overflow`` is a 1-bit :class:`Value` that is high
when the result was clamped. Blocks OR or count those flags only for words actually transferred.
"""

from __future__ import annotations

from amaranth.hdl import C, Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from fpdeep_map.numerics import FixedFormat

__all__ = ["saturate", "requantize", "saturating_add", "tree_sum", "OverflowCounter"]


def tree_sum(terms, start=None):
    """The exact sum of ``terms`` (values or integers) as a balanced adder tree.

    Python's ``sum`` builds a chain as deep as there are terms: Amaranth's transformers recurse
    once per level (about 500 terms exhaust Python's recursion limit when a node is converted:
    VGG-16's larger nodes) and the hardware gets a carry chain through every adder. Each ``+``
    widens by one bit, so the tree's result is the same number, in fewer bits."""
    terms = list(terms) + ([] if start is None else [start])
    if not terms:
        return 0
    while len(terms) > 1:
        terms = [terms[k] + terms[k + 1] if k + 1 < len(terms) else terms[k]
                 for k in range(0, len(terms), 2)]
    return terms[0]


def _as_signed_value(value) -> Value:
    v = Value.cast(value)
    if not v.shape().signed:
        v = Cat(v, C(0, 1)).as_signed()  # zero-extend by one bit, then read as signed
    return v


def _check_width(width):
    if not isinstance(width, int) or width < 1:
        raise TypeError(f"Width must be a positive integer, not {width!r}")


def saturate(value, width: int):
    """Clamp ``value`` to the signed range of ``width`` bits.

    Parameters
    ----------
    value : value-like
        Signed or unsigned; unsigned values are treated as non-negative.
    width : int

    Returns
    -------
    (result, overflow) : (Value of shape ``signed(width)``, Value of 1 bit)
    """
    _check_width(width)
    v = _as_signed_value(value)
    if len(v) <= width:
        return v.as_signed() if len(v) == width else Cat(v, v[-1].replicate(width - len(v))).as_signed(), C(0, 1)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    # The value fits iff the bits above the target sign bit all equal it.
    upper = v[width - 1:]
    fits = (upper == 0) | (upper == Const(-1, len(upper)).as_unsigned())
    negative = v[-1]
    result = Mux(fits, v[:width].as_signed(),
                 Mux(negative, Const(lo, signed(width)), Const(hi, signed(width))))
    return result, ~fits


def requantize(value, frac_in: int, fmt: FixedFormat):
    """Bring ``value`` (``frac_in`` fractional bits) into ``fmt``: round per ``fmt.rounding``, saturate.

    Returns
    -------
    (result, overflow) : (Value of shape ``signed(fmt.width)``, Value of 1 bit)
    """
    if not isinstance(fmt, FixedFormat):
        raise TypeError(f"Format must be a FixedFormat, not {fmt!r}")
    if not isinstance(frac_in, int) or frac_in < 0:
        raise TypeError(f"Input fractional bits must be a non-negative integer, not {frac_in!r}")
    v = _as_signed_value(value)
    s = frac_in - fmt.frac
    if s > 0:
        if fmt.rounding == "half_up":
            v = (v + (1 << (s - 1))).shift_right(s)  # the sum is one bit wider: no wrap
        else:
            v = v.shift_right(s)
    elif s < 0:
        v = v.shift_left(-s)
    return saturate(v, fmt.width)


def saturating_add(a, b, width: int):
    """``saturate(a + b, width)``: the full-precision sum, clamped to ``width`` signed bits.

    Returns
    -------
    (sum, overflow) : (Value of shape ``signed(width)``, Value of 1 bit)
    """
    return saturate(_as_signed_value(a) + _as_signed_value(b), width)


class OverflowCounter(wiring.Component):
    """Saturating counter of overflow events, several per cycle.

    Each cycle ``count`` grows by the number of set bits of ``inc`` (one bit per lane that
    overflowed on a transferred word) and sticks at ``2**width - 1``. ``clear`` resets it to 0
    (``clear`` wins over increments in the same cycle).

    Parameters
    ----------
    inputs : int
        Number of increment bits (lanes), at least 1.
    width : int
        Counter width (default 32).

    Members
    -------
    inc : ``In(inputs)``
    clear : ``In(1)``
    count : ``Out(width)``
    """

    def __init__(self, *, inputs: int = 1, width: int = 32):
        if not isinstance(inputs, int) or inputs < 1:
            raise TypeError(f"Number of inputs must be a positive integer, not {inputs!r}")
        if not isinstance(width, int) or width < 1:
            raise TypeError(f"Counter width must be a positive integer, not {width!r}")
        self._inputs = inputs
        self._width = width
        super().__init__({"inc": In(inputs), "clear": In(1), "count": Out(width)})

    @property
    def inputs(self):
        return self._inputs

    @property
    def width(self):
        return self._width

    def elaborate(self, platform):
        m = Module()
        ones = tree_sum((self.inc[i] for i in range(self._inputs)), start=C(0, 1))
        total = Signal(self._width + self._inputs.bit_length() + 1)
        m.d.comb += total.eq(self.count + ones)
        with m.If(self.clear):
            m.d.sync += self.count.eq(0)
        with m.Elif(total >= (1 << self._width)):
            m.d.sync += self.count.eq((1 << self._width) - 1)
        with m.Else():
            m.d.sync += self.count.eq(total)
        return m
