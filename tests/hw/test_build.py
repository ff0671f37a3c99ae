# amaranth: UnusedElaboratable=no
"""``python -m fpdeep_hw.build`` (fpdeep_hw/build.py, fpdeep_hw/board_top.py).

The build of a small node (``tiny`` on one VC709, mapped with a 4 % DSP budget so that its engines
are those of the ``sim-node`` plan, batch 2, ``max_row_lanes=1``) writes every file; its Verilog
passes Verilator's lint with the reviewed waivers; the Verilog the build hands out, simulated
with Icarus Verilog, gives the same output ports as the Amaranth simulation of ``NodeTop``,
cycle for cycle, on the same stimulus (two images with random valid gaps, one mini-batch: FP,
loss, BP and the weight update); bad input gives the one-line error, exit 2 and no files.
"""

import json
import random
import re
from fractions import Fraction
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from amaranth.hdl import Elaboratable
from amaranth.lib import wiring

from fpdeep_map.board import load_board
from fpdeep_map.mapper import map_network
from fpdeep_map.network import load_network
from fpdeep_map.plan import Plan

ROOT = Path(__file__).resolve().parents[2]
WAIVERS = ROOT / "fpdeep_hw" / "verilator_waivers.vlt"


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fpdeep_hw.build", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, timeout=900)


def small_plan(batch=2, board="vc709"):
    # 4 % of the VC709's DSPs: the same engines as the sim-node plan (105 multipliers)
    return map_network(load_network("tiny"), load_board(board), 1, batch=batch, max_row_lanes=1,
                       dsp_budget=0.04)


