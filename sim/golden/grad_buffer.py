"""Golden model of the gradient buffers :class:`fpdeep_hw.memory.grad_buffer.GradBuffer`
(``LGB``, ``BGB``), bit-exact including saturation, rounding and overflow counts.

Transaction level: the block's outputs do not depend on timing, only on the order of the
contributions and on where the mini-batches end (the ``batch_done`` flag).
"""

from __future__ import annotations

import numpy as np

from sim.fixed import as_int_array, requantize, saturating_add

__all__ = ["reciprocal", "average", "GradBufferModel"]


def reciprocal(batch, recip_bits):
    """``(R, r)``: ``R = round_half_up(2**r / batch)``, ``r = recip_bits + bitlen(batch) - 1``;
    ``(1, log2(batch))`` when ``batch`` is a power of two (an exact shift, no multiply)."""
    if batch & (batch - 1) == 0:
        return 1, int(np.log2(batch))
    r = recip_bits + int(batch).bit_length() - 1
    # round half up of 2**r / batch, on integers: floor((2**r + batch/2) / batch)
    return (2 ** r * 2 + batch) // (2 * batch), r


def average(acc, in_frac, out_fmt, batch, recip_bits):
    """Average accumulators ``acc`` (``in_frac`` fractional bits) over ``batch`` into ``out_fmt``.

    Returns ``(values, overflow_count)``.
    """
    recip, r = reciprocal(batch, recip_bits)
    product = as_int_array(acc) * recip
    return requantize(product, in_frac + r, out_fmt)


class GradBufferModel:
    """Accumulate gradient sets per address over a mini-batch; average and clear on ``batch_done``.

    Parameters
    ----------
    depth, lanes, kernel : int
        Buffer shape (``depth`` sets of ``lanes x kernel x kernel``).
    in_fmt, out_fmt : FixedFormat
        Contribution and output formats.
    acc_width : int
        Accumulator width (saturating).
    batch, recip_bits : int
        Mini-batch size and reciprocal width (see :func:`reciprocal`).
    """

    def __init__(self, *, depth, lanes, kernel, in_fmt, out_fmt, acc_width, batch, recip_bits=17):
        self.shape = (depth, lanes, kernel, kernel)
        self.in_fmt, self.out_fmt = in_fmt, out_fmt
        self.acc_width, self.batch, self.recip_bits = acc_width, batch, recip_bits
        self.acc = as_int_array(np.zeros(self.shape, dtype=np.int64))
        self.acc_overflow = 0
        self.out_overflow = 0

    def push(self, addr, grads, batch_done=False):
        """Accumulate one contribution; if it ends the mini-batch, return the drained words
        ``[{"addr", "data", "last"}, ...]`` (address order), else ``[]``."""
        total, count = saturating_add(self.acc[addr], as_int_array(grads), self.acc_width)
        self.acc[addr] = as_int_array(total)
        self.acc_overflow += count
        if not batch_done:
            return []
        return self.drain()

    def drain(self):
        values, count = average(self.acc, self.in_fmt.frac, self.out_fmt, self.batch,
                                self.recip_bits)
        self.out_overflow += count
        self.acc = as_int_array(np.zeros(self.shape, dtype=np.int64))
        depth = self.shape[0]
        return [{"addr": a, "data": values[a].tolist(), "last": int(a == depth - 1)}
                for a in range(depth)]

    def run(self, words):
        """Feed ``(addr, grads, batch_done)`` words; return every drained word, in order."""
        out = []
        for addr, grads, done in words:
            out += self.push(addr, grads, done)
        return out
