# amaranth: UnusedElaboratable=no
"""Clusters whose plans split a layer over several nodes or keep its weights in a neighbour
(:mod:`fpdeep_hw.node.top`, :mod:`fpdeep_hw.node.cluster`, ``python -m sim.train --nodes N``),
trained against the golden model with the plan's split arithmetic
(:class:`sim.golden.train.GoldenTrainer` ``plan=``).

* ``ocp2``: ``tiny`` on 2 ``sim-node`` boards, the mapper's default split: conv2 cut by output
  channels, node 0 [0, 7), node 1 [7, 8) (OCP: conv2's input to both, partial errors back).
* ``ocp3``: ``tiny`` on 3 ``sim-node`` boards: conv2 [0, 3) on node 0, [3, 8) on node 1, conv3 and
  fc4 on node 2 (node 1 joins the slices and passes the errors of node 0's slice back).
* ``icp2``: ``tiny`` on 2 ``sim-node`` boards with ``ocp_threshold=1``: conv2 cut by input channels
  [0, 3) | [3, 4) (partial sums forward, ``E_out`` back).
* ``lend``: ``tiny`` on 2 ``tiny-test`` boards: all 288 weights of conv2 (node 0) kept on node 1
  (BPRAM, BGB, update there; weight sets forward to node 0 twice per image, gradients back).
* ``far``: ``tiny`` on 4 ``tiny-test-far`` boards (``tests/sim/data/tiny-test-far.yaml``): the
  weights of conv1 (node 0, no EB) kept on node 2; node 1 passes the set and gradient streams on.
* ``icpfc``: ``tiny`` on 3 ``sim-node`` boards with ``ocp_threshold=1``: conv2 cut by input
  channels [0, 3) | [3, 4) and fc4 by input features at a channel boundary, [0, 96) on node 1
  and [96, 128) on node 2 with the loss (partial sums forward, errors back).
* ``icplend``: ``tiny`` on 3 ``tiny-test-b24d90`` boards, conv2 cut by input channels: the weights
  of its slice [1, 4) (node 1, which adds node 0's partial sums and completes the layer) kept on
  node 2 (weight-stationary engines with the partial adder).
* ``ocplend``: ``tiny`` on 3 ``tiny-test-b18d60`` boards, conv2 cut by output channels: the
  weights of its slice [0, 4) (node 0, which rounds the partial errors) kept on node 2, two hops
  away, through node 1 (which holds the slice [4, 8) and borrows conv3's weights from node 2).
* ``twochains``: ``digits`` on 3 ``tiny-test`` boards, conv2 cut by output channels over the three
  nodes: node 1 keeps the weights of both other slices (two lending chains of one layer, one to
  each side; ports ``*_conv2_for0`` / ``*_conv2_for2``).
* ``keepers`` (the ``far`` plan edited, the mapper makes no such plan for a small network): the
  weights of conv1 kept by node 0 itself (28), node 1 (40) and node 2 (40): weight sets 0, 1-2
  and 3 of 4; node 1 joins its sets to node 2's, node 0 its own to both, gradients routed back
  by address.
* idle node: ``tiny`` on 4 ``sim-node`` boards at batch 4 fills nodes 0-2; node 3, empty, is
  reported idle and not simulated (an empty node between busy ones, a relay, is refused).

Each: every activation, mask, argmax, partial sum / partial error that crossed a link, error,
gradient, weight version, final master weight (per slice) and overflow count equals the golden
model's; the payload of every link stream equals the plan's words per image (dense packing,
:class:`fpdeep_hw.link.packer.Packer`). Default runs: 2 images, batch 2 (one update per
layer); ``-m long``: 4 images, batch 2. Link integrity: bits flipped on the wire of a cluster
are caught by the CRC and no corrupted word reaches a node.
"""

import dataclasses
from pathlib import Path

import pytest
from amaranth.hdl import Fragment

from sim import train

DATA = Path(__file__).parent / "data"

