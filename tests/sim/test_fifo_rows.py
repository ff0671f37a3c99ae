# amaranth: UnusedElaboratable=no
"""Decoupling FIFOs of a few rows (``NodeTop(fifo_rows=)``, what ``python -m fpdeep_hw.build``
builds, ``BUILD_FIFO_ROWS``) instead of whole images (``fifo_images``, the simulations'
default): ``docs/hw-node.md``, "Node top".

* every decoupling FIFO holds ``fifo_rows`` rows of its map, the FC's input FIFO one image, the
  mask and argmax stores are untouched;
* bad values are refused;
* ``tiny`` split over two nodes (``icp2``, ``tests/sim/test_cluster_split.py``) and (``-m long``)
  on one trains bit-exact with 2-row FIFOs;
* ``-m long``: 12 images, B = 4: the same cycles as with one-image FIFOs (measured: 18,618
  cycles, 1,031 per image in a mini-batch, 1,303.25 over whole mini-batches, both ways);
* folded row FIFOs (``fifo_fold``, the build's ``BUILD_FIFO_FOLD``): ``tiny``'s are all in
  distributed RAM and its layers too short for a fold, so none is folded; with every row FIFO
  forced to fold, ``tiny`` trains bit-exact (``tests/sim/test_grad_fold.py``, with its LGBs
  folded too) at the cost the fold limit bounds (``-m long``).
"""

import contextlib
from unittest import mock

import pytest
from amaranth.hdl import Fragment
from amaranth.lib.fifo import SyncFIFOBuffered

from fpdeep_hw.build import BUILD_FIFO_FOLD, BUILD_FIFO_ROWS, BUILD_FIFO_WHOLE_BITS
from fpdeep_hw.memory.folded_fifo import FoldedFIFO
from fpdeep_hw.node.top import NodeTop
from fpdeep_map.board import load_board
from fpdeep_map.mapper import map_network
from fpdeep_map.network import load_network
from sim import train
from sim.golden.train import init_weights


def _blocks(**kw):
    net = load_network("tiny")
    plan = map_network(net, load_board("sim-node"), 1, batch=2, max_row_lanes=1)
    top = NodeTop(plan, 0, net, lr=0.125, init_master=init_weights(net, 0, plan.numerics), **kw)
    m = top.elaborate(None)
    Fragment.get(m, None)                       # every block elaborated (none left unused)
    return top, {name: f for name, (f, _) in m._named_submodules.items()
                 if isinstance(f, (SyncFIFOBuffered, FoldedFIFO))}


def _fifos(**kw):
    top, blocks = _blocks(**kw)
    return top, {name: f.depth for name, f in blocks.items()}


@contextlib.contextmanager
def _force_fold(fold):
    """Every row FIFO folded ``fold`` ways, whatever it saves or costs."""
    with mock.patch("fpdeep_hw.node.top.row_fifo_fold", lambda width, depth, limit: limit), \
            mock.patch.object(NodeTop, "fold_limit", new_callable=mock.PropertyMock,
                              return_value=fold):
        yield


def test_depths_in_rows():
    top, images = _fifos()
    _, rows = _fifos(fifo_rows=2)
    assert set(images) == set(rows)
    g = {nl.name: nl.geometry for nl in top.layers}
    # tiny: conv1 8x8 -> conv2 8x8 (pool to 4x4) -> conv3 4x4 -> fc4 (4x4 input)
    expect = {
        "act_conv2_q": 2 * g["conv2"].width, "act_conv3_q": 2 * g["conv3"].width,
        "act_fc4_q": g["fc4"].pixels,                       # an FC's input: one image
        "err_conv1_q": 2 * g["conv1"].out_width, "err_conv2_q": 2 * g["conv2"].out_width,
        "err_conv3_q": 2 * g["conv3"].out_width,
        "conv2_eout_eb": 2 * g["conv2"].conv_width, "conv2_eout_pg": 2 * g["conv2"].conv_width,
        "conv3_eout_eb": 2 * g["conv3"].conv_width, "conv3_eout_pg": 2 * g["conv3"].conv_width,
        "fc4_eout_eb": 1, "fc4_eout_pg": 1,
    }
    assert {n: rows[n] for n in expect} == expect
    assert expect["act_conv2_q"] < images["act_conv2_q"] == g["conv2"].pixels
    # the stores of the images in flight are not decoupling FIFOs
    for n in rows:
        if n.endswith(("_mask", "_arg")):
            assert rows[n] == images[n]
    # one row: never deeper than one image's FIFOs
    _, one = _fifos(fifo_rows=1)
    assert all(one[n] <= rows[n] <= images[n] for n in rows)


@pytest.mark.parametrize("bad", [-1, True, 1.5, "2"])
def test_bad_fifo_rows(bad):
    with pytest.raises(ValueError, match="fifo_rows must be None or a non-negative integer"):
        _fifos(fifo_rows=bad)


def test_whole_bits():
    """FIFOs whose image is small keep it: the build's threshold keeps every one of ``tiny``'s
    (a small node is built as simulated); a threshold between picks per FIFO."""
    _, images = _fifos()
    _, build = _fifos(fifo_rows=BUILD_FIFO_ROWS, fifo_whole_bits=BUILD_FIFO_WHOLE_BITS)
    assert build == images
    _, rows = _fifos(fifo_rows=2)
    # conv2's output errors into EB / PG: 64 pixels of 8 lanes x 16 bits = 8,192 bits; conv3's
    # 16 pixels of 8 lanes: 2,048 bits
    _, mixed = _fifos(fifo_rows=2, fifo_whole_bits=4096)
    assert mixed["conv3_eout_eb"] == images["conv3_eout_eb"] == 16
    assert mixed["conv2_eout_eb"] == rows["conv2_eout_eb"] == 16 < images["conv2_eout_eb"]
    with pytest.raises(ValueError, match="fifo_whole_bits must be a non-negative integer"):
        _fifos(fifo_rows=2, fifo_whole_bits=-1)


