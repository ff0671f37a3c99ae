# amaranth: UnusedElaboratable=no
"""Tests of parameter lending: :mod:`fpdeep_hw.node.lend` (Lender, WSFPLayer, WSEBLayer).

The borrowed segment is conv2 of the ``tiny`` network on two ``tiny-test`` nodes
(``map_network(tiny, tiny-test, 2, max_row_lanes=1)``: node 0 holds conv1 and conv2, node 1
keeps all 288 weights of conv2 in its BPRAM). The lender is connected directly to the
borrower's weight-stationary FP and EB engines (no links); the borrower's PG
(``PGLayer(lgb=False)``) streams its per-image gradients back into the lender's BGB. Random
stalls on every stream; several mini-batches; everything compared bit for bit with
:mod:`sim.golden.layers` (``conv_fp``/``fp_output``/``relu``/``maxpool``, ``conv_eb``,
``conv_pg``, ``accumulate_gradient``, ``average_gradient``, ``update``), weights per image
counted against the mapper's prediction.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from amaranth.hdl import Fragment, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from fpdeep_hw import wide
from fpdeep_hw.node.lend import Lender, WSEBLayer, WSFPLayer, WSPGLayer
from fpdeep_hw.node.sets import SetConcat, SetRoute
from fpdeep_hw.node.pg_layer import PGLayer
from fpdeep_map.board import load_board
from fpdeep_map.mapper import map_network
from fpdeep_map.network import load_network
from sim.golden import layers as gl
from sim.lint import verilator_lint
from sim.streams import stream_sink, stream_source
from sim.waves import run_simulation

NET = load_network("tiny")
PLAN = map_network(NET, load_board("tiny-test"), 2, max_row_lanes=1)
SEG = next(s for s in PLAN.node_plans[0].segments if s.layer == "conv2")
NUM = PLAN.numerics


def test_plan_lends_conv2():
    """The plan this test builds: all of conv2's weights kept on node 1 for node 0."""
    assert SEG.weights == SEG.weights_borrowed == 288
    lends = PLAN.node_plans[1].bpram
    assert [(lp.layer, lp.lender, lp.borrower, lp.weights) for lp in lends] == \
        [("conv2", 1, 0, 288)]


def _mapper_words(path):
    return sum(s.words_per_image for link in PLAN.links for s in link.streams
               if s.path == path and s.layer == "conv2")