CONFIGS = {
    "ocp2": dict(net="tiny", board="sim-node", nodes=2),
    "ocp3": dict(net="tiny", board="sim-node", nodes=3),
    "icp2": dict(net="tiny", board="sim-node", nodes=2, ocp_threshold=1),
    "lend": dict(net="tiny", board="tiny-test", nodes=2),
    "far": dict(net="tiny", board=str(DATA / "tiny-test-far.yaml"), nodes=4),
    "icpfc": dict(net="tiny", board="sim-node", nodes=3, ocp_threshold=1),
    "icplend": dict(net="tiny", board=str(DATA / "tiny-test-b24d90.yaml"), nodes=3,
                    ocp_threshold=1),
    "ocplend": dict(net="tiny", board=str(DATA / "tiny-test-b18d60.yaml"), nodes=3),
    "twochains": dict(net="digits", board="tiny-test", nodes=3),
}


def _keepers_plan(plan):
    """The ``far`` plan with conv1's weights kept by nodes 0 (28), 1 (40) and 2 (40)."""
    (lp,) = plan.node_plans[2].bpram
    assert (lp.layer, lp.lender, lp.borrower, lp.weights) == ("conv1", 2, 0, 108)
    lp.weights = 40
    plan.node_plans[1].bpram.append(dataclasses.replace(lp, lender=1))
    seg = plan.node_plans[0].segments[0]
    assert seg.layer == "conv1" and seg.weights == seg.weights_borrowed == 108
    seg.weights_borrowed = 80
    return plan


def _run(name, images, batch, **extra):
    """Train plan ``name`` of :data:`CONFIGS` (or ``keepers``); ``extra``: more arguments of
    ``sim.train.run``, and ``force_grad_fold=f``: every gradient buffer folded ``f`` ways
    (``tests/sim/test_grad_fold.py``'s ``forced_grad_fold``)."""
    import contextlib
    from unittest import mock

    import fpdeep_map.mapper as mapper
    from test_grad_fold import forced_grad_fold
    kw = dict(CONFIGS["far" if name == "keepers" else name], **extra)
    force = kw.pop("force_grad_fold", None)
    if force is not None:
        kw["grad_fold"] = force
    real = mapper.map_network

    def mapped(*a, **k):
        plan = real(*a, **k)
        if name != "keepers" or k.get("lending") is not None:
            return plan
        # the edited plan with its own figures (fpdeep_map.mapper.evaluate_plan; node 0 keeps
        # 28 weights above this made-up board's budget: reported, not refused)
        return mapper.evaluate_plan(_keepers_plan(plan), a[0], a[1], over_budget=[])
    with mock.patch.object(mapper, "map_network", mapped), (
            forced_grad_fold(force) if force else contextlib.nullcontext()):
        res = train.run(kw.pop("net"), kw.pop("board"), images=images, batch=batch, seed=0,
                        **kw)
    print(name, {k: res.get(k) for k in ("bit_exact", "cycles", "cycles_per_image",
                                         "predicted_cycles_per_image", "wall_seconds")})
    for lk in res["links"]:
        print(" ", lk["src"], "->", lk["dst"], lk["payload_words_per_image"],
              lk["predicted_payload_words_per_image"], lk["wire_words_per_image"])
    return res


@pytest.fixture(scope="module")
def runs():
    cache = {}

    def get(name, images=2, batch=2, **extra):
        key = (name, images, batch, *sorted(extra.items()))
        if key not in cache:
            cache[key] = _run(name, images, batch, **extra)
        return cache[key]
    return get


