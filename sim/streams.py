"""Stream testbench helpers: drive and collect ``amaranth.lib.stream`` interfaces with random stalls.

Every hardware block test uses these so that each stream sees random valid/ready stalls and the
received words are compared against the golden model as a whole list: a word lost, duplicated,
reordered or corrupted shows as a mismatch.

Usage (inside an async testbench added with ``sim.add_testbench``)::

    sim.add_testbench(stream_source(dut.i, words, rng=rng, p_stall=0.3))
    out = []
    sim.add_testbench(stream_sink(dut.o, out, count=len(expected), rng=rng, p_stall=0.3),
                      background=False)

``words`` are payload values as ``ctx.set`` accepts them (ints, or dicts/lists for data layouts).
Collected payloads are converted with :func:`payload_to_python` (views become dicts/lists).
"""

from __future__ import annotations

import random

from amaranth.hdl import Cat, Const, Elaboratable, Module, Signal, Value
from amaranth.lib import data

__all__ = ["stream_source", "stream_sink", "payload_to_python", "Timeout", "TransferRecorder"]


class TransferRecorder(Elaboratable):
    """``top`` under a register of monitored transfers, for a testbench that records them.

    ``xfers[j]`` is a one-bit expression (a stream's ``valid & ready``, a strobe) and
    ``payloads[j]`` the value to record with it (a ``Const`` for none). After each clock edge
    bit ``j`` of ``flags`` is ``xfers[j]`` as it was at that edge and ``payloads[j]`` holds
    its payload then (``None`` for a constant). A monitor reads one signal per quiet cycle
    instead of evaluating every expression in Python (about 4 % of the time of ``tiny``'s
    two-node simulation). Simulate the recorder, not ``top``."""

    def __init__(self, top, xfers, payloads):
        self.top, self._xfers = top, xfers
        self.flags = Signal(len(xfers))
        self._payloads = payloads
        self.payloads = [None if isinstance(p, Const) else Signal(Value.cast(p).shape())
                         for p in payloads]

    def elaborate(self, platform):
        m = Module()
        m.submodules.top = self.top
        m.d.sync += self.flags.eq(Cat(*self._xfers))
        for x, p, r in zip(self._xfers, self._payloads, self.payloads):
            if r is not None:
                with m.If(x):
                    m.d.sync += r.eq(p)
        return m


class Timeout(AssertionError):
    """A stream testbench waited longer than its cycle budget."""


def payload_to_python(value):
    """Convert a value returned by ``ctx.get`` on a payload into plain Python (ints, dicts, lists)."""
    if isinstance(value, data.Const):
        layout = value.shape()
        if isinstance(layout, data.StructLayout):
            return {name: payload_to_python(value[name]) for name, _ in layout}
        if isinstance(layout, data.ArrayLayout):
            return [payload_to_python(value[i]) for i in range(layout.length)]
        return value.as_value().value
    return int(value)


def stream_source(port, words, *, rng=None, p_stall=0.0, max_cycles=None):
    """Return an async testbench that sends ``words`` on ``port`` (a stream the DUT consumes).

    Parameters
    ----------
    port : stream interface (the DUT's ``In`` stream)
    words : iterable of payload values
    rng : random.Random, optional
    p_stall : float
        Probability, each cycle, of holding ``valid`` low before offering the next word.
    max_cycles : int, optional
        Raise :class:`Timeout` if the words are not all accepted within this many cycles.
    """
    rng = rng or random.Random(0)
    words = list(words)

    async def testbench(ctx):
        cycles = 0
        for word in words:
            while rng.random() < p_stall:
                ctx.set(port.valid, 0)
                await ctx.tick()
                cycles += 1
            ctx.set(port.valid, 1)
            ctx.set(port.payload, word)
            while True:
                _, _, ready = await ctx.tick().sample(port.ready)
                cycles += 1
                if ready:
                    break
                if max_cycles is not None and cycles > max_cycles:
                    raise Timeout(f"source stalled: {cycles} cycles, word {words.index(word)} not taken")
            ctx.set(port.valid, 0)

    return testbench


def stream_sink(port, out, *, count, rng=None, p_stall=0.0, max_cycles=None, on_word=None):
    """Return an async testbench that collects ``count`` payloads from ``port`` into ``out``.

    ``ready`` is dropped at random with probability ``p_stall`` each cycle. ``on_word(cycle,
    payload)`` is called for each transfer, if given (e.g. to record timing).
    """
    rng = rng or random.Random(1)

    async def testbench(ctx):
        cycle = 0
        while len(out) < count:
            ready = rng.random() >= p_stall
            ctx.set(port.ready, int(ready))
            _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload)
            if ready and valid:
                word = payload_to_python(payload)
                out.append(word)
                if on_word is not None:
                    on_word(cycle, word)
            cycle += 1
            if max_cycles is not None and cycle > max_cycles:
                raise Timeout(f"sink waited {cycle} cycles, got {len(out)} of {count} words")
        ctx.set(port.ready, 0)

    return testbench