@pytest.mark.parametrize("kw, flag", [({"fifo_rows": -1}, "--fifo-rows"),
                                      ({"fifo_rows": 2, "fifo_whole_bits": -5},
                                       "--fifo-whole-bits")])
def test_train_refuses_bad_rows(kw, flag, tmp_path):
    with pytest.raises(train.TrainError, match=f"^{flag} must be a non-negative integer"):
        train.run("tiny", "sim-node", images=2, batch=2, out=tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


def test_build_uses_rows():
    assert isinstance(BUILD_FIFO_ROWS, int) and BUILD_FIFO_ROWS >= 1
    # VGG-16's maps: one image of conv2_2's 112 x 112 partial sums is far above the threshold
    assert 112 * 112 * 128 * 16 > BUILD_FIFO_WHOLE_BITS


@pytest.mark.long
def test_bit_exact_with_rows():
    """The build's row FIFOs on one node, ``-m long`` only (CI time): the default run trains
    them on two nodes (``icp2``, where every FIFO kind of the one-node case is on one of them:
    ``tests/sim/test_cluster_split.py::test_icp_two_nodes``)."""
    res = train.run("tiny", "sim-node", images=2, batch=2, seed=0, fifo_rows=BUILD_FIFO_ROWS)
    assert res["mismatches"] == [] and res["bit_exact"] is True
    assert all(v == 1 for v in res["updates"].values())


@pytest.mark.long
@pytest.mark.timeout(1800)
def test_rows_cost_no_cycles():
    got = {}
    for kw in ({}, {"fifo_rows": BUILD_FIFO_ROWS}):
        res = train.run("tiny", "sim-node", images=12, batch=4, seed=0, **kw)
        assert res["bit_exact"] is True
        got[bool(kw)] = (res["cycles"], res["cycles_per_image_first_batch"],
                         res["cycles_per_image_whole_batches"])
    assert got[True] == got[False]


def test_fold_only_where_it_saves_block_ram():
    """``tiny``'s row FIFOs are all small enough for distributed RAM, and a fold would cost
    its layers more than ``1 / FOLD_COST`` of their cycles: none is folded (the same blocks
    as without)."""
    top, blocks = _blocks(fifo_rows=2, fifo_fold=BUILD_FIFO_FOLD)
    _, plain = _fifos(fifo_rows=2)
    assert {n: f.depth for n, f in blocks.items()} == plain
    assert not any(isinstance(f, FoldedFIFO) for f in blocks.values())
    # conv1: R*G = 12 cycles per pixel, 8 rows: 1 + 96 // 200
    assert top.fold_limit == 1
    with pytest.raises(ValueError, match="fifo_fold must be a positive integer"):
        _fifos(fifo_rows=2, fifo_fold=0)


def test_forced_folds():
    """Forced to fold, every FIFO kept in rows is a ``FoldedFIFO`` of the same depth at the
    node's fold limit; one-image FIFOs (the FC's input) and the stores are not folded; without
    ``fifo_rows`` nothing is."""
    _, rows = _fifos(fifo_rows=2)
    _, images = _fifos()
    with _force_fold(6):
        top, blocks = _blocks(fifo_rows=2, fifo_fold=64)
        _, unfolded = _blocks(fifo_fold=64)
    assert {n: f.depth for n, f in blocks.items()} == rows
    folded = {n for n, f in blocks.items() if isinstance(f, FoldedFIFO)}
    assert all(blocks[n].fold == 6 for n in folded)
    assert {n for n in rows if rows[n] < images[n]} == folded
    assert "act_fc4_q" not in folded and not any(n.endswith(("_mask", "_arg")) for n in folded)
    assert not any(isinstance(f, FoldedFIFO) for f in unfolded.values())


@pytest.mark.long
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("images, fold", [(2, 6), (12, 2)])
def test_bit_exact_with_folded_rows(images, fold):
    """Every row FIFO of ``tiny`` (9 of them) forced to fold: bit-exact, and against the same
    run unfolded, the cost the fold limit bounds, about ``fold - 1`` cycles per image for each
    pixel of a row a line buffer fills at an image's start (2 images folded 6 ways: 6,225
    cycles against 6,172; 12 images, B = 4: 1,039 / 1,315.25 cycles per image in the first
    mini-batch / over whole ones folded 2 ways against 1,031 / 1,317.25, 1,047 / 1,313.25
    folded 3 ways). ``-m long`` only (CI time): the default run trains ``tiny`` with its row
    FIFOs folded 6 ways and its LGBs folded too in
    ``tests/sim/test_grad_fold.py::test_build_folds_bit_exact``."""
    kw = dict(images=images, batch=2 if images == 2 else 4, seed=0, fifo_rows=BUILD_FIFO_ROWS)
    with _force_fold(fold):
        folded = train.run("tiny", "sim-node", fifo_fold=64, **kw)
        _, blocks = _blocks(fifo_rows=BUILD_FIFO_ROWS, fifo_fold=64)
    assert folded["mismatches"] == [] and folded["bit_exact"] is True
    assert sum(isinstance(f, FoldedFIFO) and f.fold == fold for f in blocks.values()) == 9
    plain = train.run("tiny", "sim-node", **kw)
    extra = folded["cycles"] - plain["cycles"]
    assert 0 <= extra < 0.01 * plain["cycles"], (extra, plain["cycles"])
    if images > 2:
        for key in ("cycles_per_image_first_batch", "cycles_per_image_whole_batches"):
            assert abs(folded[key] / plain[key] - 1) < 0.01, (key, folded[key], plain[key])