def _expected(n_images, batch, lag, lr_q, rng):
    """Inputs and golden results of ``n_images`` images through a lent conv2."""
    geom = WSFPLayer(SEG, NET, NUM).geometry
    C, H, W, OC, K = geom.in_channels, geom.height, geom.width, geom.out_channels, geom.kernel
    nrng = np.random.default_rng(rng.randrange(1 << 30))
    master0 = nrng.integers(-(1 << 22), 1 << 22, size=(OC, C, K, K))   # |w| < 0.25
    acts = [nrng.integers(-512, 512, size=(C, H, W)) for _ in range(n_images)]
    errs = [nrng.integers(-1024, 1024, size=(OC, H, W)) for _ in range(n_images)]
    grads = [gl.conv_pg(e, a, K, 1, 1, 1, NUM)[0] for e, a in zip(errs, acts)]
    masters, working = [master0], [gl.working_weight(master0, NUM)[0]]
    upd_ovf = 0
    for mb in range(n_images // batch):
        acc = np.zeros_like(master0)
        for g in grads[mb * batch:(mb + 1) * batch]:
            acc, _ = gl.accumulate_gradient(acc, g, NUM)
        avg, _ = gl.average_gradient(acc, batch, NUM)
        new, w, ovf = gl.update(masters[-1], avg, lr_q, NUM)
        masters.append(new)
        working.append(w)
        upd_ovf += ovf
    fp = {"o": [], "mask": [], "arg": [], "act": [], "out_ovf": 0}
    eb = {"o": [], "out_ovf": 0}
    for i in range(n_images):
        w_fp = working[max(0, (i - lag) // batch)]
        acc, a_ovf = gl.conv_fp(acts[i], w_fp, 1, 1, 1, NUM)
        assert a_ovf == 0
        y, ovf = gl.fp_output(acc, NUM)
        fp["out_ovf"] += ovf
        r, mask = gl.relu(y)
        p, arg = gl.maxpool(r, 2, 2)
        fp["o"] += p.transpose(1, 2, 0).reshape(-1, OC).tolist()
        fp["mask"] += mask.transpose(1, 2, 0).reshape(-1, OC).tolist()
        fp["arg"] += arg.transpose(1, 2, 0).reshape(-1, OC).tolist()
        fp["act"] += acts[i].transpose(1, 2, 0).reshape(-1, C).tolist()
        e_in, ovf = gl.conv_eb(errs[i], working[i // batch], 1, 1, 1, (C, H, W), NUM)
        eb["o"] += e_in.transpose(1, 2, 0).reshape(-1, C).tolist()
        eb["out_ovf"] += ovf
    # updates the version rule lets the lender apply: M needs FP of the images < (M+1)B + D
    # and EB of the images < (M+1)B
    # (flush raised once the borrower's FP is done lets the rest be applied too)
    applied = n_images // batch
    return dict(master0=master0, acts=acts, errs=errs, grads=grads, fp=fp, eb=eb,
                working=working, updates=applied, upd_ovf=upd_ovf, geom=geom)


class _Pair(wiring.Component):
    """Lender and borrower engines connected directly, with transfer counters."""

    def __init__(self, lender, fp, eb, pg):
        self.lender, self.fp, self.eb, self.pg = lender, fp, eb, pg
        super().__init__({})
        self.fp_sets = Signal(32)
        self.eb_sets = Signal(32)
        self.grad_sets = Signal(32)

    def elaborate(self, platform):
        m = Module()
        m.submodules.lender, m.submodules.fp, m.submodules.eb = self.lender, self.fp, self.eb
        m.submodules.pg = pg = self.pg
        wiring.connect(m, self.lender.fp_w, self.fp.w)
        wiring.connect(m, self.lender.eb_w, self.eb.w)
        g = self.lender.grad
        m.d.comb += [g.valid.eq(pg.grad.valid), pg.grad.ready.eq(g.ready),
                     g.payload.addr.eq(pg.grad.payload.addr),
                     g.payload.data.eq(pg.grad.payload.data)]
        for cnt, port in ((self.fp_sets, self.fp.w), (self.eb_sets, self.eb.w),
                          (self.grad_sets, self.lender.grad)):
            with m.If(port.valid & port.ready):
                m.d.sync += cnt.eq(cnt + 1)
        return m


class _Keepers(wiring.Component):
    """Several :class:`Lender` s keeping contiguous set ranges, seen as one lender: their FP and
    EB streams joined by :class:`SetConcat`, the gradients sent back by :class:`SetRoute` (what
    ``NodeTop`` builds when several nodes keep a segment's weights), counters the minimum
    (images, updates) or the sum (overflows) of the parts."""

    def __init__(self, lenders):
        self.parts = lenders
        self.weight_sets = sum(lp.weight_sets for lp in lenders)
        self.weights_per_image = sum(lp.weights_per_image for lp in lenders)
        ref = lenders[0]
        super().__init__({
            "fp_w": Out(ref.fp_w.signature), "eb_w": Out(ref.eb_w.signature),
            "grad": In(ref.grad.signature.flip()), "flush": In(1),
            **{n: Out(32) for n in ("updates", "fp_images", "eb_images", "grad_images",
                                    "bgb_acc_overflow", "bgb_out_overflow",
                                    "update_overflow")}})

    def elaborate(self, platform):
        m = Module()
        counts = [lp.weight_sets for lp in self.parts]
        m.submodules.fp_cat = fcat = SetConcat(self.fp_w.payload.shape(), counts)
        m.submodules.eb_cat = ecat = SetConcat(self.eb_w.payload.shape(), counts)
        m.submodules.route = route = SetRoute(self.grad.payload.shape(),
                                              [lp.sets for lp in self.parts])
        wiring.connect(m, fcat.o, wiring.flipped(self.fp_w))
        wiring.connect(m, ecat.o, wiring.flipped(self.eb_w))
        wiring.connect(m, wiring.flipped(self.grad), route.i)
        for k, lp in enumerate(self.parts):
            m.submodules[f"lender{k}"] = lp
            wiring.connect(m, lp.fp_w, fcat.i[k])
            wiring.connect(m, lp.eb_w, ecat.i[k])
            wiring.connect(m, route.o[k], lp.grad)
            m.d.comb += lp.flush.eq(self.flush)
        for name in ("updates", "fp_images", "eb_images", "grad_images"):
            v = getattr(self.parts[0], name)
            for lp in self.parts[1:]:
                v = Mux(getattr(lp, name) < v, getattr(lp, name), v)
            m.d.comb += getattr(self, name).eq(v)
        for name in ("bgb_acc_overflow", "bgb_out_overflow", "update_overflow"):
            m.d.comb += getattr(self, name).eq(sum(getattr(lp, name) for lp in self.parts))
        return m


def run_pair(n_images, batch, lag, seed, *, p_stall=0.3, waves="lend", ranges=None,
             bpram_fold=1):
    rng = random.Random(seed)
    lr_q = gl.lr_to_q(0.5)
    exp = _expected(n_images, batch, lag, lr_q, rng)
    geom = exp["geom"]
    if ranges is None:
        lender = Lender(SEG, NET, NUM, batch=batch, lr_q=lr_q, lag=lag, master=exp["master0"],
                        bpram_fold=bpram_fold)
    else:
        lender = _Keepers([Lender(SEG, NET, NUM, batch=batch, lr_q=lr_q, lag=lag,
                                  master=exp["master0"], sets=r) for r in ranges])
    fp, eb = WSFPLayer(SEG, NET, NUM), WSEBLayer(SEG, NET, NUM)
    pg = WSPGLayer(SEG, NET, NUM, batch=batch)
    dut = _Pair(lender, fp, eb, pg)
    OC, C = geom.out_channels, geom.in_channels
    gsets = [geom.pack_weights(g) for g in exp["grads"]]
    grad_words = [{"addr": j, "data": gs[j].tolist()} for gs in gsets for j in range(len(gs))]
    in_words = [px for a in exp["acts"] for px in a.transpose(1, 2, 0).reshape(-1, C).tolist()]
    err_words = [px for e in exp["errs"] for px in e.transpose(1, 2, 0).reshape(-1, OC).tolist()]
    got = {k: [] for k in ("o", "mask", "arg", "act", "eb")}
    want = {"o": len(exp["fp"]["o"]), "mask": len(exp["fp"]["mask"]),
            "arg": len(exp["fp"]["arg"]), "act": len(in_words), "eb": len(exp["eb"]["o"])}
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    r = lambda: random.Random(rng.random())   # noqa: E731
    sim.add_testbench(stream_source(fp.i, in_words, rng=r(), p_stall=p_stall))
    sim.add_testbench(stream_source(eb.i, err_words, rng=r(), p_stall=p_stall))
    sim.add_testbench(stream_source(pg.a, in_words, rng=r(), p_stall=p_stall))
    sim.add_testbench(stream_source(pg.e, err_words, rng=r(), p_stall=p_stall))
    for key, port in (("o", fp.o), ("mask", fp.mask), ("arg", fp.arg), ("act", fp.act),
                      ("eb", eb.o)):
        sim.add_testbench(stream_sink(port, got[key], count=want[key], rng=r(), p_stall=p_stall))
    final = {}

    async def watch(ctx):
        cycle = 0
        while ctx.get(lender.updates) < exp["updates"] or \
                ctx.get(dut.grad_sets) < len(grad_words) or \
                ctx.get(lender.fp_images) < n_images or ctx.get(lender.eb_images) < n_images or \
                any(len(got[k]) < n for k, n in want.items()):
            await ctx.tick()
            cycle += 1
        for _ in range(3 * lender.weight_sets):
            await ctx.tick()
        for name in ("fp_sets", "eb_sets", "grad_sets"):
            final[name] = ctx.get(getattr(dut, name))
        for name in ("updates", "fp_images", "eb_images", "grad_images", "bgb_acc_overflow",
                     "bgb_out_overflow", "update_overflow"):
            final[name] = ctx.get(getattr(lender, name))
        for name in ("acc_overflows", "out_overflows"):
            final["fp_" + name] = ctx.get(getattr(fp, name))
            final["eb_" + name] = ctx.get(getattr(eb, name))

    async def end_of_run(ctx):
        # the borrower's FP has produced every output: no further FP image will come
        while len(got["o"]) < want["o"]:
            await ctx.tick()
        ctx.set(lender.flush, 1)

    sim.add_testbench(watch)
    sim.add_testbench(end_of_run)
    run_simulation(sim, waves, traces=[dut])
    return exp, got, final, lender


def check_pair(n_images, batch, lag, seed, **kw):
    exp, got, final, lender = run_pair(n_images, batch, lag, seed, **kw)
    assert got["act"] == exp["fp"]["act"]
    assert got["mask"] == exp["fp"]["mask"]
    assert got["arg"] == exp["fp"]["arg"]
    assert got["o"] == exp["fp"]["o"]
    assert got["eb"] == exp["eb"]["o"]
    assert final["updates"] == exp["updates"]
    assert final["fp_acc_overflows"] == final["eb_acc_overflows"] == 0
    assert final["fp_out_overflows"] == exp["fp"]["out_ovf"]
    assert final["eb_out_overflows"] == exp["eb"]["out_ovf"]
    assert final["update_overflow"] == exp["upd_ovf"]
    # words per image: what the mapper's model predicts for the lender's links
    # (the lender may already be streaming the next image's FP / EB sets if its version is out:
    # at most the borrower's two weight registers and the FIFO, never a whole image)
    sets, per_set = lender.weight_sets, lender.weights_per_image // lender.weight_sets
    assert lender.weights_per_image == sets * per_set == 288
    assert 2 * lender.weights_per_image == _mapper_words("parameters")
    # gradients: each set with its 4-bit address (16 sets of 18 x 16 + 4 bits), whole words
    assert _mapper_words("gradients") * 16 == -(-(sets * (per_set * 16 + 4)) // 64) * 64
    assert n_images * sets <= final["fp_sets"] < (n_images + 1) * sets
    assert final["fp_images"] == final["fp_sets"] // sets
    assert n_images * sets <= final["eb_sets"] < (n_images + 1) * sets
    assert final["eb_images"] == final["eb_sets"] // sets
    assert final["grad_sets"] == n_images * sets and final["grad_images"] == n_images
    if not isinstance(lender, _Keepers):
        assert lender.bpram.fold == kw.get("bpram_fold", 1)
    return exp, final


@pytest.mark.parametrize("ranges", [
    [(0, 3), (3, 10), (10, 16)],
    # 75 s: in -m long (CI time; three keepers above cover joining and routing by address)
    pytest.param([(0, 15), (15, 16)], marks=pytest.mark.long)])
def test_lend_by_several_keepers(ranges):
    """The segment's 16 sets kept in contiguous ranges by several lenders (FP / EB streams
    joined in address order, gradients routed back by address): the same results, bit for bit,
    as one lender, every master set updated where it is kept."""
    exp, final = check_pair(4, 2, 1, seed=2, ranges=ranges)
    assert final["updates"] == exp["updates"] == 2


def test_lender_sets_argument():
    for bad in [(0, 0), (3, 17), (-1, 2), [0, 4], (0, 2.0)]:
        with pytest.raises(ValueError, match=r"^Lender sets must be a range \(lo, hi\) with "
                                             r"0 <= lo < hi <= 16, not "):
            Lender(SEG, NET, NUM, batch=2, lr_q=100, sets=bad)
    lp = Lender(SEG, NET, NUM, batch=2, lr_q=100, sets=(4, 9))
    assert (lp.sets, lp.weight_sets, lp.total_sets) == ((4, 9), 5, 16)
    assert lp.weights_per_image == 5 * 18


@pytest.mark.parametrize("bpram_fold", [pytest.param(1, marks=pytest.mark.long), 4])
def test_lend_three_batches(bpram_fold, waves):
    """6 images, B = 2, D = 1: FP versions 0,0,0,1,1,2; EB versions 0,0,1,1,2,2 (updates 0 and 1
    gated by FP of images 2 and 4; update 2 after ``flush`` at the end of the run), with the
    BPRAM folded 4 ways (a set every 4 cycles to both streams, the update's write-back taken
    at that pace). Unfolded: ``-m long`` (CI time; the default run has the unfolded lender
    under stalls in :func:`test_window_in_runs` and :func:`test_lend_by_several_keepers`)."""
    exp, final = check_pair(6, 2, 1, seed=1, waves=waves, bpram_fold=bpram_fold)
    assert exp["updates"] == 3


def _transfers(port, out):
    async def process(ctx):
        cycle = 0
        async for _, _, valid, ready in ctx.tick().sample(port.valid, port.ready):
            if valid and ready:
                out.append(cycle)
            cycle += 1
    return process


def _no_stall_timing(cls, n_images=3):
    """Cycles of the input transfers, output transfers and ``done`` pulses with no stalls and
    every weight set available at once."""
    dut = cls(SEG, NET, NUM)
    g = dut.geometry
    fp = cls is WSFPLayer
    lanes, npix = (g.in_channels, g.pixels) if fp else (g.out_channels,
                                                         g.conv_height * g.conv_width)
    nrng = np.random.default_rng(3)
    words = nrng.integers(-100, 100, size=(n_images * npix, lanes)).tolist()
    wsets = [nrng.integers(-99, 99, size=(g.p * g.s, g.kernel, g.kernel)).tolist()
             for _ in range(n_images * dut.weight_sets)]
    rec = {"out": [], "done": [], "in": []}
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.i, words))
    sim.add_process(_transfers(dut.i, rec["in"]))
    sim.add_testbench(stream_source(dut.w, wsets))
    n_out = n_images * (g.out_height * g.out_width if fp else g.pixels)
    sim.add_testbench(stream_sink(dut.o, [], count=n_out,
                                  on_word=lambda c, p: rec["out"].append(c)))
    counts = {"act": n_images * npix, "mask": n_images * g.conv_height * g.conv_width,
              "arg": n_out}
    for name in ("act", "mask", "arg"):
        if hasattr(dut, name):
            sim.add_testbench(stream_sink(getattr(dut, name), [], count=counts[name]))

    async def monitor(ctx):
        cycle = 0
        async for _, _, done in ctx.tick().sample(dut.done):
            if done:
                rec["done"].append(cycle)
            cycle += 1

    sim.add_process(monitor)
    sim.run()
    return dut, rec


@pytest.mark.parametrize("cls", [WSFPLayer, WSEBLayer])
def test_accumulator_halves_one_read_port_each(cls):
    """The accumulators' two halves (alternate images) are two memories, each with one read
    port shared by the sweeps and the drain: no memory is built twice for a second read port
    (``fpdeep_hw.build.rtl_memories``). Before, one memory of both halves had a drain port:
    VGG-16 node 13's borrowed conv5_1 / conv5_2 took 588 + 556 BRAM36 each that way."""
    from amaranth.back import rtlil

    from fpdeep_hw.build import rtl_memories
    mems = {mem: (d, rs) for mod, mem, w, d, rs, ra, rw in
            rtl_memories(rtlil.convert(cls(SEG, NET, NUM))) if mem.startswith("acc")}
    dut = cls(SEG, NET, NUM)
    assert mems == {"acc0": (dut._q * dut._npos, 1), "acc1": (dut._q * dut._npos, 1)}


@pytest.mark.parametrize("cls", [WSFPLayer, WSEBLayer])
def test_cycles_per_image(cls):
    """Steady state without stalls: one image per ``cycles_per_image`` (``R * G`` replays of
    the line buffer's virtual map: 16 x 10 x 10 = 1600 for tiny conv2); ``latency`` to the
    cycle."""
    dut, rec = _no_stall_timing(cls)
    assert dut.cycles_per_image == 1600
    assert np.diff(rec["done"]).tolist() == [dut.cycles_per_image] * 2
    # first output word to the cycle (1704 FP with ReLU + 2x2 pool, 1662 EB)
    assert rec["in"][0] == 0
    assert rec["out"][0] - rec["in"][0] == dut.latency == (1704 if cls is WSFPLayer else 1662)


def test_rejects_bad_arguments():
    fc = next(s for s in PLAN.node_plans[1].segments if s.kind == "fc")
    with pytest.raises(ValueError, match=r"^WSFPLayer: only conv segments are built, not 'fc'"):
        WSFPLayer(fc, NET, NUM)
    with pytest.raises(ValueError, match=r"^Lender batch must be a positive integer, not 0$"):
        Lender(SEG, NET, NUM, batch=0, lr_q=100)
    with pytest.raises(ValueError, match=r"^Lender lag must be a non-negative integer, not -1$"):
        Lender(SEG, NET, NUM, batch=2, lr_q=100, lag=-1)
    with pytest.raises(ValueError, match=r"^Lender fifo depth must be a positive integer"):
        Lender(SEG, NET, NUM, batch=2, lr_q=100, fifo_depth=0)
    with pytest.raises(ValueError, match=rf"^Lender master weights must fit in {NUM.master.width} signed bits$"):
        Lender(SEG, NET, NUM, batch=2, lr_q=100, master=np.full((8, 4, 3, 3), 1 << 40))
    with pytest.raises(TypeError, match=r"^PGLayer lgb must be a bool, not 1$"):
        PGLayer(SEG, NET, NUM, batch=2, lgb=1)
    first = PLAN.node_plans[0].segments[0]
    with pytest.raises(ValueError, match=r"^WSEBLayer: segment 'conv1' has no EB$"):
        WSEBLayer(first, NET, NUM)


def test_lender_defaults():
    lender = Lender(SEG, NET, NUM, batch=2, lr_q=100)
    assert lender.lag == int(SEG.act_ram_images) == 5
    assert lender.weight_sets == 16 and lender.weights_per_image == 288


@pytest.mark.parametrize("cls", ["lender", "wsfp", "wseb", "wspg"])
def test_lint(cls, tmp_path):
    dut = {"lender": lambda: Lender(SEG, NET, NUM, batch=2, lr_q=100),
           "wsfp": lambda: WSFPLayer(SEG, NET, NUM),
           "wseb": lambda: WSEBLayer(SEG, NET, NUM),
           "wspg": lambda: WSPGLayer(SEG, NET, NUM, batch=2)}[cls]()
    verilator_lint(dut, cls, tmp_path)


@pytest.mark.slow
@pytest.mark.long     # 85 s: in -m long (CI time; test_lend_three_batches gates versions too)
def test_lend_plan_lag(waves):
    """The plan's own lag (``D = floor(act_ram_images) = 5``: conv2's lending round trip holds
    its weight-stationary PG's later sweeps), B = 2, 8 images: FP versions 0,0,0,0,0,0,0,1; EB
    versions 0,0,1,1,2,2,3,3, the last four only after ``flush`` (update 1 would otherwise
    wait for FP of image 8, update 2 for image 10)."""
    assert int(SEG.act_ram_images) == 5
    exp, final = check_pair(8, 2, int(SEG.act_ram_images), seed=2, waves=waves)
    assert exp["updates"] == final["updates"] == 4


def test_window_in_runs(monkeypatch, waves):
    """The weight-stationary engines' windows in runs of lanes where one value cannot hold them
    (a lent VGG-16 conv5 segment: 512 x 3 x 3 x 16 bits): the limit lowered to three lanes'
    windows (conv2's FP and PG windows: C = 4 -> 2 + 2; EB: OC = 8 -> 3 + 3 + 2), the pair
    bit-exact over two mini-batches."""
    monkeypatch.setattr(wide, "MAX_VALUE_BITS", 3 * 9 * NUM.activation.width)
    assert NUM.error.width == NUM.activation.width
    for make, runs in ((lambda: WSFPLayer(SEG, NET, NUM), ["lb0", "lb1"]),
                       (lambda: WSEBLayer(SEG, NET, NUM), ["lb0", "lb1", "lb2"]),
                       (lambda: WSPGLayer(SEG, NET, NUM, batch=2), ["lb0", "lb1"])):
        names = [name for _, name, _ in Fragment.get(make(), None).subfragments]
        assert [n for n in names if n.startswith("lb")] == runs
    check_pair(4, 2, 1, seed=8, waves=waves)


# -- weight-stationary PG ------------------------------------------------------------------------

def _pg_segment(net, layer, p=None, s=None):
    """A conv segment of ``net`` mapped on one sim-node (``p``/``s`` reshape every phase's
    engines, reaching padding lanes)."""
    network = load_network(net)
    plan = map_network(network, load_board("sim-node"), 1, batch=2, max_row_lanes=1)
    seg = next(x for x in plan.node_plans[0].segments if x.layer == layer)
    if p is not None:
        seg = dataclasses.replace(seg, engines={
            k: dataclasses.replace(v, p=p, s=s) for k, v in seg.engines.items()})
    return seg, network, plan.numerics


def _pg_data(geo, images, seed, amp=1 << 10):
    """Random activations ``(C, H, W)`` and errors ``(OC, Hc, Wc)`` per image, with their stream
    words (one per pixel / position, all channels)."""
    nrng = np.random.default_rng(seed)
    acts = [nrng.integers(-amp, amp, size=(geo.in_channels, geo.height, geo.width))
            for _ in range(images)]
    errs = [nrng.integers(-amp, amp, size=(geo.out_channels, geo.conv_height, geo.conv_width))
            for _ in range(images)]
    a_words = [px for a in acts for px in a.transpose(1, 2, 0).reshape(-1, geo.in_channels)
               .tolist()]
    e_words = [px for e in errs for px in e.transpose(1, 2, 0).reshape(-1, geo.out_channels)
               .tolist()]
    return acts, errs, a_words, e_words


def _pg_golden(dut, acts, errs, num):
    """The gradient sets ``PGLayer(lgb=False)`` sends (address order, ``last`` on the last set
    of each mini-batch) and the golden requantisation overflows."""
    geo, B, N = dut.geometry, dut.batch, dut.weight_sets
    words, overflow = [], 0
    for i, (a, e) in enumerate(zip(acts, errs)):
        g, ovf = gl.conv_pg(e, a, geo.kernel, geo.stride, geo.pad, 1, num)
        overflow += ovf
        sets = geo.pack_weights(g)
        words += [{"addr": j, "data": sets[j].tolist(),
                   "last": int(j == N - 1 and i % B == B - 1)} for j in range(N)]
    return words, overflow


def _run_ws_pg(dut, a_words, e_words, n_sets, *, p=0.3, seed=0, waves=None):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    rng = random.Random(seed)
    r = lambda: random.Random(rng.random())   # noqa: E731
    rec = {"grad": [], "grad_cycles": [], "a": [], "pg_done": []}
    sim.add_testbench(stream_source(dut.a, a_words, rng=r(), p_stall=p), background=True)
    sim.add_testbench(stream_source(dut.e, e_words, rng=r(), p_stall=p), background=True)
    sim.add_process(_transfers(dut.a, rec["a"]))

    async def monitor(ctx):
        cycle = 0
        async for _, _, done in ctx.tick().sample(dut.pg_done):
            if done:
                rec["pg_done"].append(cycle)
            cycle += 1

    async def consumer(ctx):
        await stream_sink(dut.grad, rec["grad"], count=n_sets, rng=r(), p_stall=p,
                          on_word=lambda c, _: rec["grad_cycles"].append(c),
                          max_cycles=400000)(ctx)
        for _ in range(8):
            await ctx.tick()
        for name in ("acc_overflow", "out_overflow", "busy_cycles"):
            rec[name] = ctx.get(getattr(dut, name))

    sim.add_process(monitor)
    sim.add_testbench(consumer)
    run_simulation(sim, waves or "ws_pg", traces=[dut])
    return rec


_WS_PG_CASES = {
    # the lent conv2 of this file's plan (C = 4, OC = 8, 8 x 8, P x S = 2 x 1: R = 4, G = 4)
    "lent-conv2": lambda: (SEG, NET, NUM),
    "tiny-conv1": lambda: _pg_segment("tiny", "conv1"),
    # padding lanes in the last input group (2 of 3) and the last output group (1 of 3)
    "tiny-conv2-3x3": lambda: _pg_segment("tiny", "conv2", p=3, s=3),
    "digits-conv1": lambda: _pg_segment("digits", "conv1"),
}


@pytest.mark.parametrize("case", list(_WS_PG_CASES))
def test_ws_pg_bit_exact(case, waves):
    """``WSPGLayer`` against ``conv_pg``: random data, random stalls on ``a``, ``e`` and
    ``grad``, three images in mini-batches of 2: every gradient set, its address and ``last``
    bit exact, one ``pg_done`` per image, the overflow counts of the golden model, one multiply
    step per window and set."""
    seg, net, num = _WS_PG_CASES[case]()
    images = 3
    dut = WSPGLayer(seg, net, num, batch=2)
    acts, errs, a_words, e_words = _pg_data(dut.geometry, images, seed=len(case))
    words, overflow = _pg_golden(dut, acts, errs, num)
    rec = _run_ws_pg(dut, a_words, e_words, len(words), seed=len(case), waves=waves)
    assert rec["grad"] == words
    assert len(rec["pg_done"]) == images
    assert rec["acc_overflow"] == 0
    assert rec["out_overflow"] == overflow
    assert rec["busy_cycles"] == images * dut.steps_per_image
    # the same sets, in the same order, as the position-outer PGLayer(lgb=False) sends
    assert dut.drain_order == PGLayer(seg, net, num, batch=2, lgb=False).drain_order


def test_ws_pg_overflow_counted(waves):
    """Large operands: gradients beyond the gradient format clamp, counted in
    ``out_overflow`` exactly as the golden model counts them (and still bit exact)."""
    dut = WSPGLayer(SEG, NET, NUM, batch=2)
    acts, errs, a_words, e_words = _pg_data(dut.geometry, 2, seed=5,
                                            amp=1 << (NUM.activation.width - 1))
    words, overflow = _pg_golden(dut, acts, errs, NUM)
    rec = _run_ws_pg(dut, a_words, e_words, len(words), p=0.2, seed=5, waves=waves)
    assert overflow > 0
    assert rec["grad"] == words
    assert rec["out_overflow"] == overflow


def test_ws_pg_timing():
    """No stalls, every error word before its window: the first set valid ``latency`` cycles
    after the first ``a`` transfer (to the cycle), the later sets one replay of the virtual map
    (``vheight * vwidth``) apart, and the steady state one image per ``cycles_per_image``
    (``R * G`` replays: 16 x 10 x 10 = 1,600 for the lent conv2, as its FP and EB)."""
    dut = WSPGLayer(SEG, NET, NUM, batch=2)
    acts, errs, a_words, e_words = _pg_data(dut.geometry, 3, seed=1)
    words, _ = _pg_golden(dut, acts, errs, NUM)
    rec = _run_ws_pg(dut, a_words, e_words, len(words), p=0)
    assert rec["grad"] == words
    N, lg = dut.weight_sets, dut._lbgeom
    assert rec["a"][0] == 0
    # the top padding (p0 = 11 scan steps) first, then 88 steps to the first sweep's last
    # window, the line buffer's 2 and the 4 to the output register
    assert rec["grad_cycles"][0] == dut.latency == 11 + 88 + 2 + 4
    assert np.diff(rec["grad_cycles"][:N]).tolist() == [lg.vheight * lg.vwidth] * (N - 1)
    assert dut.cycles_per_image == 1600 == WSFPLayer(SEG, NET, NUM).cycles_per_image
    assert np.diff(rec["pg_done"]).tolist() == [dut.cycles_per_image] * 2


def test_ws_pg_rejects_bad_arguments():
    fc = next(s for s in PLAN.node_plans[1].segments if s.kind == "fc")
    with pytest.raises(ValueError, match=r"^WSPGLayer: only conv segments are built, not 'fc'"):
        WSPGLayer(fc, NET, NUM, batch=2)
    with pytest.raises(ValueError, match=r"^WSPGLayer batch must be a positive integer, not 0$"):
        WSPGLayer(SEG, NET, NUM, batch=0)
    odd = dataclasses.replace(SEG, engines={**SEG.engines, "pg": dataclasses.replace(
        SEG.engines["pg"], p=1)})
    with pytest.raises(ValueError, match=r"PG engines 1x1 differ from FP engines 2x1"):
        WSPGLayer(odd, NET, NUM, batch=2)


def test_ws_pg_storage():
    """The block keeps two frame stores (activations and errors, two banks each) and no
    accumulator memory: the memories of its RTL (``fpdeep_hw.build.rtl_memories``)."""
    from amaranth.back import rtlil

    from fpdeep_hw.build import rtl_memories
    dut = WSPGLayer(SEG, NET, NUM, batch=2)
    g = dut.geometry
    mems = {mem: (w, d, rs) for mod, mem, w, d, rs, *_ in rtl_memories(rtlil.convert(dut))
            if mod == "top"}
    aw, ew = NUM.activation.width, NUM.error.width
    assert mems == {"act_store": (g.in_channels * aw, 2 * g.pixels, 1),
                    "err_store": (g.out_channels * ew, 2 * g.conv_height * g.conv_width, 1)}
