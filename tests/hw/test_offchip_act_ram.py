# amaranth: UnusedElaboratable=no
"""Tests of the off-chip Act-RAM (:mod:`fpdeep_hw.memory.offchip_act_ram`) with the external
memory model :mod:`sim.dram_model`, against the FIFO golden model (``sim.golden.act_ram``).

Random stalls on ``i``, ``o`` and every memory stream, random memory latency and bandwidth
below one word per cycle: the output list equals the input list (nothing lost, duplicated,
reordered or corrupted), the memory model checks that no burst is read before its write is
acknowledged nor overwritten before it was read, and the ring is used (bursts written and read
back). Latency of the bypass to the cycle, capacity exactly ``depth``, ``act_ram_for`` on plan
entries, Verilator lint. The same for the generic :class:`OffchipFIFO` (words of any shape: the
ReLU-mask and argmax stores) and ``store_for`` on the plan's ``mask_store`` / ``arg_store``.
"""

import random

import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from fpdeep_hw.memory.act_ram import ActRAM
from fpdeep_hw.memory.offchip_act_ram import OffchipActRAM, OffchipFIFO, act_ram_for, store_for
from fpdeep_map.numerics import FixedFormat
from sim.dram_model import DRAMModel
from sim.golden.act_ram import act_ram_order
from sim.lint import verilator_lint
from sim.streams import stream_sink, stream_source

ACT = FixedFormat(16, 8)


def random_words(rng, n, lanes, width=16):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    return [[rng.randint(lo, hi) for _ in range(lanes)] for _ in range(n)]


# -- constructor ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, exc, msg", [
    (dict(fmt=16), TypeError, "Off-chip Act-RAM format must be a FixedFormat, not 16"),
    (dict(lanes=0), ValueError, "Off-chip Act-RAM lanes must be a positive integer, not 0"),
    (dict(depth=True), ValueError, "Off-chip Act-RAM depth must be a positive integer, not True"),
    (dict(burst=12), ValueError, "Off-chip Act-RAM burst must be a power of two from 2 to 256, "
                                 "not 12"),
    (dict(burst=1), ValueError, "Off-chip Act-RAM burst must be a power of two from 2 to 256, "
                                "not 1"),
    (dict(base=8), ValueError, "Off-chip Act-RAM base must be a non-negative multiple of the "
                               "burst (16), not 8"),
    (dict(prefetch=1), ValueError, "Off-chip Act-RAM prefetch must be an integer of at least 2 "
                                   "bursts, not 1"),
    (dict(addr_width=0), ValueError, "Off-chip Act-RAM address width must be a positive "
                                     "integer, not 0"),
    (dict(depth=100, addr_width=6), ValueError, "Off-chip Act-RAM ring of 112 words at 0 does "
                                                "not fit in 6 address bits"),
])
def test_rejects_bad_arguments(kw, exc, msg):
    args = dict(fmt=ACT, lanes=2, depth=64)
    args.update(kw)
    with pytest.raises(exc, match="^" + msg.replace("(", r"\(").replace(")", r"\)") + "$"):
        OffchipActRAM(**args)


@pytest.mark.parametrize("kw, exc, msg", [
    (dict(shape="x"), TypeError, "Off-chip FIFO shape must be a shape, not 'x'"),
    (dict(shape=0), ValueError, "Off-chip FIFO words must have at least 1 bit, not 0"),
    (dict(depth=0), ValueError, "Off-chip FIFO depth must be a positive integer, not 0"),
    (dict(burst=3), ValueError, "Off-chip FIFO burst must be a power of two from 2 to 256, "
                                "not 3"),
    (dict(depth=100, addr_width=6), ValueError, "Off-chip FIFO ring of 112 words at 0 does "
                                                "not fit in 6 address bits"),
])
def test_fifo_rejects_bad_arguments(kw, exc, msg):
    args = dict(shape=8, depth=64)
    args.update(kw)
    with pytest.raises(exc, match="^" + msg.replace("(", r"\(").replace(")", r"\)") + "$"):
        OffchipFIFO(**args)


def test_geometry():
    ram = OffchipActRAM(fmt=ACT, lanes=3, depth=100, burst=8, base=64)
    assert (ram.ext_bursts, ram.ext_words, ram.wc_words, ram.prefetch_words) == (13, 104, 16, 32)
    assert ram.latency == ram.LATENCY == 4


# -- FIFO behaviour with the memory model -------------------------------------------------------

