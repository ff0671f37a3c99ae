# amaranth: UnusedElaboratable=no
"""Clusters whose plans keep weights on other nodes (the lending configurations of
``tests/sim/test_cluster_split.py``'s ``CONFIGS``: ``far``, ``keepers``, ``icplend``,
``ocplend``, ``twochains``), trained bit-exact against the golden model; a file of its own so
that the parallel test run spreads these simulations over the workers. Checks as
``test_cluster_split._check``. The training runs of ``far`` (4 nodes), ``ocplend`` and
``twochains`` (3 nodes, 200-220 s each) are in ``-m long`` only (CI time); ``far``'s and
``twochains``'s chains and ports are checked on the built cluster in the default run.
"""

import pytest

from test_cluster_split import _built, _check, _run


@pytest.fixture(scope="module")
def runs():
    cache = {}

    def get(name, images=2, batch=2):
        if (name, images, batch) not in cache:
            cache[(name, images, batch)] = _run(name, images, batch)
        return cache[(name, images, batch)]
    return get


def _far_structure(top):
    assert top.nodes[0].layers[0].lender.ranges == {2: (0, 4)}
    assert list(top.nodes[2].lenders) == ["conv1"] and not top.nodes[1].lenders
    assert {"far_fp_conv1", "far_g_conv1", "lend_fp_conv1", "lend_g_conv1"} <= \
        set(top.nodes[1].link_ports)


def test_far_lending_built():
    """``far``'s lending (built, not simulated): conv1's weights on node 2 for node 0, node 1
    passing the FP sets and the gradients on. Its training run is :func:`test_far_lending`."""
    _far_structure(_built("far")["top"])


@pytest.mark.long
@pytest.mark.timeout(900)
def test_far_lending(runs):
    """conv1's weights on node 2 for node 0: node 1 passes the FP sets (4 per image; conv1 has
    no EB) and the gradients on. ``-m long`` only (CI time, 100-133 s on 4 nodes): the default
    run builds it (:func:`test_far_lending_built`), trains a plan with a keeper next to its
    borrower (``tests/sim/test_cluster_split.py::test_parameter_lending``) and passes a
    stream through a node at block level (``tests/hw/test_framer.py::
    test_pass_through_node``)."""
    res = runs("far")
    _check(res, 2, 2)
    _far_structure(res["_prep"]["top"])
    for src, dst in ((2, 1), (1, 0)):
        lk = next(lk for lk in res["links"] if (lk["src"], lk["dst"]) == (src, dst))
        par = next(s for s in lk["streams"] if s["path"] == "parameters")
        # 4 sets of 27 weights (FP only) per image: 27 words
        assert par["items_per_image"] == [4] and par["predicted_words_per_image"] == 27


@pytest.mark.timeout(900)
def test_lent_icp_slice(runs):
    res = runs("icplend")
    _check(res, 2, 2)
    top = res["_prep"]["top"]
    nl = top.nodes[1].layers[0]
    assert (nl.key, nl.geometry.split, nl.lender.ranges) == ("conv2@1", "icp", {2: (0, 8)})
    assert hasattr(nl.fp, "up") and type(nl.fp).__name__ == "WSFPLayer"


@pytest.mark.long
@pytest.mark.timeout(900)
def test_lent_ocp_slice(runs):
    res = runs("ocplend")
    _check(res, 2, 2)
    top = res["_prep"]["top"]
    nl = top.nodes[0].layers[1]
    assert (nl.key, nl.geometry.split, nl.lender.ranges) == ("conv2@0", "ocp", {2: (0, 16)})
    assert hasattr(nl.eb, "up") and type(nl.eb).__name__ == "WSEBLayer"
    assert {"far_fp_conv2", "far_eb_conv2", "lend_fp_conv2", "w_fp_conv3_next"} <= \
        set(top.nodes[1].link_ports)


@pytest.mark.long
@pytest.mark.timeout(900)
def test_several_keepers(runs):
    """The hand-edited plan with three keepers, evaluated with its own figures
    (``evaluate_plan``), so that every stream's words are checked against them (``-m long``
    only, CI time: the default run shows several keepers bit-exact at block level,
    ``tests/hw/test_lend.py::test_lend_by_several_keepers``)."""
    res = runs("keepers")
    _check(res, 2, 2)
    top = res["_prep"]["top"]
    assert top.nodes[0].layers[0].lender.ranges == {0: (0, 1), 1: (1, 3), 2: (3, 4)}
    assert [lender.sets for lender, _ in top.nodes[0].layers[0].parts] == \
        [(0, 1), (1, 3), (3, 4)]
    assert top.nodes[1].link_items["lend_fp_conv1"] == 3
    assert top.nodes[0].link_items["w_fp_conv1_next"] == 3

def test_two_chains_of_one_layer():
    """The chains and ports of the ``twochains`` cluster (built, not simulated); its training
    run is :func:`test_two_chains_bit_exact`."""
    top = _built("twochains")["top"]
    assert top.nodes[1].chain_names == {("conv2", 0): "conv2_for0", ("conv2", 2): "conv2_for2"}
    assert sorted(top.nodes[1].lenders) == ["conv2_for0", "conv2_for2"]
    assert {"lend_fp_conv2_for0", "lend_fp_conv2_for2"} <= set(top.nodes[1].link_ports)


@pytest.mark.long
@pytest.mark.timeout(900)
def test_two_chains_bit_exact(runs):
    """Only with ``-m long`` (CI time: digits on three nodes, 220 s)."""
    _check(runs("twochains"), 2, 2)


def test_lending_to_a_node_without_the_layer_is_refused():
    from fpdeep_hw.node.sets import keepers_of
    from fpdeep_map.board import load_board
    from fpdeep_map.mapper import map_network
    from fpdeep_map.network import load_network
    net = load_network("tiny")
    plan = map_network(net, load_board("tiny-test"), 2, batch=2, max_row_lanes=1)
    plan.node_plans[1].bpram[0].borrower = 1
    with pytest.raises(ValueError, match=r"^node 1 borrows the weights of 'conv2' but holds no "
                                         r"segment of it$"):
        keepers_of(plan, net)
