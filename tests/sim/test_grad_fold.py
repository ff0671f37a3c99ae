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
    """``tiny`` on one node with the build's folds at once, forced: every conv LGB folded 4
    ways and every row FIFO (``BUILD_FIFO_ROWS`` rows) 6 ways (``tests/sim/test_fifo_rows.py``;
    the folded rows' cost against the same run unfolded: there, ``-m long``)."""
    from fpdeep_hw.build import BUILD_FIFO_ROWS
    from fpdeep_hw.memory.folded_fifo import FoldedFIFO
    from test_fifo_rows import _blocks, _force_fold
    with forced_grad_fold(4), _force_fold(6):
        res = train.run("tiny", "sim-node", images=2, batch=2, seed=0, grad_fold=4,
                        fifo_rows=BUILD_FIFO_ROWS, fifo_fold=64)
        _, blocks = _blocks(fifo_rows=BUILD_FIFO_ROWS, fifo_fold=64)
    assert res["mismatches"] == [] and res["bit_exact"] is True
    assert all(v == 1 for v in res["updates"].values())
    folds = res["grad_folds"]
    assert {k: f for k, f in folds.items() if f > 1} and all(
        f == (4 if k.split("/")[1] in ("conv1", "conv2", "conv3") else 1)
        for k, f in folds.items()), folds
    assert sum(isinstance(f, FoldedFIFO) and f.fold == 6 for f in blocks.values()) == 9


def test_folded_node_builds_and_lints(tmp_path):
    """The small ``tiny`` node of ``tests/hw/test_build.py`` built with every conv LGB folded
    by 2: its Verilog passes ``verilator --lint-only -Wall`` with the reviewed waivers (the
    update's port takes the folded LGB's output as it takes an unfolded one's)."""
    import shutil
    import subprocess

    from fpdeep_hw import build
    from sim.lint import WAIVERS
    exe = shutil.which("verilator")
    if exe is None:
        pytest.skip("verilator is not installed")
    net = load_network("tiny")
    plan = map_network(net, load_board("vc709"), 1, batch=1, max_row_lanes=1, dsp_budget=0.04)
    with forced_grad_fold(2):
        build.build_node(plan, 0, net, "vc709", tmp_path, label="p")
    (src,) = tmp_path.rglob("fpdeep_node.v")
    report = (src.parent / "report.json").read_text()
    assert '"conv1/lgb": 2' in report and '"fc4/lgb": 1' in report
    proc = subprocess.run([exe, "--lint-only", "-Wall", "--top-module", "fpdeep_node",
                           str(WAIVERS), str(src)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and "%Warning" not in out and "%Error" not in out, out
