# amaranth: UnusedElaboratable=no
"""Tests of the off-chip gradient buffer (:mod:`fpdeep_hw.memory.offchip_grad_buffer`) against
:class:`sim.golden.grad_buffer.GradBufferModel`, with :class:`sim.dram_model.DRAMModel` as its
memory: random data, random stalls on ``i``, ``o`` and every channel of the memory, random
memory latencies. The memory model itself asserts that no burst is read before its write was
acknowledged and that no burst is overwritten before its read was served."""

import random

import numpy as np
import pytest

from amaranth.sim import Simulator

from fpdeep_hw.memory.grad_buffer import GradBuffer
from fpdeep_hw.memory.offchip_grad_buffer import OffchipGradBuffer
from fpdeep_map.numerics import FixedFormat
from sim.dram_model import DRAMModel
from sim.golden.grad_buffer import GradBufferModel
from sim.lint import verilator_lint
from sim.streams import stream_sink, stream_source
from sim.waves import run_simulation

G = FixedFormat(16, 12)


def make(*, kernel=3, lanes=1, depth=4, batch=4, in_fmt=G, out_fmt=G, acc_width=24, fold=1,
         burst=4, base=0, prefetch=2):
    dut = OffchipGradBuffer(in_fmt=in_fmt, out_fmt=out_fmt, acc_width=acc_width, kernel=kernel,
                            lanes=lanes, depth=depth, batch=batch, fold=fold, burst=burst,
                            base=base, prefetch=prefetch)
    model = GradBufferModel(depth=depth, lanes=lanes, kernel=kernel, in_fmt=in_fmt,
                            out_fmt=out_fmt, acc_width=acc_width, batch=batch)
    return dut, model


def images(rng, *, batches, batch, depth, lanes, kernel, width, big=False):
    """Contributions ``(addr, grads, batch_done)``: ``batches`` mini-batches of ``batch``
    images, each image every address in order (a PG's drain); ``big`` draws values near the
    range ends, one sign per mini-batch, so the accumulators run into their limits."""
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    words = []
    for b in range(batches):
        for img in range(batch):
            for a in range(depth):
                if big:
                    major = [hi, hi - rng.randrange(64)] if b % 2 == 0 else \
                        [lo, lo + rng.randrange(64)]
                    vals = [rng.choice(major * 4 + [0]) for _ in range(lanes * kernel ** 2)]
                else:
                    vals = [rng.randint(lo, hi) for _ in range(lanes * kernel ** 2)]
                words.append((a, np.array(vals, dtype=np.int64).reshape(lanes, kernel, kernel),
                              img == batch - 1 and a == depth - 1))
    return words


def simulate(dut, words, *, p_in, p_out, p_mem=0.0, latency=20, words_per_cycle=2, seed=0,
             waves="offchip_grad_buffer"):
    n_out = dut.depth * sum(1 for *_, done in words if done)
    out, counts, taken = [], {}, []
    dram = DRAMModel(dut.mem, burst=dut.burst, words=dut.base + dut.ext_words, latency=latency,
                     words_per_cycle=words_per_cycle, p_stall=p_mem, seed=seed + 7)
    sink = stream_sink(dut.o, out, count=n_out, rng=random.Random(seed + 1), p_stall=p_out,
                       max_cycles=400 * (len(words) + n_out) * dut.fold + 2000)

    async def consumer(ctx):
        await sink(ctx)
        for _ in range(200):            # the last drain's padding rows (never given out)
            await ctx.tick()
        counts["acc"] = ctx.get(dut.acc_overflow)
        counts["out"] = ctx.get(dut.out_overflow)

    async def monitor(ctx):
        cycle = 0
        async for _, _, v, r in ctx.tick().sample(dut.i.valid, dut.i.ready):
            if v and r:
                taken.append(cycle)
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(
        dut.i, [{"addr": a, "data": g.tolist(), "batch_done": int(d)} for a, g, d in words],
        rng=random.Random(seed), p_stall=p_in), background=True)
    sim.add_testbench(dram.run, background=True)
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(consumer)
    run_simulation(sim, waves, traces=[dut])
    return out, counts, dram, taken


