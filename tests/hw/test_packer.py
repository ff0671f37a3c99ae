# amaranth: UnusedElaboratable=no
"""Tests of the link stream gearbox (``fpdeep_hw/link/packer.py``) against ``sim/golden/packer.py``.

Packer alone, Unpacker alone (with random padding bits, which it must drop) and Packer ->
Unpacker, all with random valid/ready stalls on every stream, for item widths 1 .. 656 bits and
1, 3, 7, 16 items per image; latency to the cycle; throughput with the output always ready and
the last image's last word leaving without further input; constructor messages; Verilator lint.
"""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from fpdeep_hw.link.packer import Packer, Unpacker
from sim.golden import packer as golden
from sim.lint import verilator_lint
from sim.streams import stream_sink, stream_source

WIDTHS = (1, 16, 48, 64, 96, 128, 656)
PER_IMAGE = (1, 3, 7, 16)


def _images(item_bits, items_per_image):
    """Images per case: enough items to cross several words and image boundaries, kept small."""
    return max(2, min(4, 48 // items_per_image))


def _items(rng, item_bits, count):
    return [rng.getrandbits(item_bits) for _ in range(count)]


def _simulate(top, i_port, o_port, inputs, count, *, seed, p_in, p_out, max_cycles=20000):
    rng = random.Random(seed)
    sim = Simulator(top)
    sim.add_clock(1e-8)
    out = []
    sim.add_testbench(stream_source(i_port, inputs, rng=random.Random(rng.random()), p_stall=p_in,
                                    max_cycles=max_cycles))
    sim.add_testbench(stream_sink(o_port, out, count=count, rng=random.Random(rng.random()),
                                  p_stall=p_out, max_cycles=max_cycles))

    async def quiet(ctx):
        # Once everything expected has come out, nothing else may: run on with the output ready.
        while len(out) < count:
            await ctx.tick()
        await ctx.tick()
        ctx.set(o_port.ready, 1)
        for _ in range(8):
            _, _, valid = await ctx.tick().sample(o_port.valid)
            assert not valid, "output word beyond the expected ones"

    sim.add_testbench(quiet)
    sim.run()
    return out


# --- golden model --------------------------------------------------------------------------------

def test_golden_format():
    # 6 lanes x 16 bits: 96 bits per item, 3 items = 288 bits = 4.5 words -> 5 words.
    items = [(1 << 96) - 1, 0, 0x123456789ABCDEF0FEDCBA98]
    words = golden.pack(items, 96, 3)
    assert golden.words_per_image(96, 3) == len(words) == 5
    assert words[0] == (1 << 64) - 1
    assert words[1] == (1 << 32) - 1          # item 0's top 32 bits, then item 1 (zeros)
    assert words[2] == 0
    assert words[3] == 0x9ABCDEF0_FEDCBA98    # item 2 from bit 192 = word 3 bit 0
    assert words[4] == 0x12345678             # its top 32 bits, then 32 zero bits of padding
    assert golden.unpack(words, 96, 3) == items
    # 16-bit items, 3 per image: 48 bits then 16 zero bits of padding, each image on its word.
    assert golden.pack([1, 2, 3, 4, 5, 6], 16, 3) == [1 | 2 << 16 | 3 << 32, 4 | 5 << 16 | 6 << 32]
    assert golden.unpack([1 | 2 << 16 | 3 << 32 | 0xFFFF << 48], 16, 3) == [1, 2, 3]
    assert golden.words_per_image(1, 65) == 2 and golden.words_per_image(656, 1) == 11
    with pytest.raises(ValueError, match=r"^4 items are not whole images of 3$"):
        golden.pack([0] * 4, 16, 3)
    with pytest.raises(ValueError, match=r"^item 65536 does not fit in 16 bits$"):
        golden.pack([65536], 16, 1)
    with pytest.raises(ValueError, match=r"^3 words are not whole images of 2$"):
        golden.unpack([0] * 3, 96, 1)
    with pytest.raises(ValueError, match=r"^item_bits must be a positive integer, not 0$"):
        golden.words_per_image(0, 1)


# --- constructor ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [Packer, Unpacker])
def test_constructor_errors(cls):
    name = cls.__name__
    for bad in (0, -3, 1.5, True, "16", None):
        with pytest.raises(ValueError, match=rf"^{name} item_bits must be a positive integer, "
                                             rf"not {bad!r}$"):
            cls(bad, 4)
        with pytest.raises(ValueError, match=rf"^{name} items_per_image must be a positive "
                                             rf"integer, not {bad!r}$"):
            cls(16, bad)


def test_attributes():
    p, u = Packer(96, 3), Unpacker(96, 3)
    for dut in (p, u):
        assert (dut.item_bits, dut.items_per_image, dut.words_per_image, dut.pad_bits) == \
            (96, 3, 5, 32)
        with pytest.raises(AttributeError):
            dut.item_bits = 8
    assert Packer.LATENCY == Unpacker.LATENCY == 1
    assert len(p.i.payload) == 96 and len(p.o.payload) == 64
    assert len(u.i.payload) == 64 and len(u.o.payload) == 96
    assert Packer(656, 7).words_per_image == golden.words_per_image(656, 7) == 72


# --- against the golden model, random stalls -----------------------------------------------------

CASES = [(w, n) for w in WIDTHS for n in PER_IMAGE]


@pytest.mark.parametrize("item_bits,items_per_image", CASES)
def test_packer_golden(item_bits, items_per_image):
    rng = random.Random(item_bits * 1000 + items_per_image)
    items = _items(rng, item_bits, _images(item_bits, items_per_image) * items_per_image)
    expected = golden.pack(items, item_bits, items_per_image)
    dut = Packer(item_bits, items_per_image)
    out = _simulate(dut, dut.i, dut.o, items, len(expected), seed=rng.random(), p_in=0.3,
                    p_out=0.3)
    assert out == expected


@pytest.mark.parametrize("item_bits,items_per_image", CASES)
def test_unpacker_golden(item_bits, items_per_image):
    rng = random.Random(item_bits * 1000 + items_per_image + 7)
    items = _items(rng, item_bits, _images(item_bits, items_per_image) * items_per_image)
    words = golden.pack(items, item_bits, items_per_image)
    # Random padding bits: the Unpacker drops them whatever they are.
    dut = Unpacker(item_bits, items_per_image)
    wpi, pad = dut.words_per_image, dut.pad_bits
    if pad:
        for j in range(wpi - 1, len(words), wpi):
            words[j] |= rng.getrandbits(pad) << (64 - pad)
    assert golden.unpack(words, item_bits, items_per_image) == items
    out = _simulate(dut, dut.i, dut.o, words, len(items), seed=rng.random(), p_in=0.3,
                    p_out=0.3)
    assert out == items


def _round_trip_top(item_bits, items_per_image):
    p, u = Packer(item_bits, items_per_image), Unpacker(item_bits, items_per_image)
    m = Module()
    m.submodules.packer = p
    m.submodules.unpacker = u
    wiring.connect(m, p.o, u.i)
    return m, p, u


@pytest.mark.parametrize("item_bits,items_per_image", CASES)
def test_round_trip(item_bits, items_per_image):
    rng = random.Random(item_bits * 1000 + items_per_image + 13)
    items = _items(rng, item_bits, _images(item_bits, items_per_image) * items_per_image)
    m, p, u = _round_trip_top(item_bits, items_per_image)
    out = _simulate(m, p.i, u.o, items, len(items), seed=rng.random(), p_in=0.3, p_out=0.3)
    assert out == items


@pytest.mark.parametrize("p_in,p_out", [(0.0, 0.8), (0.8, 0.0), (0.6, 0.6)])
def test_round_trip_stall_mix(p_in, p_out):
    """Heavy stalls on one side or both (buffers full, buffers starved), an odd width."""
    rng = random.Random(int(100 * p_in + p_out * 10))
    items = _items(rng, 40, 5 * 9)
    m, p, u = _round_trip_top(40, 9)
    assert _simulate(m, p.i, u.o, items, len(items), seed=3, p_in=p_in, p_out=p_out) == items


# --- latency and throughput ----------------------------------------------------------------------

def _timed(dut, i_port, o_port, inputs, count):
    """No stalls: ``(in_cycles, out_cycles, out)``, cycles of each transfer from the start."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    in_cycles, out_cycles, out = [], [], []

    async def source(ctx):
        cycle = 0
        for x in inputs:
            ctx.set(i_port.valid, 1)
            ctx.set(i_port.payload, x)
            while True:
                _, _, ready = await ctx.tick().sample(i_port.ready)
                if ready:
                    in_cycles.append(cycle)
                cycle += 1
                if ready:
                    break
        ctx.set(i_port.valid, 0)

    sim.add_testbench(source)
    sim.add_testbench(stream_sink(o_port, out, count=count, max_cycles=50 * count + 100,
                                  on_word=lambda c, _: out_cycles.append(c)))
    sim.run()
    return in_cycles, out_cycles, out


def test_latency_packer():
    # One 64-bit item per image: every item a word, LATENCY cycles later, one per cycle.
    rng = random.Random(1)
    items = _items(rng, 64, 6)
    ins, outs, out = _timed_dut(Packer(64, 1), items, 6)
    assert out == items
    assert [o - i for o, i in zip(outs, ins)] == [Packer.LATENCY] * 6 == [1] * 6
    # 16-bit items: the 4th item completes the first word, LATENCY cycles after it.
    items = _items(rng, 16, 8)
    ins, outs, out = _timed_dut(Packer(16, 8), items, 2)
    assert out == golden.pack(items, 16, 8)
    assert ins == list(range(8))
    assert outs == [ins[3] + Packer.LATENCY, ins[7] + Packer.LATENCY]
    # An image ending mid-word: its padded last word leaves LATENCY cycles after its last item.
    items = _items(rng, 48, 3)
    ins, outs, out = _timed_dut(Packer(48, 3), items, 3)
    assert out == golden.pack(items, 48, 3)
    assert outs == [ins[1] + 1, ins[2] + 1, ins[2] + 2]


def test_latency_unpacker():
    rng = random.Random(2)
    items = _items(rng, 16, 8)
    words = golden.pack(items, 16, 8)
    ins, outs, out = _timed_dut(Unpacker(16, 8), words, 8)
    assert out == items
    assert outs[0] - ins[0] == Unpacker.LATENCY == 1
    assert outs == list(range(1, 9))            # one item per cycle once the first word is in
    # 96-bit items: the second word completes the first item.
    items = _items(rng, 96, 2)
    words = golden.pack(items, 96, 2)
    ins, outs, out = _timed_dut(Unpacker(96, 2), words, 2)
    assert out == items
    assert outs == [ins[1] + Unpacker.LATENCY, ins[2] + Unpacker.LATENCY]


def _timed_dut(dut, inputs, count):
    return _timed(dut, dut.i, dut.o, inputs, count)


# Narrow, word-sized and wide items. With a buffer one word smaller the Packer loses throughput
# in (24, 3), (48, 7), (63, 16), (100, 16), (127, 16) and the Unpacker in all but (64, 5)
# (checked by hand when sizing the buffers).
THROUGHPUT = [(1, 100), (16, 7), (24, 3), (48, 7), (63, 16), (64, 5), (96, 16), (100, 16),
              (127, 16), (129, 5), (200, 16), (656, 3)]


@pytest.mark.parametrize("item_bits,items_per_image", THROUGHPUT)
def test_packer_throughput(item_bits, items_per_image):
    """Input always valid, output always ready, 4 images: one item per cycle (items <= 64
    bits) or one word per cycle from the first (wider items); cycles for the 4 images = the
    larger of items and words, plus LATENCY, plus at most one (a last item completing two
    words); the last image's last word leaves with no further input."""
    images = 4
    rng = random.Random(item_bits)
    items = _items(rng, item_bits, images * items_per_image)
    expected = golden.pack(items, item_bits, items_per_image)
    dut = Packer(item_bits, items_per_image)
    ins, outs, out = _timed_dut(dut, items, len(expected))
    assert out == expected
    words = len(expected)
    assert words == images * dut.words_per_image
    if item_bits <= 64:
        assert ins == list(range(len(items)))
    else:
        assert outs == list(range(ins[0] + Packer.LATENCY, ins[0] + Packer.LATENCY + words))
    assert outs[-1] + 1 <= max(words, len(items)) + Packer.LATENCY + 1
    # The source stopped after the last item; every word, the last image's padded last one
    # included, came out without more input (the sink would time out otherwise).
    assert outs[-1] > ins[-1]


@pytest.mark.parametrize("item_bits,items_per_image", THROUGHPUT)
def test_unpacker_throughput(item_bits, items_per_image):
    """Input always valid, output always ready: one word per cycle (items >= 64 bits) or one
    item per cycle from the first (narrower items); cycles = larger of items and words plus
    LATENCY."""
    images = 4
    rng = random.Random(item_bits + 5)
    items = _items(rng, item_bits, images * items_per_image)
    words = golden.pack(items, item_bits, items_per_image)
    ins, outs, out = _timed_dut(Unpacker(item_bits, items_per_image), words, len(items))
    assert out == items
    if item_bits >= 64:
        assert ins == list(range(len(words)))
    else:
        assert outs == list(range(Unpacker.LATENCY, Unpacker.LATENCY + len(items)))
    assert outs[-1] + 1 == max(len(words), len(items)) + Unpacker.LATENCY


def test_round_trip_throughput():
    """Packer -> Unpacker without stalls: 6 x 16-bit lanes (96 bits) go through at 2 items per
    3 cycles (the 64-bit link in between is the bottleneck), 1.5 words per item, not 2."""
    items_per_image, images = 16, 3
    rng = random.Random(9)
    items = _items(rng, 96, images * items_per_image)
    m, p, u = _round_trip_top(96, items_per_image)
    ins, outs, out = _timed(m, p.i, u.o, items, len(items))
    assert out == items
    words = images * p.words_per_image
    assert words == len(items) * 3 // 2
    assert outs[-1] - ins[0] <= words + Packer.LATENCY + Unpacker.LATENCY + 1


# --- lint ----------------------------------------------------------------------------------------

def test_lint(tmp_path):
    verilator_lint(Packer(96, 16), "packer96", tmp_path)
    verilator_lint(Unpacker(96, 16), "unpacker96", tmp_path)
    verilator_lint(Packer(16, 1), "packer16", tmp_path)
    verilator_lint(Unpacker(1, 3), "unpacker1", tmp_path)
    verilator_lint(Packer(656, 7), "packer656", tmp_path)
    verilator_lint(Unpacker(656, 7), "unpacker656", tmp_path)