def _check(res, images, batch, words=True):
    """Bit-exact, every update applied, clean links; ``words``: every stream's payload as the
    plan's link figures say (``False`` for a plan edited by hand and not evaluated again:
    its link figures are the mapper's for the plan before the edit; ``fpdeep_map.mapper.
    evaluate_plan`` gives it its own)."""
    assert res["mismatches"] == [] and res["bit_exact"] is True
    plan = res["_prep"]["plan"]
    # per lent layer: its borrower, and the farthest keeper's distance from it, in links
    res["_borrower"] = {lp.layer: lp.borrower for q in plan.node_plans for lp in q.bpram}
    res["_chain"] = {lp.layer: max(abs(j - lp.borrower) for j, q in enumerate(plan.node_plans)
                                   for x in q.bpram if x.layer == lp.layer)
                     for q in plan.node_plans for lp in q.bpram}
    assert all(v == images // batch for v in res["updates"].values()), res["updates"]
    for lk in res["links"]:
        assert lk["crc_errors"] == 0 and lk["seq_errors"] == 0
        for s in lk["streams"]:
            # every item the images need was taken; only a borrower takes more (it prefetches
            # the next image's weight sets into its two weight registers; the unpacker holds
            # at most one more)
            bound = 3 * len(s["sids"]) if s["path"] == "parameters" else 0
            if s["path"] == "parameters" and res["_chain"][s["layer"]] > 1:
                # a node passing the sets on takes what the next link can buffer: as far as the
                # version rule lets the keepers run ahead, B + D images past the last update
                lag = res["_prep"]["top"].lags[s["layer"]]
                bound += (batch + lag) * sum(s["items_per_image"])
            assert 0 <= s["run_ahead_items"] <= bound, s
            if not words:
                continue
            if s["path"] == "gradients":
                # each gradient set carries its address (the BGB's), as the plan counts
                assert s["payload_words_per_image"] == s["predicted_words_per_image"], s
            elif s["path"] == "parameters":
                # a lender runs ahead of the run's last image (by up to its lag): what the
                # borrower's side holds at the end was delivered on top of the run's sets
                extra = (s["payload_words_per_image"] - s["predicted_words_per_image"]) * images
                # up to 4 sets per stream: two weight registers, the unpacker's set, one in flight
                per_set = s["predicted_words_per_image"] / sum(s["items_per_image"])
                bound = 4 * per_set * len(s["sids"])
                if res["_chain"][s["layer"]] > 1:
                    # through a node passing the sets on, they run ahead into the next link's
                    # receive buffer: at most as far as the version rule lets the keepers go,
                    # B + D images past the last update
                    lag = res["_prep"]["top"].lags[s["layer"]]
                    bound += (batch + lag) * s["predicted_words_per_image"]
                assert 0 <= extra <= bound, s
            else:
                assert s["payload_words_per_image"] == s["predicted_words_per_image"], s


def _layers(res):
    return _node_layers(res["_prep"]["top"])


def _node_layers(top):
    return [[nl.key for nl in node.layers] for node in top.nodes]


def _built(name, images=2, batch=2):
    """``train.prepare`` of ``CONFIGS[name]``: the cluster built and elaborated, not simulated
    (elaborated so that no block is left unused: under ``-W error`` the warning would fail
    whichever test runs when it is collected)."""
    kw = dict(CONFIGS[name])
    prep = train.prepare(kw.pop("net"), kw.pop("board"), images=images, batch=batch, seed=0,
                         **kw)
    Fragment.get(prep["top"], None)
    return prep


def _streams(res):
    return {(lk["src"], lk["dst"]): [(s["path"], s["layer"]) for s in lk["streams"]]
            for lk in res["links"]}


def _built_streams(prep):
    """``_streams`` of a built cluster, from its links' plan entries (no simulation)."""
    return {(lk.src, lk.dst): [(sp.path, sp.layer) for sp in lk.entry.streams]
            for lk in prep["top"].links}


def test_ocp_two_nodes_built():
    """``ocp2``'s nodes and link streams (built, not simulated); its training run is
    :func:`test_ocp_two_nodes` (``-m long``: OCP over a link is trained in the default run by
    :func:`test_ocp_three_nodes`)."""
    prep = _built("ocp2")
    assert _node_layers(prep["top"]) == [["conv1", "conv2@0"], ["conv2@1", "conv3", "fc4"]]
    assert _built_streams(prep) == {
        (0, 1): [("activations", "conv2"), ("activations", "conv3")],
        (1, 0): [("partial_errors", "conv1"), ("errors", "conv2")]}


@pytest.mark.long
@pytest.mark.timeout(900)
def test_ocp_two_nodes(runs):
    """Only with ``-m long`` (CI time, 90 s)."""
    res = runs("ocp2")
    _check(res, 2, 2)
    assert _layers(res) == [["conv1", "conv2@0"], ["conv2@1", "conv3", "fc4"]]
    assert _streams(res) == {
        (0, 1): [("activations", "conv2"), ("activations", "conv3")],
        (1, 0): [("partial_errors", "conv1"), ("errors", "conv2")]}
    # 7 of conv2's 8 output channels cross the link: 7 x 16 pixels x 16 bits = 28 words
    fwd = res["links"][0]["streams"]
    assert fwd[1]["payload_words_per_image"] == 28


@pytest.mark.timeout(900)
def test_ocp_three_nodes(runs):
    res = runs("ocp3")
    _check(res, 2, 2)
    assert _layers(res) == [["conv1", "conv2@0"], ["conv2@1"], ["conv3", "fc4"]]
    s = _streams(res)
    assert s[(1, 2)] == [("activations", "conv3")] and s[(2, 1)] == [("errors", "conv2")]


@pytest.mark.timeout(900)
def test_icp_two_nodes(runs):
    """With the build's decoupling FIFOs of ``BUILD_FIFO_ROWS`` rows (every FIFO kind of
    ``tiny`` on one node is on one of the two: ``tests/sim/test_fifo_rows.py``)."""
    from fpdeep_hw.build import BUILD_FIFO_ROWS
    res = runs("icp2", fifo_rows=BUILD_FIFO_ROWS)
    _check(res, 2, 2)
    assert _layers(res) == [["conv1", "conv2@0"], ["conv2@1", "conv3", "fc4"]]
    assert _streams(res) == {
        (0, 1): [("activations", "conv2"), ("partial_sums", "conv2")],
        (1, 0): [("errors", "conv1"), ("errors", "conv2")]}


@pytest.mark.timeout(900)
def test_parameter_lending(runs):
    """With the keeper's BGB and BPRAM folded 3 ways (forced: ``tiny``'s buffers are
    distributed RAM, where the build would not fold; ``tests/sim/test_grad_fold.py``)."""
    res = runs("lend", force_grad_fold=3, bpram_fold=3)
    _check(res, 2, 2)
    bgbs = {k: f for k, f in res["grad_folds"].items() if k.endswith("/bgb")}
    assert bgbs and set(bgbs.values()) == {3}, res["grad_folds"]
    assert res["bpram_folds"] == {"node1/lend_conv2/bpram": 3}
    assert res["_prep"]["top"].nodes[1].lenders["conv2"].bpram.fold == 3
    top = res["_prep"]["top"]
    assert [nl.lender and nl.lender.ranges for nl in top.nodes[0].layers] == [None, {1: (0, 16)}]
    assert list(top.nodes[1].lenders) == ["conv2"]
    assert _streams(res) == {
        (0, 1): [("activations", "conv3"), ("gradients", "conv2")],
        (1, 0): [("errors", "conv2"), ("parameters", "conv2")]}
    # conv2's weight sets cross the link twice per image (FP and EB), 288 weights each
    par = res["links"][1]["streams"][1]
    assert len(par["sids"]) == 2 and par["predicted_words_per_image"] == 2 * 288 * 16 / 64
    assert par["items_per_image"] == [16, 16]


@pytest.mark.timeout(900)
def test_split_fc(runs):
    """fc4 cut by input features at a channel boundary: [0, 96) (channels 0-5 of the 8 x 4 x 4
    map) on node 1, [96, 128) on node 2 with the loss; 10 partial sums per image forward, the
    10 output errors back (conv2 split by input channels too)."""
    res = runs("icpfc")
    _check(res, 2, 2)
    assert _layers(res) == [["conv1", "conv2@0"], ["conv2@1", "conv3", "fc4@1"], ["fc4@2"]]
    assert _streams(res)[(1, 2)] == [("activations", "fc4"), ("partial_sums", "fc4")]
    top = res["_prep"]["top"]
    g1, g2 = top.nodes[1].layers[-1].geometry, top.nodes[2].layers[0].geometry
    assert (g1.in_lo, g1.in_channels, g2.in_lo, g2.in_channels) == (0, 6, 6, 2)
    lk = next(lk for lk in res["links"] if (lk["src"], lk["dst"]) == (1, 2))
    # channels 6-7 of 16 pixels (16 bits): 8 words; 10 partial sums of 32 bits: 5 words
    assert [s["payload_words_per_image"] for s in lk["streams"]] == [8, 5]


#: Every plan co-simulated over two mini-batches: only with ``-m long`` (CI time). The default
#: run's cluster simulation with two updates per layer is ``tests/sim/test_cluster.py``'s
#: (2 images in mini-batches of 1 on two nodes).
@pytest.mark.long
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", list(CONFIGS) + ["keepers"])
def test_two_mini_batches(runs, name):
    _check(runs(name, images=4, batch=2), 4, 2, words=name != "keepers")


def _is_subsequence(part, whole):
    it = iter(whole)
    return all(any(w == p for w in it) for p in part)


@pytest.mark.timeout(900)
def test_bit_flips_on_the_wire():
    """Bits flipped in three frames of the forward link of ``ocp2``: the receiver counts one
    CRC error per corrupted frame, drops those frames, and every word it delivers to node 1 is
    a word node 0 sent, in order (the stream's later frames are dropped as out of sequence: no
    retransmission, so the run cannot finish and is not bit-exact). The link stops after about
    500 words (measured: 504 by cycle 1,200, no more later), so the flips are within them and
    the run stops at 1,200 cycles."""
    flips = [(40, 5), (250, 63), (450, 17)]
    prep = train.prepare("tiny", "sim-node", nodes=2, images=2, batch=2, seed=0,
                         flips={(0, 1): flips})
    rec, final = train.simulate(prep, max_cycles=1200)
    lk = prep["top"].link(0, 1)
    c = final["links"][lk.name]
    applied = [f for f in flips if f[0] < c["sent"]]
    print(c, applied)
    assert len(applied) == 3 and c["corrupted"] == len(applied)
    assert c["crc_errors"] == len(applied)
    for j in range(len(lk.streams)):
        sent = [w for _, w in rec[("link", lk.name, j)]]
        got = [w for _, w in rec[("link_rx", lk.name, j)]]
        assert _is_subsequence(got, sent)
    delivered = sum(len(rec[("link_rx", lk.name, j)]) for j in range(len(lk.streams)))
    sent = sum(len(rec[("link", lk.name, j)]) for j in range(len(lk.streams)))
    assert 0 < delivered < sent
    assert train.compare(prep, rec, final) != []


@pytest.mark.timeout(900)
def test_idle_trailing_node():
    """``tiny`` on 4 ``sim-node`` boards at batch 4: the mapper fills 3 nodes (conv1 and conv2
    [0, 3), conv2 [3, 8), conv3 and fc4) and leaves node 3 empty; no stream reaches it, so the
    cluster is nodes 0-2 and node 3 is reported idle (``idle_nodes``). Built, not simulated:
    a 3-node cluster of this shape trains in :func:`test_ocp_three_nodes`; the run of this one
    is :func:`test_idle_trailing_node_trains` (``-m long``)."""
    prep = train.prepare("tiny", "sim-node", nodes=4, images=2, batch=4, seed=0)
    Fragment.get(prep["top"], None)             # see _built
    assert prep["idle_nodes"] == [3]
    assert _node_layers(prep["top"]) == [["conv1", "conv2@0"], ["conv2@1"], ["conv3", "fc4"]]
    assert [(lk.src, lk.dst) for lk in prep["top"].links] == [(0, 1), (1, 0), (1, 2), (2, 1)]


@pytest.mark.long
def test_idle_trailing_node_trains():
    res = train.run("tiny", "sim-node", nodes=4, images=2, batch=4, seed=0)
    assert res["idle_nodes"] == [3]
    assert len(res["_prep"]["top"].nodes) == 3
    assert [(lk["src"], lk["dst"]) for lk in res["links"]] == [(0, 1), (1, 0), (1, 2), (2, 1)]
    _check(res, 2, 4)


def test_empty_node_between_busy_ones_is_refused():
    from fpdeep_hw.node.cluster import active_nodes
    from fpdeep_map.board import load_board
    from fpdeep_map.mapper import map_network
    from fpdeep_map.network import load_network
    plan = map_network(load_network("tiny"), load_board("sim-node"), 4, batch=4, max_row_lanes=1)
    assert active_nodes(plan) == 3
    nps = list(plan.node_plans)
    nps[1], nps[3] = dataclasses.replace(nps[1], segments=[]), nps[1]
    gap = dataclasses.replace(plan, node_plans=nps)
    with pytest.raises(ValueError, match=r"^Cluster: node 1 holds no layer but node 3 after it "
                                         r"does \(a relay node is not built\)$"):
        active_nodes(gap)
    empty = dataclasses.replace(plan, node_plans=[dataclasses.replace(n, segments=[])
                                                  for n in nps])
    with pytest.raises(ValueError, match=r"^Cluster: no node of the plan holds a layer$"):
        active_nodes(empty)