@pytest.mark.parametrize("kernel,lanes,depth,batch,fold,burst,prefetch,p", [
    (3, 1, 5, 3, 1, 4, 2, 0.3),      # 5 sets in bursts of 4: a padding burst's 3 sets
    (3, 2, 4, 4, 3, 6, 2, 0.3),      # 18 elements in 3 rows of 6, 2 sets per burst
    (1, 1, 1, 2, 1, 2, 1, 0.3),      # one address (and one padding set), one burst ahead
    (3, 1, 3, 1, 1, 4, 2, 0.3),      # mini-batches of 1: write, then drain
    (3, 3, 2, 2, 27, 27, 2, 0.2),    # a row per element: 27 rows per set, a set per burst
    (5, 1, 7, 3, 2, 8, 3, 0.5),      # rows of 13 (the last 12), heavy stalls everywhere
    (3, 1, 6, 2, 1, 2, 4, 0.0),      # no stalls
])
def test_random_stalls(kernel, lanes, depth, batch, fold, burst, prefetch, p, waves):
    """Three mini-batches: every average, in order, and both overflow counts as the golden
    model's; the memory read and written once per set, row and pass: ``B`` passes of writes
    (the batch's images) and ``B`` of reads (images 2 .. B and the drain) per mini-batch."""
    rng = random.Random(kernel * 1000 + lanes * 100 + depth * 10 + fold)
    dut, model = make(kernel=kernel, lanes=lanes, depth=depth, batch=batch, fold=fold,
                      burst=burst, prefetch=prefetch, base=2 * burst)
    assert dut.row_lanes == -(-lanes * kernel * kernel // fold)
    words = images(rng, batches=3, batch=batch, depth=depth, lanes=lanes, kernel=kernel,
                   width=G.width)
    out, counts, dram, _ = simulate(dut, words, p_in=p, p_out=p, p_mem=p, latency=(3, 40),
                                    seed=depth)
    assert len(out) == 3 * depth
    assert out == model.run(words)
    assert counts == {"acc": model.acc_overflow, "out": model.out_overflow}
    assert dram.words_written == dram.words_read == 3 * batch * dut.ext_words
    assert min(dram.storage) == dut.base


@pytest.mark.parametrize("batch", [4, 3])
def test_saturation_counted(batch, waves):
    """Narrow accumulators and a narrow output format, rows of 2: both saturations happen,
    counted once per element as the golden model counts them."""
    rng = random.Random(batch)
    dut, model = make(kernel=3, lanes=1, depth=3, batch=batch, acc_width=17, fold=5, burst=5,
                      out_fmt=FixedFormat(10, 12, "truncate"))
    words = images(rng, batches=2, batch=batch, depth=3, lanes=1, kernel=3, width=G.width,
                   big=True)
    out, counts, _, _ = simulate(dut, words, p_in=0.3, p_out=0.3, p_mem=0.2, seed=batch)
    assert out == model.run(words)
    assert counts == {"acc": model.acc_overflow, "out": model.out_overflow}
    assert model.acc_overflow > 0 and model.out_overflow > 0


def test_pace():
    """No stalls, a memory of one word read and one written per cycle (latency 20), 16-word
    bursts read 4 ahead: within an image a set is taken every ``fold`` cycles (a row per
    cycle), and the second image's sets (read, added, written) at the same pace once the
    reads are ahead."""
    rng = random.Random(3)
    fold, depth = 2, 64
    dut, model = make(kernel=3, lanes=2, depth=depth, batch=2, fold=fold, burst=16, prefetch=4)
    words = images(rng, batches=1, batch=2, depth=depth, lanes=2, kernel=3, width=G.width)
    out, _, _, taken = simulate(dut, words, p_in=0, p_out=0, latency=20, words_per_cycle=2)
    assert out == model.run(words)
    first, second = np.diff(taken[:depth]), np.diff(taken[depth + 8:])
    assert set(first.tolist()) == {fold}
    assert second.mean() <= fold * 1.05, second.tolist()


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"^OffchipGradBuffer burst 4 is not a multiple of the "
                                         r"fold \(3\): a burst holds whole sets$"):
        make(fold=3, burst=4)
    with pytest.raises(ValueError, match=r"^OffchipGradBuffer base must be a multiple of the "
                                         r"burst \(4\), not 6$"):
        make(base=6)
    with pytest.raises(ValueError, match=r"^OffchipGradBuffer prefetch must be an integer >= 1, "
                                         r"not 0$"):
        make(prefetch=0)
    with pytest.raises(ValueError, match=r"^OffchipGradBuffer addr_width 2 cannot address word "
                                         r"7$"):
        OffchipGradBuffer(in_fmt=G, out_fmt=G, acc_width=24, kernel=3, lanes=1, depth=5,
                          batch=2, burst=4, addr_width=2)
    with pytest.raises(ValueError, match=r"^OffchipGradBuffer fold must be an integer in 1..9"):
        make(fold=12, burst=12)


def test_parameters():
    """A :class:`GradBuffer` (same ports) plus ``mem``: words a row of accumulators wide, the
    ring ``depth`` sets in whole bursts."""
    dut, _ = make(kernel=3, lanes=2, depth=5, fold=3, burst=6, prefetch=3)
    assert isinstance(dut, GradBuffer)
    assert set(dut.signature.members) == {"i", "o", "acc_overflow", "out_overflow", "mem"}
    assert (dut.row_lanes, dut.word_width, dut.burst_sets) == (6, 6 * 24, 2)
    assert (dut.ext_bursts, dut.ext_sets, dut.ext_words) == (3, 6, 18)
    assert dut.fifo_depths == (18, 12)
    assert len(dut.mem.r.payload) == 144


@pytest.mark.parametrize("fold,burst", [(1, 4), (3, 6)])
def test_verilator_lint(fold, burst, tmp_path):
    dut, _ = make(kernel=3, lanes=2, depth=5, batch=3, fold=fold, burst=burst)
    verilator_lint(dut, "offchip_grad_buffer", tmp_path)