def _build(tmp, plan):
    tmp.mkdir(parents=True, exist_ok=True)
    plan_file = tmp / "plan.yaml"
    plan_file.write_text(plan.to_yaml())
    out = tmp / "out"
    proc = _cli("--plan", str(plan_file), "--node", "0", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return {"plan": plan, "plan_file": plan_file, "out": out, "proc": proc,
            "folder": out / "tiny-vc709x1" / "node0"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    # batch 1: the fewest cycles that still cover FP, the loss, BP and a weight update
    return _build(tmp_path_factory.mktemp("build"), small_plan(batch=1))


def test_files(built):
    folder, plan = built["folder"], built["plan"]
    names = {p.name for p in folder.iterdir()}
    for f in ("fpdeep_node.v", "top.v", "top.xdc", "top.tcl", "node.yaml", "report.json"):
        assert f in names, f
    # nothing else in the configuration folder (the temporary folder was renamed)
    assert [p.name for p in folder.parent.iterdir()] == ["node0"]
    report = json.loads((folder / "report.json").read_text())
    np0 = plan.node_plans[0]
    assert report["predicted"] == {"dsp": np0.dsp, "bram36": np0.bram36, "lut": np0.lut,
                                   "ff": np0.ff}
    assert report["mac_units"] == np0.dsp == 105
    assert report["layers"] == ["conv1", "conv2", "conv3", "fc4"]
    assert set(report["files"]) == names
    node = yaml.safe_load((folder / "node.yaml").read_text())
    assert [n["node"] for n in node["node_plans"]] == [0] and node["board"] == "vc709"
    top_v = (folder / "top.v").read_text()
    assert "fpdeep_node " in top_v and "fpdeep_host_dma " in top_v
    assert "module fpdeep_node(" in (folder / "fpdeep_node.v").read_text()
    xdc = (folder / "top.xdc").read_text()
    assert "H19" in xdc and "G18" in xdc and "create_clock" in xdc       # clk200
    assert "AM39" in xdc                                                  # led 0
    tcl = (folder / "top.tcl").read_text()
    assert "xc7vx690tffg1761-2" in tcl and "fpdeep_node.v" in tcl
    # the summary names the path
    assert str(folder) in built["proc"].stdout
    assert "plan DSP 105" in built["proc"].stdout
    # every master copy off chip: a ring each, its initial words in a hex file for the host
    from amaranth.hdl import Fragment

    from fpdeep_hw.node.top import NodeTop
    from sim.golden.train import init_weights
    net = load_network("tiny")
    node = NodeTop(plan, 0, net, lr=0.125, init_master=init_weights(net, 0, plan.numerics),
                   master_burst=report["master_burst"], master_prefetch=report["master_prefetch"],
                   master_fold=report["master_fold"],
                   memory_word_bits=report["memory_word_bits"])
    Fragment.get(node, None)            # (every block used: no unused-elaboratable warnings)
    assert (report["master_burst"], report["master_prefetch"]) == (4, 2)
    # VC709's memory: 238.8 Gb/s at 200 MHz = 1,194 bits per cycle, more than a set of tiny's
    # (at most 864 bits), so no update folds its FIFOs
    assert (report["master_fold"], report["memory_word_bits"]) == (16, 1194)
    assert report["master_folds"] == node.master_folds == {
        f"mem_{layer}_master": 1 for layer in report["layers"]}
    masters = [(member, module) for _, store, member, module in node.memories()
               if store == "master"]
    assert [m for m, _ in masters] == [f"mem_{layer}_master" for layer in report["layers"]]
    for member, upd in masters:
        ring = report["memory_map"][member]
        assert (ring["store"], ring["base"], ring["words"], ring["word_bits"], ring["init"]) == (
            "master", upd.base, upd.ext_words, upd.word_width, f"{member}.hex")
        lines = (folder / ring["init"]).read_text().splitlines()
        words = upd.init_words()
        assert [int(x, 16) for x in lines] == [words[a] for a in sorted(words)]
        assert len(lines) == upd.ext_words and len(lines[0]) == -(-upd.word_width // 4)


def test_rtl_memory_report(built):
    """``rtl_memory`` counts block RAM per memory in whole primitives, a copy per synchronous
    read port that does not share a write port's address. Measured on the small node at B = 128
    (``bench/bench_build.py --case tiny-small``): estimate 12 BRAM36, Yosys ``synth_xilinx``
    13 RAMB18 + 4 RAMB36 = 10.5."""
    report = json.loads((built["folder"] / "report.json").read_text())
    mem = report["rtl_memory"]
    assert mem["board_bram36"] == 1470 and mem["fits_in_bram"] is True
    assert 0 < mem["lutram_bits"] < mem["bits"]
    # every memory has one read port of its own, the shared LPRAMs one more on the write's
    # port (FP and EB read them); the per-element blocks keep rows of lanes
    assert all(m["read_ports"] - m["shared_reads"] == 1 for m in mem["largest"])
    assert any(m["shared_reads"] == 1 and m["read_ports"] == 2 for m in mem["largest"])
    big = mem["largest"][0]
    assert mem["bram36"] >= sum(m["bram36"] for m in mem["largest"]) >= big["bram36"] > 0
    assert mem["bram36"] == sum(b["bram36"] for b in mem["by_block"]) or \
        len(mem["by_block"]) == 16
    assert "in %g BRAM36 (plan %g)" % (mem["bram36"], report["predicted"]["bram36"]) in \
        built["proc"].stdout


def test_bram_tiles():
    from fpdeep_hw.build import _bram18_units, _memory_report
    from fpdeep_map.costs import bram18_tiles
    assert bram18_tiles(16, 64) == 0                       # distributed RAM
    assert bram18_tiles(16, 65) == 1
    assert bram18_tiles(36, 512) == bram18_tiles(18, 1024) == 1
    assert bram18_tiles(72, 512) == 2                      # one RAMB36 512 x 72
    assert bram18_tiles(48, 640) == 3                      # three RAMB18 1K x 18
    assert bram18_tiles(48, 320) == 2                      # two RAMB18 512 x 36
    assert bram18_tiles(1, 32768) == 2                     # one RAMB36 32K x 1
    assert _bram18_units(48, 640, 2, 0) == 6               # a copy per read port
    assert _bram18_units(48, 640, 1, 1) == 0               # asynchronous read: LUTRAM
    assert _bram18_units(48, 640, 2, 0, 1) == 3            # one read port on the write's port
    plan = small_plan()
    rep = _memory_report([("a", "m", 48, 640, 10, 2, 0, 0), ("b", "n", 16, 32, 4, 1, 0, 0)],
                         plan)
    assert rep["bram36"] == 30 and rep["lutram_bits"] == 16 * 32 * 4
    assert rep["bits"] == 48 * 640 * 10 + 16 * 32 * 4
    assert [m["module"] for m in rep["largest"]] == ["a", "b"]
    assert rep["by_block"] == [{"block": "a", "bram36": 30, "bits": 48 * 640 * 10},
                               {"block": "b", "bram36": 0, "bits": 16 * 32 * 4}]
    assert rep["largest"][0]["bram36"] == 30 and rep["largest"][0]["read_ports"] == 2


def test_rtl_memories_read_ports():
    from amaranth.back import rtlil
    from amaranth.hdl import Module, Signal
    from amaranth.lib.memory import Memory

    from fpdeep_hw.build import rtl_memories
    m = Module()
    m.submodules.mem = mem = Memory(shape=8, depth=100, init=[])
    wp, r1, r2, r3 = mem.write_port(), mem.read_port(), mem.read_port(domain="comb"), \
        mem.read_port()
    a, o1, o2, o3 = Signal(7), Signal(8), Signal(8), Signal(8)
    m.d.comb += [wp.addr.eq(a), r1.addr.eq(a + 1), r2.addr.eq(a + 2), r3.addr.eq(a + 3),
                 o1.eq(r1.data), o2.eq(r2.data), o3.eq(r3.data)]
    assert rtl_memories(rtlil.convert(m, ports=[a, o1, o2, o3])) == [
        ("top", "mem", 8, 100, 2, 1, 0)]
    # a read port with the write port's address signal: one true dual-port memory
    m = Module()
    m.submodules.mem = mem = Memory(shape=8, depth=100, init=[])
    wp, r1, r2 = mem.write_port(), mem.read_port(), mem.read_port()
    m.d.comb += [wp.addr.eq(a), r1.addr.eq(a + 1), r2.addr.eq(a), o1.eq(r1.data), o2.eq(r2.data)]
    assert rtl_memories(rtlil.convert(m, ports=[a, o1, o2])) == [
        ("top", "mem", 8, 100, 2, 0, 1)]


def test_lint(built, tmp_path):
    exe = shutil.which("verilator")
    if exe is None:
        pytest.skip("verilator is not installed")
    src = built["folder"] / "fpdeep_node.v"
    cmd = [exe, "--lint-only", "-Wall", "--top-module", "fpdeep_node", str(WAIVERS), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    report = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and "%Warning" not in report and "%Error" not in report, report


# ---- the board top's Verilog: does it elaborate with the node's? --------------------------------

_INST = re.compile(r"\n  ([A-Za-z_]\w*) (?:#\((.*?)\n  \) )?(\\\S+ |[A-Za-z_]\S*) \((.*?)\n  \);", re.S)


def black_box_stubs(*texts):
    """Verilog stub modules (every port an input, parameters declared) for each module
    instantiated in ``texts`` and defined in none of them: the black boxes and the vendor
    primitives."""
    defined = set(re.findall(r"^module\s+([^\s(]+)", "".join(texts), re.M))
    stubs = {}
    for text in texts:
        for mod, params, _, body in _INST.findall(text):
            if mod in defined:
                continue
            ports, pars = stubs.setdefault(mod, (set(), set()))
            ports.update(re.findall(r"\.(\w+)\(", body))
            pars.update(re.findall(r"\.(\w+)\(", params or ""))
    out = []
    for mod, (ports, pars) in sorted(stubs.items()):
        ps = sorted(ports)
        out.append(f"module {mod}({', '.join(ps)});\n" +
                   "".join(f"  parameter {p} = 0;\n" for p in sorted(pars)) +
                   "".join(f"  input {p};\n" for p in ps) + "endmodule\n")
    return sorted(stubs), "".join(out)


def check_top_elaborates(folder, tmp_path):
    """``top.v`` with the build's ``fpdeep_node.v`` (and stubs for the black boxes and Xilinx
    primitives) elaborates under Icarus, and every port of the ``fpdeep_node`` instance exists
    with the node module's width. Returns the stubbed module names."""
    if shutil.which("iverilog") is None:
        pytest.skip("Icarus Verilog is not installed")
    top, node = (folder / "top.v").read_text(), (folder / "fpdeep_node.v").read_text()
    names, stubs = black_box_stubs(top, node)
    assert "fpdeep_node" not in names
    (tmp_path / "stubs.v").write_text(stubs)
    proc = subprocess.run(["iverilog", "-g2005", "-o", str(tmp_path / "top.vvp"), "-s", "top",
                           str(folder / "top.v"), str(folder / "fpdeep_node.v"),
                           str(tmp_path / "stubs.v")], capture_output=True, text=True,
                          timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and " error: " not in log and "missing" not in log, log
    assert "of fpdeep_node expects" not in log, log
    return names


# ---- Icarus Verilog against the Amaranth simulation --------------------------------------------

def _stimulus(top, network, num, n_images, seed):
    from sim.data import synthetic
    from sim.golden.layers import quantize_input
    x, y = synthetic(network, n_images, seed)
    pixels = []
    for xi in x:
        a, _ = quantize_input(np.asarray(xi, dtype=np.float64).reshape(network.input_shape), num)
        c, h, w = a.shape
        pixels += [[int(v) for v in a[:, yy, xx]] for yy in range(h) for xx in range(w)]
    return pixels, [int(v) for v in y]


def _pack(lanes, width):
    raw = 0
    for i, v in enumerate(lanes):
        raw |= (v & ((1 << width) - 1)) << (i * width)
    return raw


def attach_drams(sim, linked, *, latency=20, seed=0):
    """A :class:`sim.dram_model.DRAMModel` on every external-memory port of ``linked`` (a
    ``LinkedNode``; :meth:`NodeTop.memories`), the master copies' rings loaded with their
    initial words (what the host writes before training)."""
    from sim.dram_model import DRAMModel
    for j, (_, store, member, module) in enumerate(linked.node_top.memories()):
        model = DRAMModel(getattr(linked, member), burst=module.burst,
                          words=module.base + module.ext_words, latency=latency,
                          words_per_cycle=2, seed=seed + j)
        if store == "master":
            model.load(module.init_words())
        sim.add_testbench(model.run, background=True)


def amaranth_trace(top, pixels, labels, *, p_gap, seed, tail):
    """Per cycle: every input port's value (the host's, and the memory models' on the burst
    ports) and every output port's value, before the clock edge; and the ports."""
    from amaranth.hdl import Value
    from amaranth.sim import Simulator

    from fpdeep_hw.board_top import node_instance_ports
    rng = random.Random(seed)
    ports = [(name, d, Value.cast(v)) for name, (d, v) in node_instance_ports(top).items()]
    rec = []

    async def bench(ctx):
        pi = li = 0
        done_at = None
        cycle = 0
        while done_at is None or cycle < done_at + tail:
            iv = int(pi < len(pixels) and rng.random() >= p_gap)
            lv = int(li < len(labels) and rng.random() >= p_gap)
            ctx.set(top.images.valid, iv)
            ctx.set(top.images.payload, pixels[min(pi, len(pixels) - 1)])
            ctx.set(top.labels.valid, lv)
            ctx.set(top.labels.payload, labels[min(li, len(labels) - 1)])
            ctx.set(top.flush, int(pi >= len(pixels)))
            ins = tuple(ctx.get(v) & ((1 << len(v)) - 1) for _, d, v in ports if d == "i")
            outs = tuple(ctx.get(v) & ((1 << len(v)) - 1) for _, d, v in ports if d == "o")
            rec.append((ins, outs))
            if iv and ctx.get(top.images.ready):
                pi += 1
            if lv and ctx.get(top.labels.ready):
                li += 1
            if done_at is None and ctx.get(top.updates) >= len(labels) // top.node_top.batch:
                done_at = cycle
            await ctx.tick()
            cycle += 1
            assert cycle < 60_000, "the node did not finish its update"

    sim = Simulator(top)
    sim.add_clock(1e-8)
    attach_drams(sim, top, seed=seed)
    sim.add_testbench(bench)
    sim.run()
    return ports, rec


def _compare(build, n_images, tmp_path):
    if shutil.which("iverilog") is None or shutil.which("vvp") is None:
        pytest.skip("Icarus Verilog is not installed")
    from fpdeep_hw.board_top import LinkedNode
    from fpdeep_hw.build import (BUILD_FIFO_ROWS, BUILD_FIFO_WHOLE_BITS, BUILD_MASTER_BURST,
                                 BUILD_MASTER_PREFETCH)
    from fpdeep_hw.node.top import NodeTop
    from sim.golden.train import init_weights
    plan = Plan.from_yaml(build["plan_file"].read_text())
    report = json.loads((build["folder"] / "report.json").read_text())
    net = load_network("tiny")
    # the build's defaults: lr 0.125, seed 0, decoupling FIFOs of BUILD_FIFO_ROWS rows above
    # BUILD_FIFO_WHOLE_BITS, the master copies' bursts and folds
    node = NodeTop(plan, 0, net, lr=0.125, init_master=init_weights(net, 0, plan.numerics),
                   fifo_rows=BUILD_FIFO_ROWS, fifo_whole_bits=BUILD_FIFO_WHOLE_BITS,
                   master_burst=BUILD_MASTER_BURST, master_prefetch=BUILD_MASTER_PREFETCH,
                   master_fold=report["master_fold"],
                   memory_word_bits=report["memory_word_bits"])
    top = LinkedNode(node)
    pixels, labels = _stimulus(top, net, plan.numerics, n_images, seed=3)
    ports, rec = amaranth_trace(top, pixels, labels, p_gap=0.2, seed=5, tail=40)
    names = [n for n, d, _ in ports if d == "o"]
    in_names = [n for n, d, _ in ports if d == "i"]
    assert {"images__ready", "labels__ready", "updates", "loss_valid", "loss_error"} <= set(names)
    # every master copy is off chip: its burst port is driven by the memory model, and new
    # master words went back through it (fc4's 640 sets are still being written when the trace
    # ends, after the first layer's update)
    assert {f"mem_{s.layer}_master__r__valid" for s in plan.node_plans[0].segments} <= \
        set(in_names)
    for _, store, member, upd in node.memories():
        wv, wr = names.index(f"{member}__w__valid"), in_names.index(f"{member}__w__ready")
        assert store == "master" and sum(1 for i, o in rec if o[wv] and i[wr]) >= upd.burst
    outs = [o for _, o in rec]
    up = names.index("updates")
    ir, lr = names.index("images__ready"), names.index("labels__ready")
    iv, lv_in = in_names.index("images__valid"), in_names.index("labels__valid")
    # the stimulus covers FP of every image, the loss, BP and the mini-batches' updates
    assert outs[-1][up] == n_images // plan.batch >= 1 and outs[0][up] == 0
    assert sum(1 for (i, o) in rec if i[iv] and o[ir]) == len(pixels)
    assert sum(1 for (i, o) in rec if i[lv_in] and o[lr]) == len(labels)
    # every loss error word (classes lanes, one per image) is compared, and they are not all 0
    lv, le = names.index("loss_valid"), names.index("loss_error")
    assert sum(o[lv] for o in outs) == len(labels)
    assert any(o[le] for o in outs if o[lv])
    got = icarus_replay(build["folder"] / "fpdeep_node.v", ports, rec, tmp_path)
    assert len(got) == len(outs)
    outs = [stream_view(names, o) for o in outs]
    got = [stream_view(names, o) for o in got]
    first = next((n for n, (a, b) in enumerate(zip(outs, got)) if a != b), None)
    assert first is None, (f"cycle {first} of {len(outs)}: Amaranth {dict(zip(names, outs[first]))}, "
                           f"Icarus {dict(zip(names, got[first]))}")
    return len(outs)


def test_icarus_matches_amaranth(built, tmp_path):
    """1 image, batch 1: FP, loss, BP, PG and the update, compared at every cycle."""
    _compare(built, 1, tmp_path)


@pytest.mark.slow
@pytest.mark.long
def test_icarus_matches_amaranth_batch2(tmp_path):
    """2 images, batch 2 (a separate build): the pipeline overlap of two images as well. In
    ``-m long`` (CI time, 100 s): the default run compares one image on one node
    (:func:`test_icarus_matches_amaranth`) and on two (``test_multi_node_icarus_...``)."""
    build = _build(tmp_path / "build", small_plan(batch=2))
    (tmp_path / "sim").mkdir()
    assert _compare(build, 2, tmp_path / "sim") > 5000


# ---- bad input ----------------------------------------------------------------------------------

def _assert_refused(proc, out, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1 and proc.stderr.strip().splitlines()[-1] == lines[0], proc.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    assert not Path(out).exists()


@pytest.mark.parametrize("args, fragments", [
    (["--board", "vc709", "--node", "15"], ["--node: 15: outside the plan: nodes 0..14"]),
    (["--board", "vc707", "--node", "0"], ["'vc707'", "unknown board"]),
    (["--board", "sim-node", "--net", "tiny", "--nodes", "1", "--node", "0"],
     ["--board: 'sim-node': no Amaranth platform"]),
    # the full DSP budget puts all of tiny on node 0: node 1 is empty
    (["--board", "vc709", "--net", "tiny", "--nodes", "2", "--split", "layers", "--node", "1"],
     ["node_plans[1].segments: []", "holds no layer"]),
    (["--plan", "x.yaml", "--split", "layers", "--node", "0"],
     ["--split: 'layers': cannot be combined with --plan"]),
    (["--board", "vc709", "--dsp-budget", "1.5", "--node", "0"],
     ["--dsp-budget: '1.5': must be a number in (0, 1]"]),
    (["--board", "vc709"], ["give exactly one of --node K and --all"]),
    (["--board", "vc709", "--node", "-1"], ["--node: '-1': must be an integer >= 0"]),
    (["--board", "vc709", "--node", "3:1"], ["--node: '3:1': must be K, A:B (0 <= A <= B)"]),
    (["--board", "vc709", "--node", "1,x"], ["--node: '1,x': must be K, A:B or a comma list"]),
    # node 14 of the default plan holds fc6 / fc7 / fc8, whose weights the plan streams from
    # DRAM and whose pixels of 4,096 channels x 16 bits are one bit wider than one Amaranth
    # value; several nodes, or --all, are all checked before any is built
    (["--board", "vc709", "--node", "14"],
     ["node_plans[14].segments[1].out_channels: 4096:", "'fc6' pixels of 4096 channels x 16 "
      "bits = 65,536 bits, above the 65,535", "also: off-chip weights fc6, pixel width fc7, "
      "off-chip weights fc7, pixel width fc8, off-chip weights fc8"]),
    (["--board", "vc709", "--node", "12:14"], ["node_plans[14]"]),
    (["--board", "vc709", "--node", "0", "--synth", "--yosys", "no-such-yosys"],
     ["--yosys: 'no-such-yosys': no such program on the PATH"]),
    (["--board", "vc709", "--node", "0", "--yosys", "yosys"],
     ["--yosys: 'yosys': only used with --synth"]),
    (["--board", "vc709", "--node", "0", "--synth-hierarchy"],
     ["--synth-hierarchy: True: only used with --synth"]),
    (["--board", "vc709", "--node", "0", "--synth-memory-only"],
     ["--synth-memory-only: True: only used with --synth"]),
    # node 14's pixels of 4,096 channels: the first problem of --all
    (["--board", "vc709", "--all"], ["node_plans[14].segments[1].out_channels: 4096",
                                     "65,536 bits"]),
])
def test_refused(tmp_path, args, fragments):
    out = tmp_path / "out"
    _assert_refused(_cli(*args, "--out", str(out)), out, *fragments)


def test_offchip_weights_refused():
    """Node 14 of the default plan: the plan streams fc6 / fc7 / fc8's weights from DRAM."""
    from fpdeep_hw.build import DEFAULT_NODES, unsupported
    net = load_network("vgg16")
    plan = map_network(net, load_board("vc709"), DEFAULT_NODES, max_row_lanes=1)
    probs = {p[3]: p for p in unsupported(plan, 14, net)}
    field, value, problem, _ = probs["off-chip weights fc6"]
    assert field.endswith(".lpram.offchip_words") and value == 102_760_448
    assert ("the 102,760,448 weights of 'fc6', which the plan keeps in off-chip memory, would be "
            "in block RAM (1,568.0 Mbit against the device's 51.7 Mbit)") in problem
    # the others build; nodes 8-13's 512-lane windows are held in runs of lanes, and node 8's
    # master copies' ports are a row of a set wide: 16,740 input bits (66,960 as whole sets)
    assert [unsupported(plan, k, net) for k in range(14)] == [[]] * 14
    import fpdeep_hw.build as build
    try:
        build.MAX_INPUT_BITS, limit = 0, build.MAX_INPUT_BITS
        (_, total, why, _), = unsupported(plan, 8, net)
    finally:
        build.MAX_INPUT_BITS = limit
    assert total == 16_740 and "conv3_3 4,644, conv4_1 1,836" in why


def test_node_lists():
    from fpdeep_hw.build import _nodes_arg
    assert _nodes_arg("4") == [4]
    assert _nodes_arg("0:2") == [0, 1, 2]
    assert _nodes_arg("5,1:2,2") == [1, 2, 5]


def test_refused_plan_for_other_board(built, tmp_path):
    out = tmp_path / "out"
    _assert_refused(_cli("--plan", str(built["plan_file"]), "--board", "kcu105", "--node", "0",
                         "--out", str(out)), out,
                    "board: 'vc709': the plan was made for board 'vc709', not 'kcu105'")
    _assert_refused(_cli("--plan", str(built["plan_file"]), "--node", "1", "--out", str(out)),
                    out, "--node: 1: outside the plan: nodes 0..0")


def test_unsupported_x_and_lending():
    from fpdeep_hw.build import unsupported
    net = load_network("tiny")
    plan = map_network(net, load_board("vc709"), 1, batch=2, max_row_lanes=8)
    probs = unsupported(plan, 0, net)
    assert any(".engines." in f and f.endswith(".x") and v > 1 for f, v, _, _ in probs)
    assert unsupported(small_plan(), 0, net) == []


def test_master_words_over_module_inputs(monkeypatch, tmp_path):
    """A node whose off-chip master copies' words (a row of a weight set each, as the build
    folds them) exceed the input bits of one Amaranth module is refused from the plan, and a
    node whose inputs exceed them once built is refused before anything is written; the limit
    is lowered here so that the small node meets it."""
    from fpdeep_hw import build
    from fpdeep_map.errors import FpdeepError
    net, plan = load_network("tiny"), small_plan(batch=1)
    words = {s.layer: 0 for s in plan.node_plans[0].segments}
    assert build.unsupported(plan, 0, net) == []
    monkeypatch.setattr(build, "MAX_INPUT_BITS", 100)
    (field, total, why, tag), = build.unsupported(plan, 0, net)
    assert tag == "master words" and field.startswith("node_plans[0].segments[")
    assert field.endswith("].master_store") and total > 100
    for layer in words:
        words[layer] = int(re.search(rf"{layer} ([\d,]+)", why).group(1).replace(",", ""))
    assert sum(words.values()) == total and "= " + f"{total:,} input bits" in why
    # the words are the master ports' as the build folds them
    from amaranth.hdl import Fragment

    from fpdeep_hw.node.top import NodeTop
    from sim.golden.train import init_weights
    top = NodeTop(plan, 0, net, lr=0.125, init_master=init_weights(net, 0, plan.numerics),
                  master_burst=build.BUILD_MASTER_BURST,
                  master_prefetch=build.BUILD_MASTER_PREFETCH,
                  master_fold=build.BUILD_MASTER_FOLD,
                  memory_word_bits=build.memory_word_bits(load_board(plan.board)))
    Fragment.get(top, None)
    assert {nl.name: top.memory_map[nl.mem_master]["word_bits"] for nl in top.layers} == words
    # the plan's words within the limit, the module's inputs (links, memory ports) over it
    monkeypatch.setattr(build, "MAX_INPUT_BITS", total)
    assert build.unsupported(plan, 0, net) == []

    def refuse():
        with pytest.raises(FpdeepError, match=r"node_plans\[0\]: 0: the node module would have "
                                              r"[\d,]+ input bits \(.*\), above the "
                                              + f"{total:,}"):
            build.build_node(plan, 0, net, "vc709", tmp_path / "out", label="p")
    refuse()
    assert not any((tmp_path / "out").rglob("*.v"))
    # the refused node's blocks are not elaboratables left unused (an UnusedElaboratable
    # warning, an error here, when they are collected)
    import gc
    gc.collect()


def test_unchecked_nir_values_same_text(monkeypatch):
    """The build's netlist without Amaranth's per-net checks and bit-by-bit values, emitted with
    the build's RTLIL emitter, gives the same RTLIL text as Amaranth's own."""
    import contextlib

    from amaranth.back import rtlil

    from fpdeep_hw import build
    from fpdeep_hw.node.top import NodeTop
    plan, net = small_plan(batch=1), load_network("tiny")

    def node():
        return NodeTop(plan, 0, net, lr=0.125,
                       init_master=build.node_init_weights(plan, 0, net, 0))
    fast = build.rtlil_convert(node(), name="n")
    monkeypatch.setattr(build, "_unchecked_nir_values", contextlib.nullcontext)
    monkeypatch.setattr(build, "_rtlil_emitter", lambda field_wires: rtlil.ModuleEmitter)
    slow = build.rtlil_convert(node(), name="n")
    assert fast == slow and len(fast) > 1_000_000


def test_field_wires_are_aliases():
    """Without field wires (the build) the RTLIL text is the one with them minus exactly the
    fields' alias wires and their ``connect`` lines: names only, the same cells and nets."""
    from fpdeep_hw import build
    from fpdeep_hw.node.top import NodeTop
    plan, net = small_plan(batch=1), load_network("tiny")

    def node():
        return NodeTop(plan, 0, net, lr=0.125,
                       init_master=build.node_init_weights(plan, 0, net, 0))
    with_fields = build.rtlil_convert(node(), name="n", field_wires=True)
    without = build.rtlil_convert(node(), name="n", field_wires=False)
    field = r"\\[A-Za-z_][A-Za-z0-9_$]*(?:\[\d+\]|\.[A-Za-z_]\w*)\S*"
    alias = re.compile(rf"^ *(?:wire (?:width \d+ )?(?:signed )?{field}|connect {field} .*)$")
    lines = [line for line in with_fields.split("\n") if line]     # blank lines: layout only
    kept = [line for line in lines if not alias.match(line)]
    assert len(lines) - len(kept) > 1_000
    assert kept == [line for line in without.split("\n") if line]


def test_field_wires_option(monkeypatch, tmp_path):
    """``--field-wires`` reaches the conversion (``build_node(field_wires=True)``); the default
    build leaves the fields' alias wires out."""
    from fpdeep_hw import build
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(small_plan(batch=1).to_yaml())
    seen = []

    def fake(plan, k, network, board, out, **kw):
        seen.append(kw["field_wires"])
        raise SystemExit(0)
    monkeypatch.setattr(build, "build_node", fake)
    for extra, want in (([], False), (["--field-wires"], True)):
        with pytest.raises(SystemExit):
            build.main(["--plan", str(plan_file), "--node", "0", "--out", str(tmp_path / "o"),
                        "--quiet", *extra])
        assert seen[-1] is want


def test_fix_constant_always():
    from fpdeep_hw.build import fix_constant_always
    text = ("module a(clk, o);\n  input clk;\n  output [3:0] o;\n  reg [7:0] r;\n"
            "  always @*\n    r[7:4] = 4'h0;\n  always @*\n    r[3:0] = {clk, 3'h0};\n"
            "  assign o = r[7:4];\nendmodule\n")
    fixed, n = fix_constant_always(text)
    assert n == 1
    assert ("  reg fpdeep_comb_init = 0;\n  input clk;" in fixed
            and "  always @* begin\n    if (fpdeep_comb_init) begin end\n    r[7:4] = 4'h0;\n  end\n"
            in fixed)
    assert "  always @*\n    r[3:0] = {clk, 3'h0};\n" in fixed      # not a constant: untouched
    assert fix_constant_always(fixed) == (fixed, 0)


def _verilog_modules(text):
    """``{module name: text}``; Yosys's ``$auto$...$N`` names numbered per module (their ``N``
    counts over the whole Yosys run)."""
    out = {}
    for body in re.findall(r"^module .*?^endmodule\n", text, re.M | re.S):
        name = re.match(r"module (\\\S+|[^\s(]+)", body).group(1)
        autos = {}
        body = re.sub(r"\\\$auto\$\S*?\$\d+",
                      lambda m: autos.setdefault(m.group(0), f"AUTO{len(autos)}"), body)
        assert name not in out
        out[name] = body
    return out


def test_rtlil_to_verilog_in_parts():
    """The build writes the Verilog with several Yosys processes, each on a part of the
    modules: the parts joined give every module as one process does (up to the numbers of
    Yosys's ``$auto$`` names, which count over a run)."""
    from amaranth.hdl import Module
    from amaranth.lib import fifo

    from fpdeep_hw.build import rtlil_chunks, rtlil_convert, rtlil_to_verilog
    from fpdeep_hw.compute.conv_engine import ConvTile

    class Three(wiring.Component):
        a: wiring.In(8)
        o: wiring.Out(8)

        def elaborate(self, platform):
            m = Module()
            m.submodules.tile = ConvTile(k=3)
            m.submodules.q = q = fifo.SyncFIFOBuffered(width=8, depth=16)
            m.submodules.r = r = fifo.SyncFIFO(width=8, depth=4)
            m.d.comb += [q.w_data.eq(self.a), q.w_en.eq(1), r.w_data.eq(q.r_data),
                         r.w_en.eq(q.r_rdy), q.r_en.eq(r.w_rdy), r.r_en.eq(1),
                         self.o.eq(r.r_data)]
            return m
    text = rtlil_convert(Three(), name="three")
    chunks = rtlil_chunks(text, 3)
    assert len(chunks) == 3 and sorted("".join(chunks)) == sorted(text)
    assert len(rtlil_chunks(text, 100)) == text.count("\nmodule ") + text.startswith("module ")
    whole = _verilog_modules(rtlil_to_verilog(text, jobs=1))
    assert len(whole) >= 4
    assert _verilog_modules(rtlil_to_verilog(text, jobs=3)) == whole
    with pytest.raises(ValueError, match="not a sequence of modules"):
        rtlil_chunks("wire \\x\n" + text, 2)


def test_board_top_arguments():
    from types import SimpleNamespace

    from fpdeep_hw.board_top import BoardTop
    node = SimpleNamespace(plan=None, node=0)
    with pytest.raises(ValueError, match=r"^BoardTop host must be 'dma' or 'ports', not 'pcie'$"):
        BoardTop(node, host="pcie")
    with pytest.raises(ValueError, match=r"^BoardTop links must be 'phy' or 'ports', not 'x'$"):
        BoardTop(node, links="x")


def test_chain_lanes_for():
    from boards.platforms import platform_for
    from fpdeep_hw.board_top import chain_lanes_for
    # (lane, reference clock, side whose PHY owns that clock or None)
    assert chain_lanes_for(platform_for("vc709")(), ["prev"]) == {
        "prev": (("sfp", 0), ("sfp_refclk", 0), None)}
    assert chain_lanes_for(platform_for("kcu105")(), ["prev", "next"]) == {
        "prev": (("sfp", 0), ("sfp_refclk", 0), None),
        "next": (("fmc_hpc_dp", 0), ("fmc_hpc_refclk", 0), None)}
    assert chain_lanes_for(platform_for("alveo-u280")(), ["prev", "next"]) == {
        "prev": (("qsfp0", 0), ("qsfp0_refclk", 0), None),
        "next": (("qsfp1", 0), ("qsfp1_refclk", 0), None)}
    # VC709: the four SFP+ lanes share one clock in quad 113; the next neighbour's core shares it
    assert chain_lanes_for(platform_for("vc709")(), ["prev", "next"]) == {
        "prev": (("sfp", 0), ("sfp_refclk", 0), None),
        "next": (("sfp", 1), ("sfp_refclk", 0), "prev")}


# ---- a node of a multi-node plan: chain links ---------------------------------------------------

def two_node_plan(batch=1):
    # tiny on 2 VC709 with whole layers per node: node 0 conv1 conv2, node 1 conv3 fc4
    return map_network(load_network("tiny"), load_board("vc709"), 2, batch=batch,
                       max_row_lanes=1, split="layers", dsp_budget=0.04)


@pytest.fixture(scope="module")
def built2(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build2")
    plan = two_node_plan()
    plan_file = tmp / "plan.yaml"
    plan_file.write_text(plan.to_yaml())
    out = tmp / "out"
    proc = _cli("--plan", str(plan_file), "--all", "--jobs", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return {"plan": plan, "plan_file": plan_file, "out": out, "proc": proc,
            "folders": [out / "tiny-vc709x2" / f"node{k}" for k in range(2)]}


def test_multi_node_files(built2):
    plan = built2["plan"]
    assert [[s.layer for s in n.segments] for n in plan.node_plans] == [["conv1", "conv2"],
                                                                        ["conv3", "fc4"]]
    for k, folder in enumerate(built2["folders"]):
        report = json.loads((folder / "report.json").read_text())
        assert report["layers"] == [s.layer for s in plan.node_plans[k].segments]
        node = yaml.safe_load((folder / "node.yaml").read_text())
        assert [(l["src"], l["dst"]) for l in node["links"]] == [(0, 1), (1, 0)]
        top_v = (folder / "top.v").read_text()
        # one Aurora black box on the first SFP+ cage, the framers' words through async FIFOs
        assert top_v.count("aurora_64b66b_0 ") == 1 and "fpdeep_host_dma " in top_v
        side = "next" if k == 0 else "prev"
        assert f".{side}_tx__payload(" in top_v and f".{side}_rx__valid(" in top_v
        xdc = (folder / "top.xdc").read_text()
        assert all(pin in xdc for pin in ("AN2", "AN1", "AM8", "AM7", "AH8", "AH7"))
        node_v = (folder / "fpdeep_node.v").read_text()
        head = node_v[node_v.index("module fpdeep_node("):]
        head = head[:head.index(");")]
        assert f"{side}_tx__payload" in head and f"{side}_rx__payload" in head
        assert ("images__payload" in head) == (k == 0)
        assert ("labels__payload" in head) == (k == 1) and ("loss_error" in head) == (k == 1)
        assert "a_out__payload" not in head and "e_in__payload" not in head


def test_board_tops_elaborate(built, built2, tmp_path):
    """Each build's ``top.v`` elaborates with its ``fpdeep_node.v`` (ports and widths agree),
    with a memory controller black box per master copy's ring."""
    assert check_top_elaborates(built["folder"], tmp_path) == [
        "BUFGCTRL", "IBUFDS", "OBUFT", "STARTUPE2", "fpdeep_host_dma", "fpdeep_mem_ctrl"]
    assert (built["folder"] / "top.v").read_text().count("fpdeep_mem_ctrl ") == 4
    for k, folder in enumerate(built2["folders"]):
        work = tmp_path / f"n{k}"
        work.mkdir()
        assert check_top_elaborates(folder, work) == [
            "BUFGCTRL", "FDPE", "IBUFDS", "OBUFT", "STARTUPE2", "aurora_64b66b_0",
            "fpdeep_host_dma", "fpdeep_mem_ctrl"]


def test_multi_node_lint(built2, tmp_path):
    exe = shutil.which("verilator")
    if exe is None:
        pytest.skip("verilator is not installed")
    for folder in built2["folders"]:
        cmd = [exe, "--lint-only", "-Wall", "--top-module", "fpdeep_node", str(WAIVERS),
               str(folder / "fpdeep_node.v")]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        report = (proc.stdout + proc.stderr).strip()
        assert proc.returncode == 0 and "%Warning" not in report and "%Error" not in report, \
            report


def test_middle_node_kcu105(tmp_path):
    """A node with both neighbours (tiny on 3 KCU105, node 1: conv2): two PHYs on lanes with
    different reference clocks (SFP+ 0, FMC HPC DP0), one-word link streams (C = 4); lint."""
    out = tmp_path / "out"
    proc = _cli("--board", "kcu105", "--net", "tiny", "--nodes", "3", "--split", "layers",
                "--dsp-budget", "0.02", "--batch", "2", "--node", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    folder = out / "tiny-kcu105x3" / "node1"
    assert json.loads((folder / "report.json").read_text())["layers"] == ["conv2"]
    top_v = (folder / "top.v").read_text()
    assert top_v.count("aurora_64b66b_0 ") == 2
    xdc = (folder / "top.xdc").read_text()
    assert all(f'"{p}' in xdc for p in ("sfp_0__tx__p", "sfp_refclk_0__p", "fmc_hpc_dp_0__tx__p",
                                         "fmc_hpc_refclk_0__p"))
    node_v = (folder / "fpdeep_node.v").read_text()
    head = node_v[node_v.index("module fpdeep_node("):]
    head = head[:head.index(");")]
    for port in ("prev_tx__payload", "prev_rx__payload", "next_tx__payload", "next_rx__payload"):
        assert port in head
    assert "images__payload" not in head and "labels__payload" not in head
    assert "aurora_64b66b_0" in check_top_elaborates(folder, tmp_path)
    exe = shutil.which("verilator")
    if exe is None:
        pytest.skip("verilator is not installed")
    proc = subprocess.run([exe, "--lint-only", "-Wall", "--top-module", "fpdeep_node",
                           str(WAIVERS), str(folder / "fpdeep_node.v")], capture_output=True,
                          text=True, cwd=tmp_path, timeout=600)
    report = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and "%Warning" not in report and "%Error" not in report, report


def test_middle_node_vc709(tmp_path):
    """A middle node on VC709 (tiny on 3 VC709 with whole layers, node 1: conv2): its two PHYs
    on SFP+ lanes 0 and 1 of quad 113 share ``sfp_refclk`` 0 -- one owner core with the
    reference clock pins, one core without shared logic fed from the owner; lint."""
    out = tmp_path / "out"
    proc = _cli("--board", "vc709", "--net", "tiny", "--nodes", "3", "--split", "layers",
                "--dsp-budget", "0.01", "--node", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    folder = out / "tiny-vc709x3" / "node1"
    assert json.loads((folder / "report.json").read_text())["layers"] == ["conv2"]
    top_v = (folder / "top.v").read_text()
    cores = re.findall(r"^  (aurora_64b66b\w*) core \(", top_v, re.M)
    assert sorted(cores) == ["aurora_64b66b_0", "aurora_64b66b_0_shared"]
    assert top_v.count(".gt_refclk1_p(") == 1 and top_v.count(".refclk1_in(") == 1
    # the owner's exports and the sharer's inputs meet on the same nets of the top module
    insts = {name: dict(re.findall(r"\.(\w+)\(([^()]*?)\)", body)) for name, body in
             re.findall(r"^  \\top\.(phy_prev|phy_next) +\w+ \((.*?)\n  \);", top_v,
                        re.S | re.M)}
    assert set(insts) == {"phy_prev", "phy_next"}
    for port in ("refclk_out", "sync_clk", "mmcm_not_locked", "qpll_clk", "qpll_refclk",
                 "qpll_lock", "qpll_refclk_lost"):
        assert insts["phy_prev"][port] == insts["phy_next"][port], port
    assert "sfp_refclk_0__p" in insts["phy_prev"] and "sfp_refclk_0__p" not in insts["phy_next"]
    xdc = (folder / "top.xdc").read_text()
    assert all(f'"{p}' in xdc for p in ("sfp_0__tx__p", "sfp_1__tx__p", "sfp_1__rx__n",
                                         "sfp_refclk_0__p"))
    node_v = (folder / "fpdeep_node.v").read_text()
    head = node_v[node_v.index("module fpdeep_node("):]
    head = head[:head.index(");")]
    for port in ("prev_tx__payload", "prev_rx__payload", "next_tx__payload", "next_rx__payload"):
        assert port in head
    assert {"aurora_64b66b_0", "aurora_64b66b_0_shared"} <= set(check_top_elaborates(folder,
                                                                                     tmp_path))
    exe = shutil.which("verilator")
    if exe is None:
        pytest.skip("verilator is not installed")
    proc = subprocess.run([exe, "--lint-only", "-Wall", "--top-module", "fpdeep_node",
                           str(WAIVERS), str(folder / "fpdeep_node.v")], capture_output=True,
                          text=True, cwd=tmp_path, timeout=600)
    report = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and "%Warning" not in report and "%Error" not in report, report


def test_vc709_default_node_4_is_buildable():
    """Node 4 of the default plan (VGG-16 on 15 VC709): nothing the generator refuses -- its
    two chain neighbours fit VC709's SFP+ lanes, its off-chip Act-RAMs and its lending chains
    (it keeps sets of conv5_2 for node 13, passes conv5_1 / conv5_2 sets on) are built. (The
    build itself is the benchmark ``bench/bench_build.py``, not a test: minutes of CPU.)"""
    from fpdeep_hw.build import lane_problems, unsupported
    vgg = load_network("vgg16")
    plan = map_network(vgg, load_board("vc709"), 15, batch=128, max_row_lanes=1)
    assert unsupported(plan, 4, vgg) == []
    assert lane_problems(plan, 4, "vc709", vgg) == []


def test_lane_problems(monkeypatch):
    """``lane_problems``: none for a VC709 middle node; a board with fewer lanes than the node
    has neighbours gives the message naming the node, its neighbours and the lanes."""
    import boards.platforms
    from fpdeep_hw.build import lane_problems
    net = load_network("tiny")
    plan = map_network(net, load_board("vc709"), 3, batch=1, max_row_lanes=1, split="layers",
                       dsp_budget=0.01)
    assert [lane_problems(plan, k, "vc709", net) for k in range(3)] == [[], [], []]
    assert lane_problems(plan, 1, "kcu105", net) == []

    class OneLane:
        chain_lanes = (("sfp", 0, ("sfp_refclk", 0)),)
        gt_channel_sites = {("sfp", 0): "GTHE2_CHANNEL_X1Y13"}

    monkeypatch.setattr(boards.platforms, "platform_for", lambda board: OneLane)
    assert lane_problems(plan, 0, "vc709", net) == []
    assert lane_problems(plan, 1, "vc709", net) == [(
        "board", "vc709", "node 1 has 2 chain neighbours: OneLane: no chain lane left for the "
        "next neighbour: a node with 2 neighbours needs 2 lanes, each with a reference clock of "
        "its own or in the GT quad of the lane owning its clock, but the platform has sfp0",
        "chain lanes")]


class _Pair(Elaboratable):
    """Two LinkedNodes of a 2-node plan joined by link models (one per direction)."""

    def __init__(self, plan, network, *, latency=12, words_per_cycle=Fraction(3, 4)):
        from fpdeep_hw.board_top import LinkedNode
        from fpdeep_hw.node.top import NodeTop
        from sim.golden.train import init_weights
        from sim.link_model import LinkModel
        from amaranth.hdl import Signal
        from fpdeep_hw.build import BUILD_MASTER_BURST, BUILD_MASTER_PREFETCH
        init = init_weights(network, 0, plan.numerics)
        self.nodes = [LinkedNode(NodeTop(plan, k, network, lr=0.125, init_master=init,
                                         master_burst=BUILD_MASTER_BURST,
                                         master_prefetch=BUILD_MASTER_PREFETCH))
                      for k in range(2)]
        self.wires = [LinkModel(latency=latency, words_per_cycle=words_per_cycle)
                      for _ in range(2)]
        self.flush = Signal()

    def elaborate(self, platform):
        from amaranth.hdl import Module
        from amaranth.lib import wiring
        m = Module()
        n0, n1 = self.nodes
        w01, w10 = self.wires
        m.submodules.n0, m.submodules.n1 = n0, n1
        m.submodules.w01, m.submodules.w10 = w01, w10
        wiring.connect(m, n0.next_tx, w01.i)
        wiring.connect(m, w01.o, n1.prev_rx)
        wiring.connect(m, n1.prev_tx, w10.i)
        wiring.connect(m, w10.o, n0.next_rx)
        # node 1's flush: once as many images entered it as entered node 0 (the host's rule)
        m.d.comb += [n0.flush.eq(self.flush),
                     n1.flush.eq(self.flush & (n1.images_in == n0.images_in))]
        return m


def pair_trace(pair, pixels, labels, *, p_gap, seed, tail):
    """Per node, per cycle: every input port's value and every output port's value."""
    from amaranth.hdl import Value
    from amaranth.sim import Simulator

    from fpdeep_hw.board_top import node_instance_ports
    rng = random.Random(seed)
    n0, n1 = pair.nodes
    ports = [[(name, d, Value.cast(v)) for name, (d, v) in node_instance_ports(n).items()]
             for n in pair.nodes]
    recs = [[], []]
    batches = len(labels) // n1.node_top.batch

    async def bench(ctx):
        pi = li = 0
        done_at = None
        cycle = 0
        while done_at is None or cycle < done_at + tail:
            iv = int(pi < len(pixels) and rng.random() >= p_gap)
            lv = int(li < len(labels) and rng.random() >= p_gap)
            ctx.set(n0.images.valid, iv)
            ctx.set(n0.images.payload, pixels[min(pi, len(pixels) - 1)])
            ctx.set(n1.labels.valid, lv)
            ctx.set(n1.labels.payload, labels[min(li, len(labels) - 1)])
            ctx.set(pair.flush, int(pi >= len(pixels)))
            for k in range(2):
                ins = tuple(ctx.get(v) & ((1 << len(v)) - 1) for _, d, v in ports[k] if d == "i")
                outs = tuple(ctx.get(v) & ((1 << len(v)) - 1) for _, d, v in ports[k] if d == "o")
                recs[k].append((ins, outs))
            if iv and ctx.get(n0.images.ready):
                pi += 1
            if lv and ctx.get(n1.labels.ready):
                li += 1
            if done_at is None and min(ctx.get(n.updates) for n in pair.nodes) >= batches:
                done_at = cycle
            await ctx.tick()
            cycle += 1
            assert cycle < 60_000, "the nodes did not finish their updates"

    sim = Simulator(pair)
    sim.add_clock(1e-8)
    for k, n in enumerate(pair.nodes):
        attach_drams(sim, n, seed=seed + 10 * k)
    sim.add_testbench(bench)
    sim.run()
    return ports, recs


GENERIC_TB = """
`timescale 1ns/1ps
module tb;
  reg clk = 0, rst = 0;
{REGS}
{WIRES}
  reg [{SW}-1:0] stim [0:{N}-1];
  integer n, f;
  fpdeep_node dut(.clk(clk), .rst(rst),
{CONNS});
  always #5 clk = ~clk;
  initial begin
    $readmemh("stim.hex", stim);
    f = $fopen("out.txt", "w");
    #1;
    for (n = 0; n < {N}; n = n + 1) begin
      {{{INS}}} = stim[n];
      #1;
      $fwrite(f, "{FMT}\\n", {OUTS});
      @(posedge clk);
      #1;
    end
    $fclose(f);
    $finish;
  end
endmodule
"""


def icarus_replay(verilog_file, ports, rec, workdir):
    """Replay the recorded inputs into the Verilog of the node; its outputs per cycle."""
    ins = [(n, len(v)) for n, d, v in ports if d == "i" and n not in ("clk", "rst")]
    outs = [(n, len(v)) for n, d, v in ports if d == "o"]
    sw = sum(w for _, w in ins)
    lines = []
    for iv, _ in rec:
        word = 0
        for (_, w), v in zip(ins, iv):
            word = (word << w) | v
        lines.append(f"{word:x}")
    (workdir / "stim.hex").write_text("\n".join(lines) + "\n")
    tb = GENERIC_TB.format(
        REGS="\n".join(f"  reg [{w - 1}:0] i_{n} = 0;" for n, w in ins),
        WIRES="\n".join(f"  wire [{w - 1}:0] o_{n};" for n, w in outs),
        SW=sw, N=len(rec),
        CONNS=",\n".join([f"    .{n}(i_{n})" for n, _ in ins] +
                         [f"    .{n}(o_{n})" for n, _ in outs]),
        INS=", ".join(f"i_{n}" for n, _ in ins),
        FMT=" ".join("%0d" for _ in outs), OUTS=", ".join(f"o_{n}" for n, _ in outs))
    (workdir / "tb.v").write_text(tb)
    comp = subprocess.run(["iverilog", "-g2005", "-o", "tb.vvp", "-s", "tb", "tb.v",
                           str(verilog_file)], cwd=workdir, capture_output=True, text=True,
                          timeout=600)
    assert comp.returncode == 0, comp.stdout + comp.stderr
    assert "found no sensitivities" not in comp.stdout + comp.stderr, comp.stdout + comp.stderr
    run = subprocess.run(["vvp", "-n", "tb.vvp"], cwd=workdir, capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr
    # an undefined value ("x", or "X" for a partly undefined one) as None
    return [tuple(int(v) if v.isdigit() else None for v in line.split())
            for line in (workdir / "out.txt").read_text().splitlines()]


def stream_view(names, row):
    """``row`` with the payload of each output stream whose ``valid`` is low set to 0: a
    payload without ``valid`` is not data (in Verilog a FIFO's read register before its first
    read is undefined, in Amaranth's simulation 0: the external-memory ports' write data)."""
    row = list(row)
    for j, name in enumerate(names):
        if name.endswith("__payload"):
            v = name[:-len("payload")] + "valid"
            if v in names and row[names.index(v)] == 0:
                row[j] = 0
    return tuple(row)


@pytest.mark.long
def test_multi_node_icarus_matches_amaranth(built2, tmp_path):
    """Both nodes of tiny on 2 VC709, joined by link models in the Amaranth simulation (1 image,
    batch 1: FP across the link, loss, BP with the errors back across it, both updates); each
    node's Verilog replays its recorded inputs and gives the same outputs at every cycle.
    ``-m long`` (CI time, 60 s): the default run compares one node
    (:func:`test_icarus_matches_amaranth`) and lints both nodes' Verilog with their link ends
    (:func:`test_multi_node_lint`)."""
    if shutil.which("iverilog") is None or shutil.which("vvp") is None:
        pytest.skip("Icarus Verilog is not installed")
    plan = Plan.from_yaml(built2["plan_file"].read_text())
    net = load_network("tiny")
    pair = _Pair(plan, net)
    pixels, labels = _stimulus(None, net, plan.numerics, 1, seed=3)
    ports, recs = pair_trace(pair, pixels, labels, p_gap=0.2, seed=5, tail=40)
    for k in range(2):
        names = [n for n, d, _ in ports[k] if d == "o"]
        outs = [o for _, o in recs[k]]
        side = "next" if k == 0 else "prev"
        # frames crossed the link both ways, none dropped, and the node finished its update
        assert outs[-1][names.index(f"{side}_frames")] > 0
        assert outs[-1][names.index(f"{side}_crc_errors")] == 0
        assert outs[-1][names.index(f"{side}_seq_errors")] == 0
        assert outs[-1][names.index("updates")] == 1 and outs[0][names.index("updates")] == 0
        if k == 1:
            lv, le = names.index("loss_valid"), names.index("loss_error")
            assert sum(o[lv] for o in outs) == 1 and any(o[le] for o in outs if o[lv])
        work = tmp_path / f"node{k}"
        work.mkdir()
        got = icarus_replay(built2["folders"][k] / "fpdeep_node.v", ports[k], recs[k], work)
        assert len(got) == len(outs)
        outs = [stream_view(names, o) for o in outs]
        got = [stream_view(names, o) for o in got]
        first = next((n for n, (a, b) in enumerate(zip(outs, got)) if a != b), None)
        assert first is None, (f"node {k}, cycle {first} of {len(outs)}: "
                               f"Amaranth {dict(zip(names, outs[first]))}, "
                               f"Icarus {dict(zip(names, got[first]))}")


def test_board_top_ports_mode():
    """``BoardTop(host="ports", links="ports")`` of node 1 of the 2-node plan: the host ports the
    node has (labels, no images), its link word streams as ports (``prev_rx.ready`` constant 1),
    LED 3 lit (no PHY), the heartbeat counting; ``links="phy"`` without a platform refuses."""
    from amaranth.hdl import Fragment
    from amaranth.sim import Simulator

    from fpdeep_hw.board_top import BoardTop
    from fpdeep_hw.node.top import NodeTop
    from sim.golden.train import init_weights
    plan, net = two_node_plan(), load_network("tiny")
    init = init_weights(net, 0, plan.numerics)
    # (the master copies' burst ports as ports too: no memory controller black box in a
    # simulation; nothing answers them in these 40 cycles)
    top = BoardTop(NodeTop(plan, 1, net, lr=0.125, init_master=init), host="ports",
                   links="ports", memory="ports")
    names = set(top.signature.members)
    assert {"labels", "flush", "updates", "images_in", "leds", "prev_tx", "prev_rx"} <= names
    assert "images" not in names and "next_tx" not in names
    assert top.has_prev and not top.has_next

    async def bench(ctx):
        for _ in range(40):
            await ctx.tick()
            assert ctx.get(top.prev_rx.ready) == 1
            assert ctx.get(top.leds) & 0b1000
            assert ctx.get(top.prev_tx.valid) == 0      # nothing to send yet
        assert ctx.get(top.updates) == 0 and ctx.get(top.images_in) == 0

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    hw = BoardTop(NodeTop(plan, 0, net, lr=0.125, init_master=init))
    with pytest.raises(ValueError, match=r"^BoardTop: a node with chain neighbours needs a "
                                         r"platform for links='phy'"):
        Fragment.get(hw, None)
    Fragment.get(hw.linked, None).prepare()      # (no unused-elaboratable warnings later)


class _MemNode(wiring.Component):
    """A stand-in node with an external-memory burst port ``mem_act`` (an OffchipActRAM): what
    ``NodeTop`` exposes once off-chip Act-RAMs are built in. ``updates`` sums the words that
    came out; the Act-RAM's output is taken every third cycle so that the ring fills."""

    def __init__(self, plan):
        from amaranth.hdl import signed
        from amaranth.lib import data, stream
        from amaranth.lib.wiring import In, Out

        from fpdeep_hw.memory.offchip_act_ram import OffchipActRAM
        from fpdeep_map.numerics import FixedFormat
        self.plan, self.node, self.link_ports, self.link_items, self.loss = plan, 0, {}, {}, None
        self.ram = OffchipActRAM(fmt=FixedFormat(16, 8), lanes=2, depth=256, burst=4,
                                 addr_width=12, prefetch=2)
        super().__init__({
            "images": In(stream.Signature(data.ArrayLayout(signed(16), 2))),
            "flush": In(1), "updates": Out(32), "images_in": Out(32),
            "mem_act": Out(self.ram.mem.signature),
        })

    def elaborate(self, platform):
        from amaranth.hdl import Module, Signal, Value
        from amaranth.lib import wiring
        m = Module()
        m.submodules.ram = ram = self.ram
        wiring.connect(m, wiring.flipped(self.images), ram.i)
        wiring.connect(m, ram.mem, wiring.flipped(self.mem_act))
        phase = Signal(2)
        m.d.sync += phase.eq(phase + 1)
        m.d.comb += ram.o.ready.eq(phase == 0)
        with m.If(ram.o.valid & ram.o.ready):
            m.d.sync += self.updates.eq(self.updates + Value.cast(ram.o.payload))
        with m.If(self.images.valid & self.images.ready):
            m.d.sync += self.images_in.eq(self.images_in + 1)
        return m


def test_board_top_memory_ports():
    """A node member ``mem_*`` with the burst-port signature gets a ``fpdeep_mem_ctrl`` black
    box on the board (``memory="controller"``) or becomes a port (``memory="ports"``), served
    here by the memory model: every word comes back through the ring."""
    from types import SimpleNamespace

    from amaranth.sim import Simulator

    from boards.platforms import platform_for
    from fpdeep_hw.board_top import BoardTop
    from sim.dram_model import DRAMModel
    from sim.streams import stream_source
    plan = small_plan()
    top = BoardTop(_MemNode(plan))
    assert top.memory_ports == ["mem_act"]
    text = platform_for("vc709")().build(top, name="top", do_build=False).files["top.v"]
    assert "fpdeep_mem_ctrl ctrl (" in text and ".ar_data(" in text and ".r_data(" in text
    with pytest.raises(ValueError, match=r"^BoardTop memory must be 'controller' or 'ports', "
                                         r"not 'x'$"):
        BoardTop(SimpleNamespace(plan=None, node=0), memory="x")

    node = _MemNode(plan)
    top = BoardTop(node, host="ports", links="ports", memory="ports")
    rng = random.Random(4)
    words = [[rng.randint(-2**15, 2**15 - 1) for _ in range(2)] for _ in range(120)]
    model = DRAMModel(top.mem_act, burst=4, words=node.ram.ext_words, latency=(3, 30),
                      p_stall=0.3, seed=2)

    async def bench(ctx):
        await stream_source(top.images, words)(ctx)
        for _ in range(600):
            await ctx.tick()
        total = sum((w[0] & 0xFFFF) | (w[1] & 0xFFFF) << 16 for w in words) & 0xFFFFFFFF
        assert ctx.get(top.updates) == total
        assert model.bursts_written > 0 and model.words_read == model.words_written

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(model.run, background=True)
    sim.add_testbench(bench)
    sim.run()


def test_split_layer_nodes_build_and_lint(tmp_path):
    """tiny on 2 VC709 split by channels (conv2 cut between the nodes): both nodes build, their
    chain framers carry the split's streams (partial errors back), and the Verilog lints."""
    plan = map_network(load_network("tiny"), load_board("vc709"), 2, batch=1, max_row_lanes=1,
                       dsp_budget=0.04)
    splits = {s.split for n in plan.node_plans for s in n.segments}
    assert splits & {"icp", "ocp"}, splits
    paths = {s.path for e in plan.links for s in e.streams}
    assert paths & {"partial_sums", "partial_errors"}, paths
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(plan.to_yaml())
    out = tmp_path / "out"
    proc = _cli("--plan", str(plan_file), "--all", "--jobs", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    exe = shutil.which("verilator")
    if exe is None:
        pytest.skip("verilator is not installed")
    for k in range(2):
        folder = out / "tiny-vc709x2" / f"node{k}"
        cmd = [exe, "--lint-only", "-Wall", "--top-module", "fpdeep_node", str(WAIVERS),
               str(folder / "fpdeep_node.v")]
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        report = (run.stdout + run.stderr).strip()
        assert run.returncode == 0 and "%Warning" not in report and "%Error" not in report, \
            report


def test_offchip_act_ram_nodes_build_and_lint(tmp_path):
    """tiny on 2 VC709 with conv2's and conv3's Act-RAMs and conv2's mask and argmax stores
    forced off chip, and conv3's gradient accumulators (the plan rewritten by
    ``sim.train.force_offchip_act_ram``, ``force_offchip_stores`` and ``force_offchip_lgb``,
    saved and built with ``--plan``): each node has a ``mem_<layer>`` burst port per Act-RAM
    (node 0 also ``mem_conv2_mask``, ``mem_conv2_arg``; node 1 ``mem_conv3_lgb``), the board
    top a ``fpdeep_mem_ctrl`` black box for each; the board tops elaborate with their nodes and
    the nodes' Verilog lints."""
    from fpdeep_hw.build import unsupported
    from sim.train import force_offchip_act_ram, force_offchip_lgb, force_offchip_stores
    # the default VGG-16 node 4 keeps every Act-RAM off chip: no longer a refusal
    vgg = load_network("vgg16")
    default = map_network(vgg, load_board("vc709"), 15, batch=128, max_row_lanes=1)
    assert all(s.act_ram.offchip_words > 0 for s in default.node_plans[4].segments)
    assert not [p for p in unsupported(default, 4, vgg) if "act_ram" in p[0]]
    plan = two_node_plan()
    assert all(s.act_ram.offchip_words == 0 for n in plan.node_plans for s in n.segments)
    assert force_offchip_act_ram(plan, ["conv2", "conv3"]) == [(0, "conv2"), (1, "conv3")]
    assert force_offchip_stores(plan, ["conv2"]) == [(0, "conv2", "mask"), (0, "conv2", "arg")]
    assert force_offchip_lgb(plan, ["conv3", "fc4"]) == [(1, "conv3")]
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(plan.to_yaml())
    out = tmp_path / "out"
    proc = _cli("--plan", str(plan_file), "--all", "--jobs", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    exe = shutil.which("verilator")
    for k, layer in enumerate(("conv2", "conv3")):
        folder = out / "tiny-vc709x2" / f"node{k}"
        node_v = (folder / "fpdeep_node.v").read_text()
        head = node_v[node_v.index("module fpdeep_node("):]
        head = head[:head.index(");")]
        ports = set(re.findall(r"\b(mem_\w+?)__(?:aw|w|b|ar|r)__\w+", head))
        want = {f"mem_{layer}"} | ({"mem_conv2_mask", "mem_conv2_arg"} if k == 0 else
                                   {"mem_conv3_lgb"})
        # (and every layer's master copy)
        want |= {f"mem_{s.layer}_master" for s in plan.node_plans[k].segments}
        assert ports == want, ports
        notes = json.loads((folder / "report.json").read_text())["notes"]
        # fc4's LGB (off chip in the plan) stays on chip and is noted; conv3's is not
        assert [n.split(":")[0] for n in notes if "gradient words" in n] == (
            ["fc4"] if k == 1 else []), notes
        top_v = (folder / "top.v").read_text()
        assert top_v.count("fpdeep_mem_ctrl ") == len(want)
        assert all(f"ctrl_{p}" in top_v for p in want)
        work = tmp_path / f"n{k}"
        work.mkdir()
        assert "fpdeep_mem_ctrl" in check_top_elaborates(folder, work)
        if exe is None:
            continue
        cmd = [exe, "--lint-only", "-Wall", "--top-module", "fpdeep_node", str(WAIVERS),
               str(folder / "fpdeep_node.v")]
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        report = (run.stdout + run.stderr).strip()
        assert run.returncode == 0 and "%Warning" not in report and "%Error" not in report, \
            report
    if exe is None:
        pytest.skip("verilator is not installed (the board tops elaborate)")


def _mac_ram_module(name):
    """Verilog of a module with one DSP48 multiplier and one 1,024 x 36 block RAM."""
    return f"""
module {name}(input clk, input [15:0] a, input [15:0] b, input [9:0] addr, input we,
              output reg [31:0] p, output reg [35:0] q);
  reg [35:0] mem [0:1023];
  always @(posedge clk) begin
    p <= $signed(a) * $signed(b);
    if (we) mem[addr] <= {{a, b, 4'b0}};
    q <= mem[addr];
  end
endmodule
"""


@pytest.mark.skipif(shutil.which("yosys") is None, reason="no native Yosys on the PATH")
def test_synth_counts_native_yosys(tmp_path):
    """``--yosys PROGRAM`` runs a native Yosys for ``--synth`` (the WebAssembly one stops at
    4 GB): the counts of a small node module, one DSP48 multiplier and one block RAM."""
    from fpdeep_hw.build import NODE_MODULE, synth_counts
    (tmp_path / f"{NODE_MODULE}.v").write_text(_mac_ram_module(NODE_MODULE))
    counts = synth_counts(tmp_path / f"{NODE_MODULE}.v", "xc7", tmp_path, "yosys")
    assert counts["yosys"] == shutil.which("yosys")
    assert counts["dsp"] == 1
    assert counts["bram36"] == 1, counts["cells"]
    assert (tmp_path / "yosys.log").exists()


@pytest.mark.skipif(shutil.which("yosys") is None, reason="no native Yosys on the PATH")
def test_synth_counts_hierarchy(tmp_path):
    """``--synth-hierarchy``: the hierarchy kept, each distinct module synthesized once, the
    counts summed over the instances: a module with a DSP48 multiplier and a block RAM used
    twice gives the flat count (2 and 2)."""
    from fpdeep_hw.build import NODE_MODULE, synth_counts
    text = _mac_ram_module("leaf") + f"""
module {NODE_MODULE}(input clk, input [15:0] a, input [15:0] b, input [15:0] c,
                     input [15:0] d, input [9:0] addr, input we, output [31:0] p0,
                     output [31:0] p1, output [35:0] q0, output [35:0] q1);
  leaf u0(.clk(clk), .a(a), .b(b), .addr(addr), .we(we), .p(p0), .q(q0));
  leaf u1(.clk(clk), .a(c), .b(d), .addr(~addr), .we(we), .p(p1), .q(q1));
endmodule
"""
    counts = {}
    for flatten in (True, False):
        work = tmp_path / str(flatten)
        work.mkdir()
        (work / f"{NODE_MODULE}.v").write_text(text)
        counts[flatten] = synth_counts(work / f"{NODE_MODULE}.v", "xc7", work, "yosys",
                                       flatten=flatten)
        assert counts[flatten]["flatten"] is flatten
    assert counts[False]["dsp"] == counts[True]["dsp"] == 2
    assert counts[False]["bram36"] == counts[True]["bram36"] == 2, counts[False]["cells"]
    # the hierarchy's instance counts are not cells (the registers went into the DSP48 and
    # the block RAM: no flip-flops either way)
    assert "leaf" not in counts[False]["cells"]
    assert counts[False]["ff"] == counts[True]["ff"] == 0
    log = (tmp_path / "False" / "yosys.log").read_text()
    assert "-flatten" not in log.split("Executing SYNTH_XILINX")[0] and "leaf" in log


@pytest.mark.skipif(shutil.which("yosys") is None, reason="no native Yosys on the PATH")
def test_synth_counts_rtlil_memory_only(tmp_path):
    """The build synthesizes the node's RTLIL (``fpdeep_node.il``, read with ``read_rtlil``);
    ``--synth-memory-only`` (``stop="memory"``) ends the flow after the DSP and memory
    mapping: the same DSP and block RAM as the whole flow, the LUT RAM primitives, no LUT or
    flip-flop count."""
    from amaranth.hdl import Cat, Module, signed
    from amaranth.lib.memory import Memory

    from fpdeep_hw.build import NODE_MODULE, rtlil_convert, synth_counts

    class MacRams(wiring.Component):
        a: wiring.In(signed(16))
        b: wiring.In(signed(16))
        addr: wiring.In(10)
        we: wiring.In(1)
        p: wiring.Out(signed(32))
        q: wiring.Out(36)
        q2: wiring.Out(8)

        def elaborate(self, platform):
            m = Module()
            m.d.sync += self.p.eq(self.a * self.b)
            m.submodules.big = big = Memory(shape=36, depth=1024, init=[])
            w, r = big.write_port(), big.read_port()
            m.d.comb += [w.addr.eq(self.addr), w.data.eq(Cat(self.a, self.b, self.a[:4])),
                         w.en.eq(self.we), r.addr.eq(self.addr), self.q.eq(r.data)]
            # 32 x 8 with a combinational read: LUT RAM
            m.submodules.small = small = Memory(shape=8, depth=32, init=[])
            w2, r2 = small.write_port(), small.read_port(domain="comb")
            m.d.comb += [w2.addr.eq(self.addr[:5]), w2.data.eq(self.b[:8]), w2.en.eq(self.we),
                         r2.addr.eq(self.addr[5:]), self.q2.eq(r2.data)]
            return m
    text = rtlil_convert(MacRams(), name=NODE_MODULE)
    counts = {}
    for stop in (None, "memory"):
        work = tmp_path / str(stop)
        work.mkdir()
        (work / f"{NODE_MODULE}.il").write_text(text)
        counts[stop] = synth_counts(work / f"{NODE_MODULE}.il", "xc7", work, "yosys", stop=stop)
        log = (work / "yosys.log").read_text()
        assert f"read_rtlil {NODE_MODULE}.il" in log
        assert counts[stop]["input"] == f"{NODE_MODULE}.il"
    full, mem = counts[None], counts["memory"]
    assert full["dsp"] == mem["dsp"] == 1
    assert full["bram36"] == mem["bram36"] == 1, mem["cells"]
    assert mem["lutram_cells"] >= 1 and mem["lutram_luts"] == full["lutram_luts"] > 0
    assert mem["lut"] is None and mem["ff"] is None and mem["stopped_after"] == "map_memory"
    assert full["lut"] is not None and full["ff"] is not None and full["stopped_after"] is None
    # memory_map (map_ffram) and the LUT mapping did not run
    assert "Executing MEMORY_MAP" in (tmp_path / "None" / "yosys.log").read_text()
    assert "Executing MEMORY_MAP" not in (tmp_path / "memory" / "yosys.log").read_text()


def test_board_top_node_module_leaves_nothing_unused():
    """``BoardTop(node_module=...)`` keeps a ``LinkedNode`` only for its ports: neither it nor
    its link framers are reported as unused elaboratables when the board top goes (a build of
    several nodes in one worker printed the framers' warnings for every middle node)."""
    import gc
    import warnings

    from amaranth.hdl import Fragment

    from fpdeep_hw.board_top import BoardTop
    from fpdeep_hw.node.top import NodeTop
    from sim.golden.train import init_weights
    plan, net = two_node_plan(), load_network("tiny")
    init = init_weights(net, 0, plan.numerics)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in (0, 1):
            node = NodeTop(plan, k, net, lr=0.125, init_master=init)
            top = BoardTop(node, node_module="fpdeep_node")
            assert top.linked.ends and all(len(e) == 4 for e in top.linked.ends.values())
            Fragment.get(node, None)     # (the node itself is converted on its own in a build)
            del top, node
            gc.collect()
    assert not [w for w in caught if "UnusedElaboratable" in w.category.__name__], \
        [str(w.message) for w in caught]
