# amaranth: UnusedElaboratable=no
"""Tests of the weight update (:mod:`fpdeep_hw.node.update`) against
:func:`sim.golden.layers.update` (master copy, working weights, overflow count).

Several mini-batches of averaged gradients arrive with random stalls; the gate's ``start`` pulse
comes at a random time (before, during or after the gradients); ``wr`` is drained with random
stalls. Checked: every working-weight set written (in order, per update), no write before its
``start``, one ``done`` per update on the last write, the master memory after the run, the
overflow count, the latency to the cycle.
"""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from fpdeep_hw.node.fp_layer import layer_geometry
from fpdeep_hw.node.update import OffchipWeightUpdate, WeightUpdate
from fpdeep_map.board import load_board
from fpdeep_map.mapper import map_network
from fpdeep_map.network import load_network
from fpdeep_map.numerics import NumericsConfig
from sim.golden.layers import lr_to_q, update, working_weight
from sim.lint import verilator_lint
from sim.streams import payload_to_python, stream_source
from sim.waves import run_simulation

NUM = NumericsConfig()


def shape_of(net, layer):
    network = load_network(net)
    plan = map_network(network, load_board("sim-node"), 1, batch=2, max_row_lanes=1)
    seg = next(s for s in plan.node_plans[0].segments if s.layer == layer)
    geo = layer_geometry(seg, network)
    return geo.kernel, geo.p * geo.s, geo.weight_sets


def random_case(rng, kernel, lanes, depth, batches, *, big=False):
    shape = (depth, lanes, kernel, kernel)
    m = NUM.master
    if big:     # masters near the ends, large gradients: every saturation path is hit
        init = np.array([rng.choice([m.max_int - rng.randrange(1 << 12),
                                     m.min_int + rng.randrange(1 << 12), rng.randint(-9, 9)])
                         for _ in range(int(np.prod(shape)))], dtype=np.int64).reshape(shape)
        grads = [np.array([rng.choice([-(1 << 15), (1 << 15) - 1, rng.randint(-99, 99)])
                           for _ in range(int(np.prod(shape)))],
                          dtype=np.int64).reshape(shape) for _ in range(batches)]
    else:
        init = np.array([rng.randint(-(1 << 21), 1 << 21) for _ in range(int(np.prod(shape)))],
                        dtype=np.int64).reshape(shape)
        grads = [np.array([rng.randint(-(1 << 13), 1 << 13) for _ in range(int(np.prod(shape)))],
                          dtype=np.int64).reshape(shape) for _ in range(batches)]
    return init, grads


def expected(init, grads, lr_q):
    master, writes, overflow = init, [], 0
    for g in grads:
        master, w, ovf = update(master, g, lr_q, NUM)
        overflow += ovf
        writes.append([{"addr": a, "data": w[a].tolist()} for a in range(len(w))])
    return master, writes, overflow


