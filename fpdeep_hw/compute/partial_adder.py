"""Partial-activation adder: local partial sums plus the partial sums of the preceding node.

When a layer is split by input channels across nodes (ICP, paper section 5.5), every node computes
partial sums over its share of the input channels; the partial sums travel down the chain and each
node adds its own. The first node of the split only sends its local sums on; the last node rounds
the total once, to the activation format.

Golden model: :mod:`sim.golden.partial_adder`. Test: ``tests/hw/test_partial_adder.py``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from fpdeep_hw.numerics import OverflowCounter, requantize
from fpdeep_map.numerics import FixedFormat

__all__ = ["PartialAdder"]


class PartialAdder(wiring.Component):
    """Adds the local partial-sum stream to the upstream partial-sum stream, word by word.

    A word is ``lanes`` signed partial sums. A result word is formed only when both ``local`` and
    ``upstream`` offer a word; both are then taken in the same cycle, so the two streams stay
    aligned word for word whatever their stalls. The exact sum (both operands aligned to the larger
    number of fractional bits ``f``, no bit lost) is requantised once to the output format:
    rounded per the output format's rounding when it has fewer fractional bits than ``f``,
    saturated to its width; each clamped lane of a transferred word counts one overflow.

    - ``first=True`` (first node of a split layer): no ``upstream`` port; the local sums are
      requantised and passed on.
    - ``output=None`` (not the last node): the output is in the ``partial`` format.
    - ``output=fmt`` (last node of an ICP split): the total is rounded once, to ``fmt``
      (typically the activation format).

    The result is registered: a word pair transferred in cycle ``t`` is valid on ``o`` from cycle
    ``t + LATENCY`` (``LATENCY = 1``); with ``o.ready`` held high one word per cycle flows through.

    Parameters
    ----------
    lanes : int
        Partial sums per word, at least 1.
    partial : FixedFormat
        Format of the partial sums travelling along the chain (``upstream`` and, when ``output``
        is ``None``, ``o``).
    local : FixedFormat, optional
        Format of the local partial sums (default: ``partial``).
    output : FixedFormat, optional
        Format of ``o`` on the last node of an ICP split (default: ``partial``).
    first : bool
        First node of the split: no upstream stream.

    Members
    -------
    local : ``In(stream.Signature(ArrayLayout(signed(local.width), lanes)))``
        Locally computed partial sums.
    upstream : ``In(stream.Signature(ArrayLayout(signed(partial.width), lanes)))``
        Partial sums from the preceding node (absent when ``first``).
    o : ``Out(stream.Signature(ArrayLayout(signed(out.width), lanes)))``
        Sums, in ``output`` (or ``partial``) format.
    overflows : ``Out(32)``
        Saturating count of clamped lanes since reset.
    """

    LATENCY = 1

    def __init__(self, *, lanes, partial, local=None, output=None, first=False):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            raise ValueError(f"Partial adder lanes must be a positive integer, not {lanes!r}")
        if not isinstance(partial, FixedFormat):
            raise TypeError(f"Partial-sum format must be a FixedFormat, not {partial!r}")
        if local is None:
            local = partial
        if not isinstance(local, FixedFormat):
            raise TypeError(f"Local partial-sum format must be a FixedFormat, not {local!r}")
        if output is not None and not isinstance(output, FixedFormat):
            raise TypeError(f"Output format must be a FixedFormat or None, not {output!r}")
        if not isinstance(first, bool):
            raise TypeError(f"First must be a bool, not {first!r}")
        self._lanes = lanes
        self._partial = partial
        self._local = local
        self._output = output
        self._first = first
        out_fmt = output if output is not None else partial
        members = {
            "local": In(stream.Signature(data.ArrayLayout(signed(local.width), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(out_fmt.width), lanes))),
            "overflows": Out(32),
        }
        if not first:
            members["upstream"] = In(stream.Signature(data.ArrayLayout(signed(partial.width), lanes)))
        super().__init__(members)

    @property
    def lanes(self):
        return self._lanes

    @property
    def partial(self):
        return self._partial

    @property
    def local_format(self):
        return self._local

    @property
    def output(self):
        return self._output

    @property
    def out_format(self):
        """Format of ``o``: ``output`` if given, else ``partial``."""
        return self._output if self._output is not None else self._partial

    @property
    def first(self):
        return self._first

    def elaborate(self, platform):
        m = Module()
        m.submodules.overflow_counter = counter = OverflowCounter(inputs=self._lanes)

        frac = self._local.frac if self._first else max(self._local.frac, self._partial.frac)
        can_load = self.o.ready | ~self.o.valid
        if self._first:
            operands_valid = self.local.valid
        else:
            operands_valid = self.local.valid & self.upstream.valid
        take = can_load & operands_valid
        m.d.comb += self.local.ready.eq(take)
        if not self._first:
            m.d.comb += self.upstream.ready.eq(take)

        flags = []
        for lane in range(self._lanes):
            total = self.local.payload[lane].shift_left(frac - self._local.frac)
            if not self._first:
                total = total + self.upstream.payload[lane].shift_left(frac - self._partial.frac)
            result, overflow = requantize(total, frac, self.out_format)
            with m.If(take):
                m.d.sync += self.o.payload[lane].eq(result)
            flags.append(overflow & take)

        with m.If(can_load):
            m.d.sync += self.o.valid.eq(operands_valid)
        m.d.comb += [
            counter.inc.eq(Cat(*flags)),
            self.overflows.eq(counter.count),
        ]
        return m
