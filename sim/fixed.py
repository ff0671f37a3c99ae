"""Fixed-point arithmetic golden model (numpy), bit-exact with :mod:`fpdeep_hw.numerics`.

The rules are those of :mod:`fpdeep_map.numerics` (the numerics contract):

- a value in ``FixedFormat(width=W, frac=F)`` is the integer ``q`` in ``[-2**(W-1), 2**(W-1)-1]``
  standing for ``q / 2**F``;
- requantisation from ``F_in`` to ``F_out < F_in`` fractional bits drops ``s = F_in - F_out`` bits
  with ``"half_up"`` = ``floor((x + 2**(s-1)) / 2**s)`` or ``"truncate"`` = ``floor(x / 2**s)``;
  to ``F_out >= F_in`` it shifts left exactly;
- the result is saturated to ``W`` bits and every clamped element counts one overflow.

All arithmetic is done on Python integers (numpy ``object`` arrays) so accumulators of 48, 64 or
96 bits never wrap silently inside numpy; results that fit in 64 bits come back as ``int64``
arrays, wider ones as ``object`` arrays of Python ints.

Functions return ``(values, overflow_count)`` wherever saturation can happen; the count is a plain
``int`` equal to what the hardware's overflow counter adds for the same data.
"""

from __future__ import annotations

import numpy as np

from fpdeep_map.numerics import FixedFormat

__all__ = [
    "as_int_array", "saturate", "quantize", "requantize", "to_float",
    "saturating_add", "accumulate", "wrap",
]


def as_int_array(x) -> np.ndarray:
    """Return ``x`` as a numpy ``object`` array of Python ints (exact arithmetic of any width).

    Raises ``TypeError`` for floating-point input (use :func:`quantize` for floats).
    """
    a = np.asarray(x)
    if a.dtype.kind == "f":
        raise TypeError("expected integers, got floating-point values; use quantize() for floats")
    if a.dtype == object:
        flat = [int(v) for v in a.ravel()]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(a.shape)
    if a.dtype.kind not in "iub":
        raise TypeError(f"expected an integer array, not dtype {a.dtype}")
    return a.astype(object)


def _result(a: np.ndarray, width: int) -> np.ndarray:
    """Convert an object array known to fit in ``width`` signed bits to int64 if possible."""
    if width <= 64:
        return np.asarray(a, dtype=object).astype(np.int64)
    return np.asarray(a, dtype=object)


def _check_width(width):
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, not {width!r}")


def saturate(x_int, width: int):
    """Clamp integers to the signed range of ``width`` bits.

    Returns ``(values, overflow_count)``: ``values`` int64 (``object`` if ``width > 64``), the count
    is the number of elements that were outside ``[-2**(width-1), 2**(width-1)-1]``.
    """
    _check_width(width)
    a = as_int_array(x_int)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    over = (a > hi) | (a < lo)
    count = int(np.count_nonzero(over))
    if count:
        a = np.where(a > hi, hi, np.where(a < lo, lo, a))
    return _result(a, width), count


def wrap(x_int, width: int) -> np.ndarray:
    """Two's-complement wrap-around to ``width`` bits (what a plain register does, for tests)."""
    _check_width(width)
    a = as_int_array(x_int)
    m = 1 << width
    h = 1 << (width - 1)
    return _result(((a + h) % m) - h, width)


def _shift(a: np.ndarray, s: int, rounding: str) -> np.ndarray:
    """Drop ``s > 0`` fractional bits of the object array ``a`` with the given rounding."""
    if rounding == "half_up":
        return (a + (1 << (s - 1))) >> s
    if rounding == "truncate":
        return a >> s
    raise ValueError(f"unknown rounding mode {rounding!r}")


def requantize(x_int, frac_in: int, fmt: FixedFormat):
    """Bring integers with ``frac_in`` fractional bits into ``fmt`` (round, then saturate).

    Returns ``(values, overflow_count)`` with ``values`` an int64 array.
    """
    if not isinstance(frac_in, int) or frac_in < 0:
        raise ValueError(f"frac_in must be a non-negative integer, not {frac_in!r}")
    a = as_int_array(x_int)
    s = frac_in - fmt.frac
    if s > 0:
        a = _shift(a, s, fmt.rounding)
    elif s < 0:
        a = a << (-s)
    return saturate(a, fmt.width)


def quantize(x_float, fmt: FixedFormat):
    """Convert real numbers to ``fmt`` with the format's rounding, saturating.

    ``half_up`` rounds to nearest with ties towards plus infinity (``floor(v + 1/2)``), ``truncate``
    rounds towards minus infinity, where ``v = x * 2**frac``. Infinities saturate; NaN is an error.
    Returns ``(values, overflow_count)`` with ``values`` an int64 array.
    """
    x = np.asarray(x_float, dtype=np.float64)
    if np.isnan(x).any():
        raise ValueError("cannot quantize NaN")
    v = x * (2.0 ** fmt.frac)  # exact: scaling by a power of two
    r = np.floor(v)
    if fmt.rounding == "half_up":
        # v - r is exact for finite v; avoids the double rounding of floor(v + 0.5)
        with np.errstate(invalid="ignore"):
            r = r + ((v - r) >= 0.5)
    elif fmt.rounding != "truncate":
        raise ValueError(f"unknown rounding mode {fmt.rounding!r}")
    lo, hi = fmt.min_int, fmt.max_int
    over = (r > hi) | (r < lo)
    count = int(np.count_nonzero(over))
    r = np.clip(r, float(lo) - 1.0, float(hi) + 1.0)  # keep the int conversion small and finite
    flat = [min(max(int(f), lo), hi) for f in r.ravel()]
    out = np.array(flat, dtype=np.int64).reshape(x.shape)
    return out, count


def to_float(q, fmt: FixedFormat) -> np.ndarray:
    """Real value of integers ``q`` in ``fmt`` (float64; exact when ``|q| < 2**53``)."""
    a = np.asarray(q)
    if a.dtype == object:
        a = np.array([float(v) for v in a.ravel()]).reshape(a.shape)
    return a.astype(np.float64) / (2.0 ** fmt.frac)


def saturating_add(a, b, width: int):
    """Elementwise ``saturate(a + b, width)``: returns ``(sums, overflow_count)``."""
    return saturate(as_int_array(a) + as_int_array(b), width)


def accumulate(terms, width: int, *, axis: int = -1, init=0):
    """Sequential saturating accumulation along ``axis``, as a hardware accumulator does it.

    ``acc = init; for t in terms: acc = saturate(acc + t, width)``; every clamping step counts one
    overflow (so a long run of positive terms at the limit counts once per term, like the RTL).
    Returns ``(acc, overflow_count)``; ``acc`` has the shape of ``terms`` without ``axis``.
    """
    _check_width(width)
    t = np.moveaxis(as_int_array(terms), axis, 0)
    acc = as_int_array(np.broadcast_to(np.asarray(init, dtype=object), t.shape[1:]))
    total = 0
    for term in t:
        acc, n = saturate(acc + term, width)
        acc = as_int_array(acc)
        total += n
    return _result(acc, width), total