def run(dut, grads, rng, *, p_in=0.3, p_out=0.3, start_delays=None, waves="update",
        dram=None):
    """Simulate; returns (writes per update, cycles of start/done/first write, final master,
    overflow count). ``dram``: the keywords of the :class:`sim.dram_model.DRAMModel` serving
    an :class:`OffchipWeightUpdate`'s port (latency, words_per_cycle, p_stall)."""
    depth = dut.depth
    model = None
    if isinstance(dut, OffchipWeightUpdate):
        from sim.dram_model import DRAMModel
        model = DRAMModel(dut.mem, burst=dut.burst, words=dut.base + dut.ext_words,
                          seed=rng.randrange(1 << 30), **(dram or {}))
        model.load(dut.init_words())
    words = [{"addr": a, "data": g[a].tolist(), "last": int(a == depth - 1)}
             for g in grads for a in range(depth)]
    rec = {"writes": [], "start": [], "done": [], "first_wr": []}
    if start_delays is None:
        start_delays = [rng.randrange(0, 3 * depth) for _ in grads]

    async def gate(ctx):
        # update M may start after the previous update's done: a pulse after a random delay
        cycle = 0
        for m_, delay in enumerate(start_delays):
            while len(rec["done"]) < m_:
                await ctx.tick()
                cycle += 1
            for _ in range(delay):
                await ctx.tick()
                cycle += 1
            ctx.set(dut.start, 1)
            rec["start"].append(cycle)
            await ctx.tick()
            cycle += 1
            ctx.set(dut.start, 0)

    async def sink(ctx):
        cycle = 0
        cur = []
        while len(rec["writes"]) < len(grads):
            ready = rng.random() >= p_out
            ctx.set(dut.wr.ready, int(ready))
            _, _, valid, payload, done = await ctx.tick().sample(
                dut.wr.valid, dut.wr.payload, dut.done)
            if valid and not cur and (not rec["first_wr"] or len(rec["first_wr"]) ==
                                      len(rec["writes"])):
                rec["first_wr"].append(cycle)
            if valid and ready:
                assert len(rec["start"]) > len(rec["writes"]), "write before start"
                cur.append(payload_to_python(payload))
            if done:
                rec["done"].append(cycle)
                assert cur and cur[-1]["addr"] == depth - 1
                rec["writes"].append(cur)
                cur = []
            cycle += 1
        for _ in range(4):
            await ctx.tick()
        rec["overflow"] = ctx.get(dut.overflow)
        if model is not None:
            rec["master"] = dut.master_sets(model.storage)
            rec["dram"] = model
            return
        master = np.zeros((depth, dut.lanes, dut.kernel, dut.kernel), dtype=np.int64)
        index = [(s, ky, kx) for s in range(dut.lanes) for ky in range(dut.kernel)
                 for kx in range(dut.kernel)]
        for k, (s, ky, kx) in enumerate(index):
            for a in range(depth):
                master[a, s, ky, kx] = dut.master_of(ctx, k, a)
        rec["master"] = master

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.grad, words, rng=random.Random(rng.random()),
                                    p_stall=p_in), background=True)
    sim.add_testbench(gate, background=True)
    if model is not None:
        sim.add_testbench(model.run, background=True)
    sim.add_testbench(sink)
    run_simulation(sim, waves, traces=[dut])
    return rec


def check(kernel, lanes, depth, batches, seed, waves, *, big=False, lr=0.05, offchip=None,
          dram=None):
    """``offchip``: an :class:`OffchipWeightUpdate` with these keywords (burst, prefetch,
    base), its memory a :class:`DRAMModel` with ``dram``."""
    rng = random.Random(seed)
    init, grads = random_case(rng, kernel, lanes, depth, batches, big=big)
    lr_q = lr_to_q(lr)
    if offchip is None:
        dut = WeightUpdate(numerics=NUM, kernel=kernel, lanes=lanes, depth=depth, lr_q=lr_q,
                           init=init)
    else:
        dut = OffchipWeightUpdate(numerics=NUM, kernel=kernel, lanes=lanes, depth=depth,
                                  lr_q=lr_q, init=init, **offchip)
    master, writes, overflow = expected(init, grads, lr_q)
    rec = run(dut, grads, rng, waves=waves, dram=dram)
    assert rec["writes"] == writes
    assert np.array_equal(rec["master"], master)
    assert rec["overflow"] == overflow
    return overflow


def test_rejects_bad_arguments():
    with pytest.raises(TypeError, match=r"^WeightUpdate numerics must be a NumericsConfig, "
                                        r"not None$"):
        WeightUpdate(numerics=None, kernel=3, lanes=1, depth=4, lr_q=100)
    with pytest.raises(ValueError, match=r"^WeightUpdate depth must be a positive integer, "
                                         r"not 0$"):
        WeightUpdate(numerics=NUM, kernel=3, lanes=1, depth=0, lr_q=100)
    with pytest.raises(ValueError, match=r"^WeightUpdate learning rate must be an integer in "
                                         r"1\.\.65535 \(16 fractional bits\), not 65536$"):
        WeightUpdate(numerics=NUM, kernel=3, lanes=1, depth=4, lr_q=65536)
    with pytest.raises(ValueError, match=r"^WeightUpdate init must have shape \(depth, lanes, "
                                         r"kernel, kernel\) = \(4, 1, 3, 3\), not \(4, 3, 3\)$"):
        WeightUpdate(numerics=NUM, kernel=3, lanes=1, depth=4, lr_q=1,
                     init=np.zeros((4, 3, 3), dtype=int))
    with pytest.raises(ValueError, match=r"^WeightUpdate init values must fit in 24 signed "
                                         r"bits$"):
        WeightUpdate(numerics=NUM, kernel=3, lanes=1, depth=4, lr_q=1,
                     init=np.full((4, 1, 3, 3), 1 << 23))


