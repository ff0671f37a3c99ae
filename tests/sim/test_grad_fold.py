# amaranth: UnusedElaboratable=no
"""Folded gradient buffers in a node (``NodeTop(grad_fold=)``; the block:
``tests/hw/test_grad_buffer.py``).

* ``grad_fold`` folds each conv layer's LGB and each BGB of sets kept for a neighbour as
  :func:`fpdeep_hw.memory.grad_buffer.grad_buffer_fold` gives, within the rate the layer
  allows (``1 + Ho * Wo // FOLD_COST`` per image for an LGB, ``batch`` times that for a BGB);
  FC layers stay unfolded; the default folds nothing.
* ``tiny`` trains bit-exact with every LGB folded and its row FIFOs folded too (one node,
  :func:`test_build_folds_bit_exact`), and with the lender's BGB folded (the ``lend`` plan:
  node 1 keeps conv2's weights for node 0,
  ``tests/sim/test_cluster_split.py::test_parameter_lending``). ``tiny``'s buffers are
  distributed RAM, where folding saves no block RAM, so these runs force the fold
  (:func:`forced_grad_fold`).
"""

import contextlib
import json
from unittest import mock

import pytest
from amaranth.hdl import Fragment

import fpdeep_hw.node.top as top_mod
from fpdeep_hw.memory.grad_buffer import grad_buffer_fold
from fpdeep_hw.node.top import NodeTop
from fpdeep_map.board import load_board
from fpdeep_map.mapper import map_network
from fpdeep_map.network import load_network
from sim import train
from sim.golden.train import init_weights


@contextlib.contextmanager
def forced_grad_fold(fold):
    """Every gradient buffer folded ``fold`` ways (or as many as it has elements), whatever it
    saves, and no rate limit: with ``NodeTop(grad_fold=fold)``; every BPRAM too with
    ``NodeTop(bpram_fold=fold)`` (the same chooser; its limit, a quarter of the borrowed
    layer's map, is not lifted)."""
    with mock.patch.object(top_mod, "FOLD_COST", 1), mock.patch.object(
            top_mod, "grad_buffer_fold",
            lambda accw, elements, depth, limit: min(fold, limit, elements)):
        yield


def test_grad_folds_follow_the_rates():
    net = load_network("tiny")
    plan = map_network(net, load_board("sim-node"), 1, batch=2, max_row_lanes=1)
    init = init_weights(net, 0, plan.numerics)

    def node(**kw):
        top = NodeTop(plan, 0, net, lr=0.125, init_master=init, batch=2, **kw)
        Fragment.get(top, None)
        return top
    convs = [nl for nl in node().layers if nl.geometry.kind == "conv"]
    assert set(node().grad_folds.values()) == {1}
    # tiny's maps are small: 1 + Ho * Wo // FOLD_COST is 1, nothing folds
    assert set(node(grad_fold=16).grad_folds.values()) == {1}
    with forced_grad_fold(3):
        top = node(grad_fold=16)
    for nl in top.layers:
        want = 3 if nl.geometry.kind == "conv" else 1
        assert top.grad_folds[f"{nl.key}/lgb"] == nl.pg.lgb.fold == want, nl.key
    assert len(convs) >= 2
    # the fold chooser: distributed RAM (64 rows or fewer) gains nothing from a fold
    assert grad_buffer_fold(24, 9, 8, 16) == 1
    with pytest.raises(ValueError, match=r"^NodeTop grad_fold must be a positive integer, "
                                         r"not 0$"):
        NodeTop(plan, 0, net, lr=0.125, init_master=init, grad_fold=0)
    with pytest.raises(ValueError, match=r"^NodeTop bpram_fold must be a positive integer, "
                                         r"not True$"):
        NodeTop(plan, 0, net, lr=0.125, init_master=init, bpram_fold=True)


