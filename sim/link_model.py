"""Link model for simulation: bandwidth, latency and bit errors of one serial link direction.

``LinkModel`` is an Amaranth component put between a transmitter's word stream and a receiver's
(e.g. :class:`fpdeep_hw.link.framer.LinkTx` ``o`` -> ``LinkModel`` -> ``LinkRx`` ``i``) in
simulation, in place of two :class:`fpdeep_hw.link.transceiver.SerialLinkPHY` and the fibre.
It is deterministic: the same inputs at the same cycles give the same outputs.

- **Bandwidth**: ``words_per_cycle`` (a fraction <= 1), or derived from the link rate and the
  clock as ``gbps * 1e9 / (width * clock_mhz * 1e6)`` (capped at 1, rounded to a fraction with
  a denominator of at most 4096). A deterministic token bucket: every cycle it gains ``num``
  tokens (at most ``burst * den + num - 1`` held, counting this cycle's gain, so that no
  fraction is lost at full rate); a word needs ``den`` tokens. It starts full. Over any ``c``
  consecutive cycles at most ``burst + c * num / den`` words pass, and a saturated input passes
  exactly ``floor``-spaced ``num`` words every ``den`` cycles.
- **Latency**: a word accepted at cycle ``t`` is valid on ``o`` from cycle ``t + latency``
  (``LATENCY``; 54 is Aurora 64B/66B's figure per hop, ``docs/hw-link.md``), in order.
  ``o`` honours ``ready``; at most ``depth`` words are in flight or waiting (``i.ready`` is low
  beyond that; the default depth covers ``latency`` cycles at full rate, so a consumer that is
  always ready, as ``LinkRx`` is, never throttles the link).
- **Bit errors**: ``flips``, a list of ``(word index, bit)`` (word index counted from 0 over
  accepted words), and/or ``flip_rate`` with ``seed``: independent bit errors at that rate per
  bit, drawn with ``random.Random(seed)`` for the first ``horizon`` words (:func:`rate_flips`).
  ``corrupted`` counts the accepted words with at least one flipped bit; the list actually
  applied is the ``flip_list`` attribute.

Test: ``tests/sim/test_link_model.py``. Documentation: ``docs/hw-link.md``.

Members
-------
i : ``In(stream.Signature(width))``
    Words sent.
o : ``Out(stream.Signature(width))``
    Words received (after latency, with bit errors applied).
sent : ``Out(32)``
    Words accepted so far.
corrupted : ``Out(32)``
    Words accepted so far that had at least one bit flipped.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["LinkModel", "rate_flips", "words_per_cycle"]


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def words_per_cycle(gbps, clock_mhz, width=64):
    """Words per cycle of a ``gbps`` link at ``clock_mhz`` (a Fraction, capped at 1)."""
    rate = Fraction(gbps * 1e9 / (width * clock_mhz * 1e6)).limit_denominator(4096)
    return min(rate, Fraction(1))


def rate_flips(rate, seed, horizon, width=64):
    """``(word, bit)`` of independent bit errors at ``rate`` per bit over ``horizon`` words."""
    if rate <= 0:
        return []
    rng = random.Random(seed)
    out = []
    pos = -1
    total = horizon * width
    log1m = math.log1p(-rate) if rate < 1 else None
    while True:
        if log1m is None:
            pos += 1
        else:
            pos += 1 + int(math.log(1.0 - rng.random()) / log1m)
        if pos >= total:
            return out
        out.append((pos // width, pos % width))


class LinkModel(wiring.Component):
    """One link direction in simulation (see the module docstring).

    Parameters
    ----------
    width : int
        Word width in bits (at least 1).
    latency : int
        Cycles from a word's acceptance to it being valid on ``o`` (at least 1).
    words_per_cycle : Fraction or float, optional
        Bandwidth in words per cycle, in (0, 1]; default 1 unless ``gbps`` is given.
    gbps, clock_mhz : float, optional
        Link rate and clock to derive the bandwidth from (both or neither).
    burst : int
        Words the token bucket can save up (at least 1).
    depth : int, optional
        Words in flight or waiting; default ``latency + 4``.
    flips : list of (int, int)
        Bits to flip: ``(word index, bit)``.
    flip_rate : float
        Bit error rate for random flips (with ``seed`` and ``horizon``).
    """

    def __init__(self, *, width=64, latency=54, words_per_cycle=None, gbps=None,
                 clock_mhz=None, burst=1, depth=None, flips=(), flip_rate=0.0, seed=0,
                 horizon=1 << 14):
        if not _is_int(width) or width < 1:
            raise ValueError(f"LinkModel width must be a positive integer, not {width!r}")
        if not _is_int(latency) or latency < 1:
            raise ValueError(f"LinkModel latency must be a positive integer, not {latency!r}")
        if (gbps is None) != (clock_mhz is None):
            raise ValueError("LinkModel needs both gbps and clock_mhz, or neither")
        if gbps is not None:
            if words_per_cycle is not None:
                raise ValueError("LinkModel takes words_per_cycle or gbps/clock_mhz, not both")
            if not gbps > 0 or not clock_mhz > 0:
                raise ValueError(f"LinkModel gbps and clock_mhz must be positive, "
                                 f"not {gbps!r}, {clock_mhz!r}")
            rate = globals()["words_per_cycle"](gbps, clock_mhz, width)
        elif words_per_cycle is None:
            rate = Fraction(1)
        else:
            rate = Fraction(words_per_cycle).limit_denominator(4096)
        if not 0 < rate <= 1:
            raise ValueError(f"LinkModel bandwidth must be in (0, 1] words per cycle, "
                             f"not {words_per_cycle!r}")
        if not _is_int(burst) or burst < 1:
            raise ValueError(f"LinkModel burst must be a positive integer, not {burst!r}")
        if depth is None:
            depth = latency + 4
        if not _is_int(depth) or depth < 1:
            raise ValueError(f"LinkModel depth must be a positive integer, not {depth!r}")
        if not 0 <= flip_rate < 1:
            raise ValueError(f"LinkModel flip_rate must be in [0, 1), not {flip_rate!r}")
        flip_list = sorted(set((int(w), int(b)) for w, b in flips) |
                           set(rate_flips(flip_rate, seed, horizon, width)))
        for w, b in flip_list:
            if w < 0 or not 0 <= b < width:
                raise ValueError(f"LinkModel flip ({w}, {b}) is outside the words or bits")
        self._width = width
        self._latency = latency
        self._rate = rate
        self._burst = burst
        self._depth = depth
        self._flip_list = flip_list
        super().__init__({
            "i": In(stream.Signature(width)),
            "o": Out(stream.Signature(width)),
            "sent": Out(32),
            "corrupted": Out(32),
        })

    width = property(lambda self: self._width)
    latency = property(lambda self: self._latency)
    LATENCY = property(lambda self: self._latency)
    rate = property(lambda self: self._rate)
    burst = property(lambda self: self._burst)
    depth = property(lambda self: self._depth)
    flip_list = property(lambda self: list(self._flip_list))

    @property
    def corrupted_words(self):
        """Indices of the words that get at least one bit flipped."""
        return sorted({w for w, _ in self._flip_list})

    def elaborate(self, platform):
        m = Module()
        W = self._width
        num, den = self._rate.numerator, self._rate.denominator
        cap = self._burst * den + num - 1      # no fractional token lost at full rate

        tokens = Signal(range(cap + 1), init=cap)
        avail = Signal(range(cap + num + 1))
        take = Signal()
        m.d.comb += [avail.eq(Mux(tokens + num > cap, cap, tokens + num)),
                     take.eq(self.i.valid & self.i.ready)]
        can = avail >= den
        m.d.sync += tokens.eq(avail - Mux(take, den, 0))

        # Bit flips: per corrupted word (sorted), its index and XOR mask, read by a pointer.
        mask = Signal(W)
        if self._flip_list:
            per_word = {}
            for w, b in self._flip_list:
                per_word[w] = per_word.get(w, 0) | (1 << b)
            entries = sorted(per_word.items())
            idx_width = max(1, entries[-1][0].bit_length())
            m.submodules.flips = rom = Memory(
                shape=idx_width + W, depth=len(entries) + 1,
                init=[w | (msk << idx_width) for w, msk in entries] + [(1 << idx_width) - 1])
            rd = rom.read_port(domain="comb")
            ptr = Signal(range(len(entries) + 1))
            m.d.comb += rd.addr.eq(ptr)
            hit = (ptr != len(entries)) & (rd.data[:idx_width] == self.sent)
            m.d.comb += mask.eq(Mux(hit, rd.data[idx_width:], 0))
            with m.If(take & hit):
                m.d.sync += [ptr.eq(ptr + 1), self.corrupted.eq(self.corrupted + 1)]
        with m.If(take):
            m.d.sync += self.sent.eq(self.sent + 1)

        # In flight: words with their acceptance cycle; released `latency` cycles later.
        now = Signal(32)
        m.d.sync += now.eq(now + 1)
        m.submodules.fifo = fifo = SyncFIFO(width=W + 32, depth=self._depth)
        m.d.comb += [
            self.i.ready.eq(can & fifo.w_rdy),
            fifo.w_en.eq(take),
            fifo.w_data.eq(Cat(self.i.payload ^ mask, now)),
        ]
        stamp = fifo.r_data[W:]
        age = Signal(32)
        m.d.comb += age.eq(now - stamp)
        ripe = age >= self._latency
        m.d.comb += [
            self.o.valid.eq(fifo.r_rdy & ripe),
            self.o.payload.eq(fifo.r_data[:W]),
            fifo.r_en.eq(self.o.ready & ripe),
        ]
        return m