@pytest.mark.parametrize("net,layer", [("tiny", "conv2"), ("digits", "conv1")])
def test_plan_shapes(net, layer, waves):
    kernel, lanes, depth = shape_of(net, layer)
    check(kernel, lanes, depth, 3, 11, waves)


def test_fc_shape(waves):
    kernel, lanes, depth = shape_of("tiny", "fc4")
    assert (kernel, lanes, depth) == (1, 2, 640)
    check(kernel, lanes, depth, 2, 12, waves)


@pytest.mark.parametrize("depth", [1, 2])
def test_saturation_and_tiny_depth(depth, waves):
    """Masters at the ends of the range, extreme gradients, lr near 1: every clamp counted."""
    assert check(3, 3, depth, 4, 13 + depth, waves, big=True, lr=0.99) > 0


def test_latency(waves):
    """Gradients done long before ``start``: the first write is valid LATENCY cycles after the
    pulse; without stalls one set per cycle, ``done`` on the last."""
    rng = random.Random(3)
    init, grads = random_case(rng, 3, 2, 8, 1)
    dut = WeightUpdate(numerics=NUM, kernel=3, lanes=2, depth=8, lr_q=lr_to_q(0.1), init=init)
    rec = run(dut, grads, rng, p_in=0, p_out=0, start_delays=[40], waves=waves)
    assert rec["first_wr"][0] - rec["start"][0] == dut.latency == 3
    assert rec["done"][0] - rec["first_wr"][0] == 8 - 1
    assert rec["writes"] == expected(init, grads, lr_to_q(0.1))[1]


def test_initial_working_weights():
    """The golden working weight of the initial masters (what the LPRAMs are loaded with) is the
    same rounding the write-back applies."""
    init = np.array([[[[(1 << 7) + 1, -(1 << 7)]]]])
    w, _ = working_weight(init, NUM)
    assert w.tolist() == [[[[1, 0]]]]     # half up: 0.5 + 2**-20 LSB -> 1, -0.5 LSB -> 0


def test_lint(tmp_path):
    verilator_lint(WeightUpdate(numerics=NUM, kernel=3, lanes=2, depth=16, lr_q=3277),
                   "weight_update", tmp_path)