def run_fifo(*, lanes, depth, burst, n, p_in, p_out, p_mem, latency, rate, seed,
             hold_out=0, prefetch=2, bits=None):
    """Send ``n`` random words through, with stalls everywhere; returns (got, words, model).
    ``bits``: an :class:`OffchipFIFO` of ``unsigned(bits)`` words instead of the Act-RAM."""
    rng = random.Random(seed)
    kw = dict(depth=depth, burst=burst, base=2 * burst, addr_width=16, prefetch=prefetch)
    if bits is None:
        dut = OffchipActRAM(fmt=ACT, lanes=lanes, **kw)
        words = random_words(rng, n, lanes)
    else:
        dut = OffchipFIFO(shape=bits, **kw)
        words = [rng.randrange(1 << bits) for _ in range(n)]
    model = DRAMModel(dut.mem, burst=burst, words=dut.ext_words + 2 * burst, latency=latency,
                      words_per_cycle=rate, p_stall=p_mem, seed=seed + 1)
    got = []
    levels = []

    async def watch(ctx):
        # level never exceeds depth; i.ready = (level != depth) unless the write-combining FIFO
        # waits for the memory; full / empty follow the level
        while True:
            _, _, level, full, empty, ready = await ctx.tick().sample(
                dut.level, dut.full, dut.empty, dut.i.ready)
            assert 0 <= level <= depth
            assert full == (level == depth) and empty == (level == 0)
            if level == depth:
                assert not ready
            levels.append(level)

    sink = stream_sink(dut.o, got, count=n, rng=random.Random(seed + 2), p_stall=p_out,
                       max_cycles=200 * n + 10_000)

    async def delayed_sink(ctx):
        for _ in range(hold_out):           # let the Act-RAM fill up first
            await ctx.tick()
        await sink(ctx)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(model.run, background=True)
    sim.add_testbench(watch, background=True)
    sim.add_testbench(stream_source(dut.i, words, rng=random.Random(seed + 3), p_stall=p_in))
    sim.add_testbench(delayed_sink)
    sim.run()
    return got, words, model, levels, dut


@pytest.mark.parametrize("case", [
    # lanes, depth, burst, words, p_in, p_out, p_mem, latency, rate, seed, hold_out, prefetch
    (2, 64, 4, 300, 0.3, 0.5, 0.3, (5, 40), 1, 1, 0, 2),
    (1, 37, 8, 250, 0.2, 0.6, 0.2, (1, 60), 0.75, 2, 0, 2),
    (4, 200, 16, 400, 0.1, 0.3, 0.4, (10, 30), 1.5, 3, 1000, 4),
    (2, 90, 4, 400, 0.2, 0.5, 0.3, (20, 80), 2, 6, 0, 8),
    (3, 5, 2, 120, 0.3, 0.7, 0.5, (1, 9), 0.5, 4, 0, 2),    # depth below two bursts
    (2, 1, 4, 30, 0.2, 0.2, 0.2, (3, 7), 1, 5, 0, 3),       # depth 1: bypass only
])
def test_fifo_with_random_stalls_and_latency(case):
    lanes, depth, burst, n, p_in, p_out, p_mem, lat, rate, seed, hold, pre = case
    got, words, model, levels, dut = run_fifo(lanes=lanes, depth=depth, burst=burst, n=n,
                                              p_in=p_in, p_out=p_out, p_mem=p_mem, latency=lat,
                                              rate=rate, seed=seed, hold_out=hold, prefetch=pre)
    assert got == act_ram_order(words)
    assert model.words_written == model.bursts_written * burst
    assert model.words_read == model.bursts_read * burst == model.words_written
    if depth >= dut.wc_words + dut.prefetch_words:
        # the ring was used (the two on-chip FIFOs cannot hold everything)
        assert model.bursts_written > 0
    if depth < burst:
        assert model.bursts_written == 0
    if hold:
        assert max(levels) == depth            # filled to capacity while o was held


@pytest.mark.parametrize("bits, depth, burst, seed, hold", [
    (1, 64, 4, 11, 300),         # one output channel's ReLU mask
    (37, 90, 8, 12, 0),          # masks of 37 channels
    (256, 200, 16, 13, 800),     # argmaxes of 128 channels (2 bits each), filled to capacity
])
def test_offchip_fifo_of_any_width(bits, depth, burst, seed, hold):
    """The generic FIFO (the mask and argmax stores): plain words of any width, in order, none
    lost, through the ring."""
    got, words, model, levels, dut = run_fifo(
        lanes=None, depth=depth, burst=burst, n=3 * depth, p_in=0.2, p_out=0.4, p_mem=0.3,
        latency=(5, 40), rate=1.5, seed=seed, hold_out=hold, prefetch=2, bits=bits)
    assert type(dut) is OffchipFIFO and dut.width == bits and len(dut.mem.w.payload) == bits
    assert got == act_ram_order(words)
    assert model.bursts_written > 0 and model.words_read == model.words_written
    if hold:
        assert max(levels) == depth