def test_grad_buffer_fold_vgg16_node4():
    """24-bit accumulators: VGG-16 node 4's BGB of 164 conv5_2 sets (1,152 elements) folded
    by 3 fills 492 of 512 rows, 384 -> 128 BRAM36; a buffer of 77 such sets by 13, one of 320
    sets of 1,728 elements by 8."""
    from fpdeep_hw.memory.grad_buffer import grad_buffer_bram18
    assert grad_buffer_fold(24, 1152, 164, 16) == 3
    assert (grad_buffer_bram18(24, 1152, 164, 1), grad_buffer_bram18(24, 1152, 164, 3)) == (
        768, 256)
    assert grad_buffer_fold(24, 1152, 164, 2) == 2          # the rate caps the fold
    assert grad_buffer_fold(24, 1152, 77, 16) == 13
    assert grad_buffer_fold(24, 1728, 320, 16) == 8
    with pytest.raises(ValueError, match=r"^grad_buffer_fold: limit must be a positive "
                                         r"integer, not 0$"):
        grad_buffer_fold(24, 9, 8, 0)


@pytest.mark.timeout(900)
def test_build_folds_bit_exact():
    """``tiny`` on one node with the build's memory choices at once, forced: every conv LGB
    folded 4 ways, every row FIFO (``BUILD_FIFO_ROWS`` rows) 6 ways
    (``tests/sim/test_fifo_rows.py``; the folded rows' cost against the same run unfolded:
    there, ``-m long``) and every conv layer's PG weight-stationary (``ws_pg=True``: the folded
    LGBs are WSPGLayer's)."""
    from fpdeep_hw.build import BUILD_FIFO_ROWS
    from fpdeep_hw.memory.folded_fifo import FoldedFIFO
    from test_fifo_rows import _blocks, _force_fold
    with forced_grad_fold(4), _force_fold(6):
        res = train.run("tiny", "sim-node", images=2, batch=2, seed=0, grad_fold=4,
                        fifo_rows=BUILD_FIFO_ROWS, fifo_fold=64, ws_pg=True)
        _, blocks = _blocks(fifo_rows=BUILD_FIFO_ROWS, fifo_fold=64)
    assert res["mismatches"] == [] and res["bit_exact"] is True
    assert all(v == 1 for v in res["updates"].values())
    assert res["pg_orders"] == {"node0/conv1": "weight", "node0/conv2": "weight",
                                "node0/conv3": "weight", "node0/fc4": "position"}
    folds = res["grad_folds"]
    assert {k: f for k, f in folds.items() if f > 1} and all(
        f == (4 if k.split("/")[1] in ("conv1", "conv2", "conv3") else 1)
        for k, f in folds.items()), folds
    assert sum(isinstance(f, FoldedFIFO) and f.fold == 6 for f in blocks.values()) == 9


