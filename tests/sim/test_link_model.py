# amaranth: UnusedElaboratable=no
"""Tests of :mod:`sim.link_model`: bandwidth (token bucket), latency, order, bit flips, depth."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from amaranth.sim import Simulator

from sim.link_model import LinkModel, rate_flips, words_per_cycle
from sim.streams import stream_sink, stream_source


def _run(link, words, *, p_src=0.0, p_sink=0.0, seed=0, record=None, cycles=None):
    sim = Simulator(link)
    sim.add_clock(1e-8)
    out = []
    taken = []

    async def monitor(ctx):
        cycle = 0
        while True:
            _, _, valid, ready = await ctx.tick().sample(link.i.valid, link.i.ready)
            if valid and ready:
                taken.append(cycle)
            cycle += 1

    arrivals = []
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(stream_source(link.i, words, rng=random.Random(seed), p_stall=p_src),
                      background=True)
    sim.add_testbench(stream_sink(link.o, out, count=len(words), rng=random.Random(seed + 1),
                                  p_stall=p_sink, on_word=lambda c, w: arrivals.append(c)))
    sim.run()
    return out, taken, arrivals


def test_validation():
    with pytest.raises(ValueError, match=r"^LinkModel latency must be a positive integer, "
                                         r"not 0$"):
        LinkModel(latency=0)
    with pytest.raises(ValueError, match=r"^LinkModel needs both gbps and clock_mhz, or "
                                         r"neither$"):
        LinkModel(gbps=10)
    with pytest.raises(ValueError, match=r"^LinkModel bandwidth must be in \(0, 1\] words per "
                                         r"cycle, not 1\.5$"):
        LinkModel(words_per_cycle=1.5)
    with pytest.raises(ValueError, match=r"^LinkModel flip \(3, 64\) is outside the words or "
                                         r"bits$"):
        LinkModel(flips=[(3, 64)])
    with pytest.raises(ValueError, match=r"^LinkModel takes words_per_cycle or gbps/clock_mhz, "
                                         r"not both$"):
        LinkModel(words_per_cycle=0.5, gbps=10, clock_mhz=200)


def test_words_per_cycle_from_link_rate():
    # 10 Gb/s of user data (10.3125 Gb/s line rate, 64B/66B) at 200 MHz, 64-bit words.
    assert words_per_cycle(10, 200) == Fraction(25, 32)
    assert words_per_cycle(10, 156.25) == 1
    assert words_per_cycle(40, 200) == 1                          # capped
    assert LinkModel(gbps=19.8, clock_mhz=100).rate == 1                 # plan default, capped
    assert LinkModel(gbps=3.2, clock_mhz=100).rate == Fraction(1, 2)


@pytest.mark.parametrize("latency", [1, 5, 54])
def test_latency_to_the_cycle(latency):
    link = LinkModel(latency=latency)
    out, taken, arrivals = _run(link, [0xABCD, 0x1234, 7])
    assert out == [0xABCD, 0x1234, 7]
    assert [a - t for a, t in zip(arrivals, taken)] == [latency] * 3
    assert link.LATENCY == latency


def _bucket(num, den, burst, cycles):
    """Cycles in which a saturated input is accepted (Python model of the token bucket)."""
    cap = burst * den + num - 1
    tokens, out = cap, []
    for c in range(cycles):
        avail = min(tokens + num, cap)
        if avail >= den:
            out.append(c)
            avail -= den
        tokens = avail
    return out


@pytest.mark.parametrize("rate,burst", [(Fraction(1), 1), (Fraction(25, 32), 1),
                                        (Fraction(1, 3), 1), (Fraction(3, 10), 4)])
def test_bandwidth_token_bucket(rate, burst):
    n = 120
    link = LinkModel(latency=3, words_per_cycle=rate, burst=burst)
    words = list(range(1, n + 1))
    out, taken, _ = _run(link, words)
    assert out == words
    assert taken == _bucket(rate.numerator, rate.denominator, burst, 10 * n)[:n]
    # Long-run rate, and never more than burst + c * rate words in any c cycles.
    span = taken[-1] - taken[0]
    assert abs((n - 1) / span - float(rate)) < 0.02
    for a in range(n):
        for b in range(a, min(n, a + 40)):
            assert b - a + 1 <= burst + math.floor((taken[b] - taken[a] + 1) * rate)


def test_order_and_content_with_stalls():
    rng = random.Random(3)
    words = [rng.getrandbits(64) for _ in range(200)]
    link = LinkModel(latency=7, words_per_cycle=Fraction(2, 3), depth=5)
    out, _, _ = _run(link, words, p_src=0.3, p_sink=0.5, seed=4)
    assert out == words


def test_depth_backpressure():
    # Consumer never ready: exactly `depth` words are accepted.
    link = LinkModel(latency=4, depth=6)
    sim = Simulator(link)
    sim.add_clock(1e-8)
    accepted = []

    async def tb(ctx):
        ctx.set(link.o.ready, 0)
        ctx.set(link.i.valid, 1)
        for c in range(40):
            ctx.set(link.i.payload, c)
            _, _, ready = await ctx.tick().sample(link.i.ready)
            if ready:
                accepted.append(c)
        assert ctx.get(link.sent) == 6
    sim.add_testbench(tb)
    sim.run()
    assert accepted == list(range(6))


def test_explicit_bit_flips():
    flips = [(0, 0), (2, 63), (2, 1), (5, 17)]
    link = LinkModel(latency=2, flips=flips, width=64)
    words = [0x0123_4567_89AB_CDEF + k for k in range(8)]
    sim = Simulator(link)
    sim.add_clock(1e-8)
    out = []
    sim.add_testbench(stream_source(link.i, words, rng=random.Random(1), p_stall=0.3),
                      background=True)
    sim.add_testbench(stream_sink(link.o, out, count=8, rng=random.Random(2), p_stall=0.3))

    async def check(ctx):
        while len(out) < 8:
            await ctx.tick()
        assert ctx.get(link.corrupted) == 3
        assert ctx.get(link.sent) == 8
    sim.add_testbench(check)
    sim.run()
    masks = {0: 1, 2: (1 << 63) | 2, 5: 1 << 17}
    assert out == [w ^ masks.get(k, 0) for k, w in enumerate(words)]
    assert link.corrupted_words == [0, 2, 5]


def test_rate_flips_deterministic_and_at_rate():
    a = rate_flips(1e-3, seed=5, horizon=4000)
    assert a == rate_flips(1e-3, seed=5, horizon=4000)
    assert a != rate_flips(1e-3, seed=6, horizon=4000)
    bits = 4000 * 64
    mean, sigma = bits * 1e-3, math.sqrt(bits * 1e-3)
    assert abs(len(a) - mean) < 4 * sigma
    assert all(0 <= w < 4000 and 0 <= b < 64 for w, b in a)
    assert LinkModel(flip_rate=1e-3, seed=5, horizon=4000).flip_list == sorted(a)


def test_rate_flips_in_hardware():
    link = LinkModel(latency=3, flip_rate=2e-3, seed=1, horizon=300)
    rng = random.Random(8)
    words = [rng.getrandbits(64) for _ in range(300)]
    out, _, _ = _run(link, words)
    masks = {}
    for w, b in link.flip_list:
        masks[w] = masks.get(w, 0) | (1 << b)
    assert masks and out == [w ^ masks.get(k, 0) for k, w in enumerate(words)]
