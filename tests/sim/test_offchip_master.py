# amaranth: UnusedElaboratable=no
"""The master copies of the weights in external memory, as the plan keeps them
(``SegmentPlan.master_store``; :class:`fpdeep_hw.node.update.OffchipWeightUpdate`, the
``mem_<key>_master`` burst ports of :class:`fpdeep_hw.node.top.NodeTop`, the ``"master"`` rings
of its ``memory_map``, :class:`sim.dram_model.DRAMModel` loaded with the initial master copy).

* Every segment's update of a plan is an ``OffchipWeightUpdate`` with its own ring; a plan
  saved before the entry (``master_store`` absent) keeps the on-chip ``WeightUpdate``.
* A keeper's master copy of the weight sets it lends is off chip as well (``lend_<chain>@<k>``).
* ``tiny`` trains bit-exact with every master copy off chip, the update FIFOs folded as the
  build folds them, and memory stalls; each ring is read twice and written once per update.
The block itself: ``tests/hw/test_update.py``; the mapper's timing of it:
``fpdeep_map.costs.offchip_update_cycles``.
"""

import pytest
from amaranth.hdl import Fragment

from fpdeep_hw.node.top import NodeTop, mem_port_name
from fpdeep_hw.node.update import OffchipWeightUpdate, WeightUpdate
from fpdeep_map.board import load_board
from fpdeep_map.mapper import map_network
from fpdeep_map.network import load_network
from fpdeep_map.plan import Plan
from sim import train
from sim.golden.train import init_weights


def _node(net, plan, k=0, **kw):
    top = NodeTop(plan, k, net, lr=0.125, init_master=init_weights(net, 0, plan.numerics), **kw)
    Fragment.get(top, None)
    return top