def test_folded_node_builds_and_lints(tmp_path, monkeypatch):
    """The small ``tiny`` node of ``tests/hw/test_build.py`` built with every conv LGB folded
    by 2 and every conv layer's PG weight-stationary (``BUILD_WS_PG`` forced to ``True``; the
    build's ``"smaller"`` picks none of tiny's): its Verilog passes ``verilator --lint-only
    -Wall`` with the reviewed waivers (the update's port takes the folded LGB's output as it
    takes an unfolded one's), and ``report.json`` lists the PG orders."""
    import shutil
    import subprocess

    from fpdeep_hw import build
    from sim.lint import WAIVERS
    exe = shutil.which("verilator")
    if exe is None:
        pytest.skip("verilator is not installed")
    net = load_network("tiny")
    plan = map_network(net, load_board("vc709"), 1, batch=1, max_row_lanes=1, dsp_budget=0.04)
    monkeypatch.setattr(build, "BUILD_WS_PG", True)
    with forced_grad_fold(2):
        build.build_node(plan, 0, net, "vc709", tmp_path, label="p")
    (src,) = tmp_path.rglob("fpdeep_node.v")
    report = json.loads((src.parent / "report.json").read_text())
    assert report["grad_folds"]["conv1/lgb"] == 2 and report["grad_folds"]["fc4/lgb"] == 1
    assert report["ws_pg"] is True and report["pg_orders"] == {
        "conv1": "weight", "conv2": "weight", "conv3": "weight", "fc4": "position"}
    proc = subprocess.run([exe, "--lint-only", "-Wall", "--top-module", "fpdeep_node",
                           str(WAIVERS), str(src)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and "%Warning" not in out and "%Error" not in out, out


def test_pg_orders():
    """``NodeTop(ws_pg=)``: ``False`` position-outer PG everywhere, ``True`` weight-stationary
    for every conv layer of the node's own weights (``WSPGLayer`` with its LGB, folded as the
    LGB would be), ``"smaller"`` (the build) where its frame stores take fewer block RAM units
    than the accumulators and its sweeps fit the plan's cycles per image: on VGG-16 on 15
    VC709, conv4_1 to conv5_3 but no conv1 to conv3 layer (whose 56 x 56 and larger maps make
    the frame stores the larger), and never an FC layer."""
    from fpdeep_hw.node.lend import WSPGLayer
    from fpdeep_hw.node.top import pg_bram18, pg_order
    from fpdeep_hw.node.fp_layer import layer_geometry
    net = load_network("tiny")
    plan = map_network(net, load_board("sim-node"), 1, batch=2, max_row_lanes=1)
    init = init_weights(net, 0, plan.numerics)
    kinds = {}
    for ws in (False, True, "smaller"):
        with forced_grad_fold(2):
            top = NodeTop(plan, 0, net, lr=0.125, init_master=init, batch=2, ws_pg=ws,
                          grad_fold=2)
        Fragment.get(top, None)
        kinds[ws] = {nl.key: type(nl.pg).__name__ for nl in top.layers}
        assert top.pg_orders == {nl.key: "weight" if isinstance(nl.pg, WSPGLayer)
                                 else "position" for nl in top.layers}
        assert all(nl.pg.lgb.fold == (2 if nl.geometry.kind == "conv" else 1)
                   for nl in top.layers)
    assert set(kinds[False].values()) == {"PGLayer"}
    assert kinds[True] == {"conv1": "WSPGLayer", "conv2": "WSPGLayer", "conv3": "WSPGLayer",
                           "fc4": "PGLayer"}
    # tiny's accumulators are distributed RAM: no block RAM to save
    assert kinds["smaller"] == kinds[False]
    with pytest.raises(ValueError, match=r"^NodeTop ws_pg must be False, True or 'smaller', "
                                         r"not 1$"):
        NodeTop(plan, 0, net, lr=0.125, init_master=init, ws_pg=1)
    vgg = load_network("vgg16")
    vplan = map_network(vgg, load_board("vc709"), 15, batch=128, max_row_lanes=1)
    chosen = {}
    for np_ in vplan.node_plans:
        for seg in np_.segments:
            if seg.weights_borrowed:
                continue
            geo = layer_geometry(seg, vgg)
            chosen[(np_.node, seg.layer)] = pg_order("smaller", geo, vplan.numerics, vplan)
            assert pg_order(False, geo, vplan.numerics, vplan) == "position"
    weight = sorted(k for k, v in chosen.items() if v == "weight")
    assert weight == [(8, "conv4_1"), (11, "conv4_2"), (12, "conv4_3"), (13, "conv5_3"),
                      (14, "conv5_3")], weight
    # node 12's conv4_3 slice (300 input channels): 2,160 -> 722.5 BRAM36 by the estimate
    seg = next(s for s in vplan.node_plans[12].segments if s.layer == "conv4_3")
    geo = layer_geometry(seg, vgg)
    assert (pg_bram18(geo, vplan.numerics, "position"),
            pg_bram18(geo, vplan.numerics, "weight")) == (4320, 1445)
    # node 13's conv4_3 slice (2 input channels): its accumulators are the smaller
    seg = next(s for s in vplan.node_plans[13].segments if s.layer == "conv4_3")
    assert chosen[(13, "conv4_3")] == "position"
    assert pg_order(True, layer_geometry(seg, vgg), vplan.numerics, vplan) == \
        "weight"