def test_capacity_is_depth():
    """With ``o`` held, exactly ``depth`` words are accepted (through the ring), then all come
    out in order."""
    depth, burst = 80, 8
    dut = OffchipActRAM(fmt=ACT, lanes=1, depth=depth, burst=burst, addr_width=12, prefetch=2)
    words = random_words(random.Random(9), 120, 1)
    model = DRAMModel(dut.mem, burst=burst, words=dut.ext_words, latency=6, seed=3)
    accepted = []
    got = []

    async def bench(ctx):
        ctx.set(dut.i.valid, 1)
        k = 0
        for _ in range(400):                  # o.ready low: fill up
            ctx.set(dut.i.payload, words[k])
            _, _, ready, level = await ctx.tick().sample(dut.i.ready, dut.level)
            if ready:
                k += 1
                accepted.append(k)
        assert k == depth and level == depth
        ctx.set(dut.i.valid, 0)
        await stream_sink(dut.o, got, count=depth)(ctx)
        assert got == words[:depth]
        assert model.bursts_written >= (depth - dut.wc_words - dut.prefetch_words) // burst == 6

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(model.run, background=True)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("lanes, depth, burst", [(1, 64, 4), (4, 1000, 16), (2, 5, 2)])
def test_latency_to_the_cycle(lanes, depth, burst):
    """A word written into an empty Act-RAM is on ``o`` exactly ``LATENCY`` cycles later (the
    bypass: the ring is empty), and a stream of words follows one per cycle."""
    dut = OffchipActRAM(fmt=ACT, lanes=lanes, depth=depth, burst=burst)
    words = random_words(random.Random(lanes), 6, lanes)
    model = DRAMModel(dut.mem, burst=burst, words=dut.ext_words, latency=5)
    seen = []

    async def source(ctx):
        for _ in range(3):
            await ctx.tick()
        for k, w in enumerate(words):
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, w)
            _, _, ready = await ctx.tick().sample(dut.i.ready)
            assert ready
            seen.append(("in", 3 + k))
        ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        ctx.set(dut.o.ready, 1)
        for cycle in range(40):
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            if valid:
                seen.append(("out", cycle))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(model.run, background=True)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    ins = [c for k, c in seen if k == "in"]
    outs = [c for k, c in seen if k == "out"]
    assert outs[0] == ins[0] + OffchipActRAM.LATENCY
    assert outs == [c + OffchipActRAM.LATENCY for c in ins]
    assert model.bursts_written == 0


def test_latency_depth_one():
    dut = OffchipActRAM(fmt=ACT, lanes=1, depth=1, burst=2)
    model = DRAMModel(dut.mem, burst=2, words=2, latency=5)
    out = []

    async def bench(ctx):
        await ctx.tick()
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, [7])
        await ctx.tick()                     # transfer in cycle 1
        ctx.set(dut.i.valid, 0)
        ctx.set(dut.o.ready, 1)
        for cycle in range(2, 10):
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            if valid:
                out.append(cycle)
        assert out[0] == 1 + OffchipActRAM.LATENCY

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(model.run, background=True)
    sim.add_testbench(bench)
    sim.run()


def test_model_catches_read_before_ack():
    """The memory model fails a reader that does not wait for the write acknowledgement."""
    from amaranth.lib import wiring
    from fpdeep_hw.memory.offchip_act_ram import memory_port_signature
    port = memory_port_signature(8, 8).flip().create()
    model = DRAMModel(port, burst=2, words=16, latency=50)

    async def bench(ctx):
        ctx.set(port.aw.valid, 1)
        ctx.set(port.aw.payload, 4)
        ctx.set(port.w.valid, 1)
        ctx.set(port.w.payload, 1)
        for _ in range(4):
            await ctx.tick()
        ctx.set(port.aw.valid, 0)
        ctx.set(port.w.valid, 0)
        ctx.set(port.ar.valid, 1)
        ctx.set(port.ar.payload, 4)
        for _ in range(4):
            await ctx.tick()

    from amaranth.hdl import Module, Signal
    m = Module()
    tick = Signal()
    m.d.sync += tick.eq(~tick)
    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(model.run, background=True)
    sim.add_testbench(bench)
    with pytest.raises(AssertionError, match="before its write was acknowledged"):
        sim.run()


# -- act_ram_for -------------------------------------------------------------------------------