def test_master_ports_follow_the_plan():
    net = load_network("tiny")
    plan = map_network(net, load_board("sim-node"), 1, batch=2, max_row_lanes=1)
    for s in plan.node_plans[0].segments:
        assert (s.master_store.words, s.master_store.width, s.master_store.offchip_words) == (
            s.weights, 24, s.weights)
    top = _node(net, plan, master_burst=4, master_prefetch=3)
    rings = []
    for nl in top.layers:
        g, upd = nl.geometry, nl.update
        assert isinstance(upd, OffchipWeightUpdate)
        assert nl.mem_master == mem_port_name(nl.key, "master") == f"mem_{nl.key}_master"
        assert (upd.burst, upd.prefetch, upd.depth) == (4, 3, g.weight_sets)
        assert upd.word_width == upd.set_width == g.p * g.s * g.kernel ** 2 * 24
        assert top.signature.members[nl.mem_master] == upd.signature.members["mem"]
        ring = top.memory_map[nl.mem_master]
        assert (ring["layer"], ring["store"], ring["base"], ring["words"], ring["word_bits"]) == (
            nl.key, "master", upd.base, upd.ext_words, upd.word_width)
        assert upd.base % 4 == 0 and upd.ext_words == -(-g.weight_sets // 4) * 4
        rings.append(ring["bytes"])
    rings.sort()
    assert all(a[1] <= b[0] for a, b in zip(rings, rings[1:]))
    assert [k for k, s, *_ in top.memories()] == [nl.key for nl in top.layers]
    # a plan saved before the entry: the master copies stay on chip
    # (round trip of the entry through YAML)
    again = Plan.from_yaml(plan.to_yaml())
    assert [s.master_store for s in again.node_plans[0].segments] == [
        s.master_store for s in plan.node_plans[0].segments]
    for s in again.node_plans[0].segments:
        s.master_store = None
    text = "".join(line + "\n" for line in again.to_yaml().splitlines()
                   if "master_store" not in line)
    assert "master_store" not in text
    old = Plan.from_yaml(text)
    assert all(s.master_store is None for s in old.node_plans[0].segments)
    top = _node(net, old)
    assert all(type(nl.update) is WeightUpdate and nl.mem_master is None for nl in top.layers)
    assert top.memories() == [] and top.memory_map == {}
    with pytest.raises(ValueError, match=r"^NodeTop master_burst must be a divisor of mem_burst "
                                         r"\(16\) of at least 2, not 3$"):
        NodeTop(plan, 0, net, lr=0.125, init_master={}, master_burst=3)
    with pytest.raises(ValueError, match=r"^NodeTop master_prefetch must be a positive integer, "
                                         r"not 0$"):
        NodeTop(plan, 0, net, lr=0.125, init_master={}, master_prefetch=0)
    with pytest.raises(ValueError, match=r"^NodeTop master_fold must be a positive integer, "
                                         r"not 0$"):
        NodeTop(plan, 0, net, lr=0.125, init_master={}, master_fold=0)
    with pytest.raises(ValueError, match=r"^NodeTop memory_word_bits must be None or a positive "
                                         r"integer, not 0$"):
        NodeTop(plan, 0, net, lr=0.125, init_master={}, memory_word_bits=0)


def test_master_folds():
    """``master_fold`` folds each update as ``lutram_fifo_fold`` gives (FIFOs of 8 sets: 4),
    never beyond ``set bits // memory_word_bits``; the default folds nothing. A folded update's
    port is a row wide, its bursts ``master_burst`` sets of ``fold`` words, and its ring in the
    ``memory_map`` counts rows."""
    net = load_network("tiny")
    plan = map_network(net, load_board("sim-node"), 1, batch=2, max_row_lanes=1)
    kw = dict(master_burst=4, master_prefetch=2)
    top = _node(net, plan, **kw)
    assert set(top.master_folds.values()) == {1}
    top = _node(net, plan, **kw, master_fold=16)
    assert {nl.mem_master: nl.update.fold for nl in top.layers} == top.master_folds == {
        nl.mem_master: 4 for nl in top.layers}
    for nl in top.layers:
        upd, ring = nl.update, top.memory_map[nl.mem_master]
        assert (upd.burst, upd.burst_sets, upd.word_width) == (16, 4, -(-upd.set_width // 4))
        assert len(getattr(top, nl.mem_master).r.payload) == upd.word_width
        assert (ring["base"], ring["words"], ring["word_bits"]) == (
            upd.base, 4 * -(-upd.depth // 4) * 4, upd.word_width)
        assert upd.base % 16 == 0
    top = _node(net, plan, **kw, master_fold=2)
    assert set(top.master_folds.values()) == {2}
    # a memory word of half the narrowest set: a fold of at most 2 (1 for sets narrower
    # than the memory word)
    widths = {nl.mem_master: nl.update.set_width for nl in top.layers}
    half = min(widths.values()) // 2
    top = _node(net, plan, **kw, master_fold=16, memory_word_bits=half)
    assert top.master_folds == {
        m: min(4, 1 << ((w // half).bit_length() - 1)) for m, w in widths.items()}
    assert top.master_folds[min(widths, key=widths.get)] == 2
    top = _node(net, plan, **kw, master_fold=16, memory_word_bits=max(widths.values()) + 1)
    assert set(top.master_folds.values()) == {1}
    # the default sim bursts (16 words, 4 read ahead): a 64-word FIFO stays unfolded
    top = _node(net, plan, master_fold=16)
    assert set(top.master_folds.values()) == {1}


def test_keeper_master_off_chip():
    """``tiny`` on 2 ``tiny-test`` boards (the ``lend`` plan: node 1 keeps conv2's weights for
    node 0): the keeper's master copy of those sets has its own ring and burst port."""
    net = load_network("tiny")
    plan = map_network(net, load_board("tiny-test"), 2, batch=2)
    (lp,) = [l for n in plan.node_plans for l in n.bpram]
    top = _node(net, plan, lp.lender)
    (name,) = top.lender_mems
    member = top.lender_mems[name]
    key = f"lend_{name}@{lp.lender}"
    assert member == mem_port_name(key, "master")
    upd = top.lenders[name].update
    assert isinstance(upd, OffchipWeightUpdate)
    assert upd.depth == top.lenders[name].weight_sets
    assert top.memory_map[member]["store"] == "master"
    assert (key, "master", member, upd) in top.memories()
    # folded: the keeper's port is a row wide (the node elaborates: its port meets the update's)
    top = _node(net, plan, lp.lender, master_burst=4, master_prefetch=2, master_fold=16)
    upd = top.lenders[name].update
    assert upd.fold == top.master_folds[member] > 1
    assert len(getattr(top, member).r.payload) == upd.word_width == -(-upd.set_width // upd.fold)
    # the borrower keeps no master copy of the borrowed segment (its keeper does)
    borrower = _node(net, plan, lp.borrower)
    assert all(nl.update is None for nl in borrower.layers if nl.name == lp.layer)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_training_bit_exact_with_offchip_masters():
    """``tiny`` on one node, 1 image in a mini-batch of 1, memory models that stall at random,
    the build's master settings (bursts of 4, 2 read ahead, folds up to 16): every working
    weight, the final master copies read back from the memory models and every other value
    equal the golden model's; each ring was read twice and written once by the update (and
    read once more, in part, ahead of the next mini-batch). Each update keeps its sets as 4
    rows (``lutram_fifo_fold``: FIFOs of 8 sets, 32 rows each), the memory's words, and takes
    a set every 4 cycles. Every other training test has unfolded updates; the folded block's own tests
    (several mini-batches, every stall): ``tests/hw/test_update.py``. (fc4's 640 sets at a set
    every 4 cycles dominate this run; one image and a memory latency of 4 keep it shorter
    than the unfolded test of two images was.)"""
    res = train.run("tiny", "sim-node", images=1, batch=1, seed=1, dram_stall=0.2,
                    dram_latency=4, master_burst=4, master_prefetch=2, master_fold=16)
    assert res["mismatches"] == [] and res["bit_exact"] is True
    top = res["_prep"]["top"]
    assert res["updates"] == {nl.key: 1 for nl in top.layers}
    assert res["master_folds"] == {nl.mem_master: 4 for nl in top.layers}
    for nl in top.layers:
        assert nl.update.fold == 4 and nl.update.fifo_depths == (32, 32)
        d = res["dram"][f"{nl.key}/master"]
        n = nl.update.ext_bursts
        assert d["bursts_written"] == n, (nl.key, d)
        assert 2 * n <= d["bursts_read"] <= 3 * n, (nl.key, d)
    assert res["offchip_stores"] == {f"{nl.key}/master": nl.mem_master for nl in top.layers}