def test_pg_gate_update_chain(waves):
    """tiny conv1 on one node: PGLayer -> (LGB) -> WeightUpdate, with the VersionGate between
    them (FP strobes from a testbench that obeys ``fp_go``): two mini-batches of 2 images; the
    working weights written equal the golden model's update of the averaged PG gradients, and
    no write happens before FP of image (M+1)B + D - 1 is done."""
    from amaranth.hdl import Elaboratable, Module

    from fpdeep_hw.node.pg_layer import PGLayer
    from fpdeep_hw.node.version_gate import VersionGate
    from tests.hw.test_pg_layer import golden as pg_golden
    from tests.hw.test_pg_layer import make_data

    network = load_network("tiny")
    plan = map_network(network, load_board("sim-node"), 1, batch=2, max_row_lanes=1)
    seg = plan.node_plans[0].segments[0]
    lag = int(seg.act_ram_images)
    B, images = plan.batch, 4
    pg = PGLayer(seg, network, plan.numerics, batch=B)
    geo = pg.geometry
    rng = random.Random(21)
    init = np.array([rng.randint(-(1 << 20), 1 << 20)
                     for _ in range(pg.weight_sets * geo.p * geo.s * 9)]).reshape(
        pg.weight_sets, geo.p * geo.s, 3, 3)
    lr_q = lr_to_q(0.125)
    upd = WeightUpdate(numerics=plan.numerics, kernel=3, lanes=geo.p * geo.s,
                       depth=pg.weight_sets, lr_q=lr_q, init=init)
    gate = VersionGate(batch=B, lag=lag, eb=False)

    class Top(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            m.submodules.pg, m.submodules.upd, m.submodules.gate = pg, upd, gate
            from amaranth.lib import wiring
            wiring.connect(m, pg.grad, upd.grad)
            m.d.comb += [upd.start.eq(gate.update_start), gate.update_done.eq(upd.done),
                         gate.pg_done.eq(pg.pg_done)]
            return m

    acts, errs, a_words, e_words = make_data(pg, images, rng)
    _, avgs, _, _ = pg_golden(pg, acts, errs, plan.numerics)
    master, writes = init, []
    for b in range(images // B):
        avg = np.array([w["data"] for w in avgs[b * pg.weight_sets:(b + 1) * pg.weight_sets]])
        master, w, _ = update(master, avg, lr_q, plan.numerics)
        writes.append([{"addr": a, "data": w[a].tolist()} for a in range(len(w))])

    rec = {"writes": [], "fp_done": [], "done": []}
    sim = Simulator(Top())
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(pg.a, a_words, rng=random.Random(1), p_stall=0.2),
                      background=True)
    sim.add_testbench(stream_source(pg.e, e_words, rng=random.Random(2), p_stall=0.2),
                      background=True)

    async def fp(ctx):
        # FP of this layer: one image every 50..150 cycles while fp_go allows; flush at the end
        cycle, started = 0, 0
        while True:
            if started == images + lag:
                ctx.set(gate.flush, 1)
            if started < images + lag and ctx.get(gate.fp_go) and rng.random() < 0.02:
                ctx.set(gate.fp_start, 1)
                ctx.set(gate.fp_done, 1)     # (start and done in one cycle: the gate counts both)
                rec["fp_done"].append(cycle)
                started += 1
            await ctx.tick()
            ctx.set(gate.fp_start, 0)
            ctx.set(gate.fp_done, 0)
            cycle += 1

    async def sink(ctx):
        cycle, cur = 0, []
        while len(rec["writes"]) < images // B:
            ctx.set(upd.wr.ready, 1)
            _, _, valid, payload, done = await ctx.tick().sample(upd.wr.valid, upd.wr.payload,
                                                                 upd.done)
            if valid:
                M = len(rec["writes"])
                need = (M + 1) * B + lag - 1
                assert len(rec["fp_done"]) > need or len(rec["fp_done"]) == images + lag, \
                    f"update {M} written before FP of image {need}"
                cur.append(payload_to_python(payload))
            if done:
                rec["writes"].append(cur)
                rec["done"].append(cycle)
                cur = []
            cycle += 1

    sim.add_testbench(fp, background=True)
    sim.add_testbench(sink)
    run_simulation(sim, waves, traces=[pg, upd, gate])
    assert rec["writes"] == writes


# ---- the master copy off chip (OffchipWeightUpdate) ---------------------------------------------

#: memories: a fast one, a slow one with random latency and half a word per cycle, one that
#: stalls every port at random
DRAMS = {
    "fast": dict(latency=3, words_per_cycle=2),
    "slow": dict(latency=(10, 40), words_per_cycle=0.5),
    "stalls": dict(latency=(1, 12), words_per_cycle=1.5, p_stall=0.3),
}


@pytest.mark.parametrize("dram", sorted(DRAMS))
@pytest.mark.parametrize("depth,burst,prefetch,base", [
    (8, 4, 2, 0),       # whole bursts
    (11, 4, 1, 8),      # padding words, one burst read ahead, a region not at 0
    (1, 2, 2, 0),       # one set, one padded burst
    (5, 8, 3, 16),      # fewer sets than a burst
])
def test_offchip_bit_exact(depth, burst, prefetch, base, dram, waves):
    """Three mini-batches, random stalls on ``grad`` and ``wr``, ``start`` at random times:
    every working-weight set, the master copy left in the memory and the overflow count equal
    the golden model's, as the on-chip update's do."""
    check(3, 2, depth, 3, 31 + depth + burst, waves,
          offchip=dict(burst=burst, prefetch=prefetch, base=base), dram=DRAMS[dram])


@pytest.mark.parametrize("fold,dram", [(2, "stalls"), (3, "slow"), (4, "fast")])
@pytest.mark.parametrize("depth,sets,prefetch,base_sets", [(8, 4, 2, 0), (11, 4, 1, 8)])
def test_offchip_folded_bit_exact(fold, dram, depth, sets, prefetch, base_sets, waves):
    """Folded (``fold`` memory words, rows, per set; bursts of ``sets`` sets): three
    mini-batches under random stalls on ``grad``, ``wr`` and the memory, the same sets,
    master copy and overflow count as the golden model (the master copy read back from the
    memory's rows)."""
    check(3, 2, depth, 3, 53 + depth + fold, waves,
          offchip=dict(burst=sets * fold, prefetch=prefetch, base=base_sets * fold, fold=fold),
          dram=DRAMS[dram])


def test_offchip_folded_saturation(waves):
    """A clamp is counted once per set although the new master waits ``fold`` cycles."""
    assert check(3, 3, 3, 4, 41, waves, big=True, lr=0.99, offchip=dict(burst=6, fold=3),
                 dram=DRAMS["stalls"]) > 0


def test_offchip_rows_in_memory():
    """A set is ``fold`` memory words, its low bits first, the last row padded with zeros;
    ``master_sets`` reads the sets back from the rows."""
    rng = random.Random(9)
    init, _ = random_case(rng, 3, 2, 5, 1)
    kw = dict(numerics=NUM, kernel=3, lanes=2, depth=5, lr_q=100, init=init, base=10)
    whole = OffchipWeightUpdate(**kw, burst=2)
    dut = OffchipWeightUpdate(**kw, burst=10, fold=5)
    assert (dut.set_width, dut.word_width, len(dut.mem.r.payload)) == (432, 87, 87)
    assert (dut.burst_sets, dut.ext_bursts, dut.ext_words, dut.ext_sets) == (2, 3, 30, 6)
    sets, rows = whole.init_words(), dut.init_words()
    assert sorted(rows) == list(range(10, 40))
    for a in range(5):
        v = sets[10 + a]
        assert [rows[10 + 5 * a + r] for r in range(5)] == [(v >> (87 * r)) & ((1 << 87) - 1)
                                                           for r in range(5)]
        assert rows[10 + 5 * a + 4] >> (432 - 4 * 87) == 0
    assert all(rows[a] == 0 for a in range(35, 40))          # the padding set
    assert np.array_equal(dut.master_sets(rows), init)
    assert np.array_equal(whole.master_sets(sets), init)


def test_offchip_saturation(waves):
    assert check(3, 3, 3, 4, 41, waves, big=True, lr=0.99, offchip=dict(burst=2),
                 dram=DRAMS["stalls"]) > 0


def test_offchip_plan_shape(waves):
    kernel, lanes, depth = shape_of("tiny", "conv2")
    check(kernel, lanes, depth, 2, 43, waves, offchip=dict(burst=16, prefetch=2),
          dram=DRAMS["slow"])


def test_offchip_latency_and_traffic(waves):
    """Gradients long before ``start``: the first write LATENCY (2) cycles after the pulse, one
    set per cycle, ``done`` on the last; per update the memory reads every burst twice and
    writes it once (2 x 3 bursts read, 3 written for 10 sets in bursts of 4)."""
    rng = random.Random(5)
    init, grads = random_case(rng, 3, 2, 10, 2)
    dut = OffchipWeightUpdate(numerics=NUM, kernel=3, lanes=2, depth=10, lr_q=lr_to_q(0.1),
                              init=init, burst=4, prefetch=3)
    rec = run(dut, grads, rng, p_in=0, p_out=0, start_delays=[200, 200], waves=waves,
              dram=dict(latency=20, words_per_cycle=2))
    assert dut.latency == 2
    for m_ in range(2):
        assert rec["first_wr"][m_] - rec["start"][m_] == 2
        assert rec["done"][m_] - rec["first_wr"][m_] == 10 - 1
    assert rec["writes"] == expected(init, grads, lr_to_q(0.1))[1]
    model = rec["dram"]
    # two updates (each a pass-1 and a pass-2 sweep) and the third mini-batch's read-ahead
    assert model.bursts_written == 2 * 3
    assert model.bursts_read >= 4 * 3 and model.bursts_read <= 5 * 3


def test_offchip_rejects_bad_arguments():
    kw = dict(numerics=NUM, kernel=3, lanes=1, depth=4, lr_q=100)
    with pytest.raises(ValueError, match=r"^OffchipWeightUpdate burst must be an integer >= 2, "
                                         r"not 1$"):
        OffchipWeightUpdate(**kw, burst=1)
    with pytest.raises(ValueError, match=r"^OffchipWeightUpdate base must be a multiple of the "
                                         r"burst \(4\), not 6$"):
        OffchipWeightUpdate(**kw, burst=4, base=6)
    with pytest.raises(ValueError, match=r"^OffchipWeightUpdate addr_width 3 cannot address "
                                         r"word 11$"):
        OffchipWeightUpdate(**kw, burst=4, base=8, addr_width=3)
    with pytest.raises(ValueError, match=r"^OffchipWeightUpdate burst 4 is not a multiple of "
                                         r"the fold \(3\): a burst holds whole sets$"):
        OffchipWeightUpdate(**kw, burst=4, fold=3)
    dut = OffchipWeightUpdate(**kw, burst=4)
    assert (dut.ext_words, dut.word_width, len(dut.mem.w.payload)) == (4, 9 * 24, 9 * 24)
    with pytest.raises(AttributeError, match="external memory"):
        dut.banks
    with pytest.raises(ValueError, match=r"^OffchipWeightUpdate fold must be an integer >= 1, "
                                         r"not 0$"):
        OffchipWeightUpdate(**kw, fold=0)
    with pytest.raises(ValueError, match=r"^OffchipWeightUpdate fold 217 is more than the "
                                         r"set's 216 bits$"):
        OffchipWeightUpdate(**kw, burst=217 * 2, fold=217)


def test_offchip_storage():
    """No master memory inside: the master copy is only in the external memory; the RTL's
    memories (``fpdeep_hw.build.rtl_memories``) are the two FIFOs of words in flight,
    ``prefetch x burst`` read ahead and two bursts to write."""
    from amaranth.back import rtlil

    from fpdeep_hw.build import rtl_memories
    dut = OffchipWeightUpdate(numerics=NUM, kernel=3, lanes=2, depth=300, lr_q=100, burst=8,
                              prefetch=3)
    mems = sorted((w, d) for _mod, _mem, w, d, *_ in rtl_memories(rtlil.convert(dut)))
    # (SyncFIFOBuffered keeps one word of its depth in its output register)
    assert mems == [(18 * 24, 2 * 8 - 1), (18 * 24, 3 * 8 - 1)], mems
    # folded by 4: four rows of a quarter set per set, bursts of 8 sets (32 words)
    dut = OffchipWeightUpdate(numerics=NUM, kernel=3, lanes=2, depth=300, lr_q=100, burst=32,
                              prefetch=3, fold=4)
    mems = sorted((w, d) for _mod, _mem, w, d, *_ in rtl_memories(rtlil.convert(dut)))
    assert mems == [(18 * 6, 4 * 2 * 8 - 1), (18 * 6, 4 * 3 * 8 - 1)], mems


@pytest.mark.parametrize("depth,burst,prefetch,fold", [
    (16, 4, 2, 1), (3, 4, 2, 1), (1, 2, 1, 1), (16, 16, 2, 4), (3, 20, 2, 5)])
def test_offchip_lint(depth, burst, prefetch, fold, tmp_path):
    """Several bursts; one burst (counters of one value); the smallest FIFOs; folded FIFOs
    (a fold that does not divide the set's 432 bits)."""
    verilator_lint(OffchipWeightUpdate(numerics=NUM, kernel=3, lanes=2, depth=depth, lr_q=3277,
                                       burst=burst, prefetch=prefetch, addr_width=8, fold=fold),
                   "offchip_weight_update", tmp_path)


def _tail(dut, latency):
    """No stalls, ``start`` pending from the beginning, the read-ahead done: cycles from the
    last gradient word taken to the first ``wr`` word, and the cycles of each pass (takes of
    pass 1, ``wr`` words of pass 2)."""
    from sim.dram_model import DRAMModel
    depth = dut.depth
    zero = [[[0] * dut.kernel] * dut.kernel] * dut.lanes
    rec = {}

    async def tb(ctx):
        ctx.set(dut.start, 1)
        ctx.set(dut.wr.ready, 1)
        for _ in range(4 * latency + 200):
            await ctx.tick()
        ctx.set(dut.start, 0)
        t, a, takes, wrs = 0, 0, [], []
        ctx.set(dut.grad.valid, 1)
        ctx.set(dut.grad.payload, {"addr": 0, "data": zero, "last": int(depth == 1)})
        while True:
            _, _, v, r, done, wv = await ctx.tick().sample(
                dut.grad.valid, dut.grad.ready, dut.done, dut.wr.valid)
            if v and r:
                takes.append(t)
                a += 1
                ctx.set(dut.grad.valid, int(a < depth))
                ctx.set(dut.grad.payload, {"addr": min(a, depth - 1), "data": zero,
                                           "last": int(a == depth - 1)})
            if wv:
                wrs.append(t)
            if done:
                break
            t += 1
        rec.update(gap=wrs[0] - takes[-1], pass1=takes[-1] - takes[0] + 1,
                   pass2=wrs[-1] - wrs[0] + 1)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    if isinstance(dut, OffchipWeightUpdate):
        model = DRAMModel(dut.mem, burst=dut.burst, words=dut.base + dut.ext_words,
                          latency=latency, words_per_cycle=2)
        model.load(dut.init_words())
        sim.add_testbench(model.run, background=True)
    sim.add_testbench(tb)
    sim.run()
    return rec


@pytest.mark.parametrize("depth,latency,burst", [
    (64, 20, 16), (640, 20, 16), (70, 20, 16), (65, 10, 16), (64, 20, 8), (5, 7, 4)])
def test_offchip_update_cycles(depth, latency, burst):
    """The mapper's ``costs.offchip_update_cycles``: from the last gradient word to the first
    working-weight set an off-chip update takes ``2 * latency + burst + 3 + padding`` cycles
    more than the on-chip one; both passes run at one set per cycle (memory of two words per
    cycle, ``prefetch`` 4)."""
    from fpdeep_map.costs import offchip_update_cycles
    kw = dict(numerics=NUM, kernel=3, lanes=2, depth=depth, lr_q=100)
    on = _tail(WeightUpdate(**kw), latency)
    off = _tail(OffchipWeightUpdate(**kw, burst=burst, prefetch=4), latency)
    assert on == {"gap": 5, "pass1": depth, "pass2": depth}
    assert (off["pass1"], off["pass2"]) == (depth, depth)
    assert off["gap"] - on["gap"] == offchip_update_cycles(depth, latency, burst)


@pytest.mark.parametrize("depth,latency,burst", [(64, 20, 16), (70, 20, 16), (5, 7, 4),
                                                 (1, 9, 2)])
@pytest.mark.parametrize("fold", [2, 5])
def test_offchip_folded_update_cycles(depth, latency, burst, fold):
    """Folded (a set in ``fold`` memory words, bursts of ``burst`` sets): both passes give a
    set every ``fold`` cycles exactly, and the tail is ``costs.offchip_update_cycles(...,
    fold=fold)``, to the cycle."""
    from fpdeep_map.costs import offchip_update_cycles
    kw = dict(numerics=NUM, kernel=3, lanes=2, depth=depth, lr_q=100)
    off = _tail(OffchipWeightUpdate(**kw, burst=burst * fold, prefetch=4, fold=fold), latency)
    assert off["pass1"] == off["pass2"] == fold * (depth - 1) + 1
    assert off["gap"] - 5 == offchip_update_cycles(depth, latency, burst, fold=fold)