def test_act_ram_for_follows_the_plan():
    from fpdeep_map.board import load_board
    from fpdeep_map.mapper import map_network
    from fpdeep_map.network import load_network
    vgg = map_network(load_network("vgg16"), load_board("vc709"), 15, max_row_lanes=1)
    off = [s for n in vgg.node_plans for s in n.segments if s.act_ram.offchip_words > 0]
    tiny = map_network(load_network("tiny"), load_board("vc709"), 1, max_row_lanes=1)
    on = [s for n in tiny.node_plans for s in n.segments]
    assert off and all(s.act_ram.offchip_words == 0 for s in on)
    ram = act_ram_for(off[0], ACT, 4, 4096, burst=32)
    assert isinstance(ram, OffchipActRAM) and (ram.depth, ram.lanes, ram.burst) == (4096, 4, 32)
    Fragment.get(ram, None)
    ram = act_ram_for(on[0], ACT, 4, 100)
    assert type(ram) is ActRAM and ram.depth == 100
    Fragment.get(ram, None)


def test_store_for_follows_the_plan():
    """The mask / argmax store of a plan entry: off chip where ``offchip_words > 0`` (VGG-16's
    large ones), else on chip, and on chip for a plan of before the entries (``None``)."""
    from amaranth.lib.fifo import SyncFIFOBuffered

    from fpdeep_map.board import load_board
    from fpdeep_map.mapper import map_network
    from fpdeep_map.network import load_network
    vgg = map_network(load_network("vgg16"), load_board("vc709"), 15, max_row_lanes=1)
    seg = next(s for s in vgg.node_plans[4].segments if s.layer == "conv2_2")
    store = store_for(seg.mask_store, seg.mask_store.width, 1000, burst=32)
    assert type(store) is OffchipFIFO and (store.width, store.depth, store.burst) == (128, 1000,
                                                                                       32)
    Fragment.get(store, None)
    tiny = map_network(load_network("tiny"), load_board("vc709"), 1, max_row_lanes=1)
    seg = next(s for s in tiny.node_plans[0].segments if s.layer == "conv2")
    for entry in (seg.arg_store, None):
        fifo = store_for(entry, 16, 64)
        assert type(fifo) is SyncFIFOBuffered and (fifo.width, fifo.depth) == (16, 64)
        Fragment.get(fifo, None)


# -- Verilog ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("lanes, depth, burst", [(1, 1, 2), (4, 300, 16)])
def test_verilator_lint(lanes, depth, burst, tmp_path):
    verilator_lint(OffchipActRAM(fmt=ACT, lanes=lanes, depth=depth, burst=burst),
                   "offchip_act_ram", tmp_path)


def test_verilator_lint_of_a_store(tmp_path):
    verilator_lint(OffchipFIFO(shape=256, depth=300, burst=16), "offchip_fifo", tmp_path)


def test_memory_controller_black_box_in_a_platform_build():
    """On a board the burst port goes to ``Instance("fpdeep_mem_ctrl", ...)`` with the
    documented port names; without a platform the black box refuses to elaborate."""
    from amaranth.hdl import Elaboratable, Module
    from amaranth.lib import wiring

    from boards.platforms import platform_for
    from fpdeep_hw.memory.offchip_act_ram import MEMORY_CONTROLLER, MemoryControllerBlackBox

    class Top(Elaboratable):
        def __init__(self):
            self.ram = OffchipActRAM(fmt=ACT, lanes=4, depth=4096, burst=16, addr_width=28)
            self.ctrl = MemoryControllerBlackBox(64, 28)

        def elaborate(self, platform):
            m = Module()
            m.submodules.ram, m.submodules.ctrl = self.ram, self.ctrl
            wiring.connect(m, self.ram.mem, self.ctrl.port)
            # loop the Act-RAM's output back into its input (keeps every port driven)
            wiring.connect(m, self.ram.o, self.ram.i)
            return m

    plan = platform_for("vc709")().build(Top(), name="top", do_build=False)
    text = plan.files["top.v"]
    assert f"{MEMORY_CONTROLLER} ctrl (" in text
    for port in ("aw_valid", "aw_ready", "aw_data", "w_valid", "w_ready", "w_data", "b_valid",
                 "b_ready", "ar_valid", "ar_ready", "ar_data", "r_valid", "r_ready", "r_data"):
        assert f".{port}(" in text, port
    box = MemoryControllerBlackBox(64, 28)
    with pytest.raises(ValueError, match=r"^MemoryControllerBlackBox is only built for a "
                                         r"platform; in simulation use sim.dram_model.DRAMModel$"):
        Fragment.get(box, None)
