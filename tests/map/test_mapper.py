"""The mapping solver: invariants over random networks and clusters, and the paper's figures."""

import math

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fpdeep_map import costs
from fpdeep_map.board import Board, load_board
from fpdeep_map.graph import coarse_graph, operator_graph, total_macs
from fpdeep_map.mapper import build_works, map_network, residency
from fpdeep_map.network import Network, load_network
from fpdeep_map.plan import Plan

import networkx as nx


def roomy_board(**over):
    """A board with plenty of memory and logic: compute is the only constraint."""
    d = dict(name="roomy", device="synthetic", part="synthetic", lut=2_000_000, ff=4_000_000,
             bram36=4000, dsp=400, uram=0, clock_mhz=100.0, transceivers=200,
             transceiver_gbps=100.0, link_gbps=1e4, link_lanes=100, offchip_gbytes=64.0,
             offchip_gbps=1e6)
    d.update(over)
    return Board.from_dict(d)


@st.composite
def networks(draw):
    c = draw(st.integers(1, 6))
    h = draw(st.integers(6, 20))
    layers = []
    n_conv = draw(st.integers(1, 4))
    size = h
    for i in range(n_conv):
        k = draw(st.sampled_from([1, 3, 5]))
        if k > size + 2:
            k = 1
        pad = k // 2
        oc = draw(st.integers(1, 24))
        layers.append({"name": f"conv{i}", "kind": "conv", "out_channels": oc, "kernel": k,
                       "padding": pad})
        layers.append({"name": f"relu{i}", "kind": "relu"})
        if size >= 4 and draw(st.booleans()):
            layers.append({"name": f"pool{i}", "kind": "maxpool", "kernel": 2, "stride": 2})
            size = -(-(size - 2) // 2) + 1
    n_fc = draw(st.integers(1, 2))
    for j in range(n_fc):
        layers.append({"name": f"fc{j}", "kind": "fc",
                       "out_features": draw(st.integers(2, 40))})
        if j < n_fc - 1:
            layers.append({"name": f"frelu{j}", "kind": "relu"})
    layers.append({"name": "loss", "kind": "loss"})
    return Network.from_dict({"name": "random", "input": {"channels": c, "height": h, "width": h},
                              "layers": layers}, source="<hypothesis>")


def check_invariants(net, board, plan):
    works = build_works(net)
    # every unit (channel) of every layer is placed exactly once, with FP, EB and PG engines
    for w in works:
        ranges = sorted(tuple(s.channels) for n in plan.node_plans for s in n.segments
                        if s.layer == w.name)
        units = w.units
        if len(ranges) == 1 and ranges[0] == (0, w.cin) and w.split == "ocp":
            ranges = [(0, units)]
        assert ranges[0][0] == 0 and ranges[-1][1] == units, (w.name, ranges)
        for (a, b), (c, d) in zip(ranges, ranges[1:]):
            assert b == c, (w.name, ranges)
        for n in plan.node_plans:
            for s in n.segments:
                if s.layer == w.name:
                    want = {"fp", "pg"} | ({"eb"} if w.macs["eb"] else set())
                    assert set(s.engines) == want
    # no FPGA exceeds its resources (or the plan's budgets of them)
    b = plan.budgets
    for n in plan.node_plans:
        assert n.dsp <= board.dsp * b["dsp"]
        assert n.bram36 <= board.bram36 * b["bram"] + 1e-9
        assert n.lut <= board.lut * b["lut"]
        assert n.ff <= board.ff * b["ff"]
    # the work sums to the network's, phase by phase
    for phase in ("fp", "eb", "pg"):
        got = sum(e.macs_per_image for n in plan.node_plans for s in n.segments
                  for p, e in s.engines.items() if p == phase)
        want = {"fp": net.total_fp_macs, "eb": net.total_eb_macs, "pg": net.total_pg_macs}[phase]
        assert got == want, phase
    # each engine finishes an image within the pipeline period
    period = plan.summary["cycles_per_image"]
    for n in plan.node_plans:
        for s in n.segments:
            for e in s.engines.values():
                assert e.macs_per_image <= e.dsp * e.cycles_per_image <= e.dsp * period
    # the plan round-trips through YAML
    assert Plan.from_yaml(plan.to_yaml()) == plan


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=networks(), nodes=st.integers(1, 5))
def test_random_networks_invariants(net, nodes):
    board = roomy_board()
    plan = map_network(net, board, nodes)
    check_invariants(net, board, plan)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=networks(), nodes=st.integers(1, 6))
def test_more_fpgas_never_lower_throughput(net, nodes):
    board = roomy_board()
    a = map_network(net, board, nodes).summary
    b = map_network(net, board, nodes + 1).summary
    assert b["bottleneck"] == a["bottleneck"] == "compute"
    assert b["images_per_second"] >= a["images_per_second"] * (1 - 1e-9)


@pytest.mark.parametrize("name,nodes", [
    ("vgg16", 15), ("vgg19", 15),
    # 60 s: in -m long (CI time; VGG-16 and VGG-19 check the same invariants at 15 boards)
    pytest.param("alexnet", 15, marks=pytest.mark.long),
    ("tiny", 2), ("digits", 3)])
def test_zoo_invariants(name, nodes):
    net = load_network(name)
    board = load_board("vc709" if nodes == 15 else "tiny-test")
    plan = map_network(net, board, nodes)
    check_invariants(net, board, plan)


def test_vgg16_on_15_vc709_beats_the_paper_on_compute():
    """The architecture (lent layers' engines at the normal rate) beats the paper's VGG-16
    figures; as built today, the weight-stationary engines of lent layers also sweep padding,
    which costs throughput (docs/reproduction.md)."""
    board = load_board("vc709").with_overrides(link_gbps=150)
    arch = map_network(load_network("vgg16"), board, 15, ws_scans_padding=False).summary
    assert arch["dsp_utilization"] > 0.80          # the paper: about 80%
    assert arch["idle_fraction"] < 0.05            # the paper: under 5% for 5-85 FPGAs
    assert arch["throughput_gops_per_fpga"] > 1197  # the paper's VGG-16 figure
    assert arch["bottleneck"] == "compute"
    plan = map_network(load_network("vgg16"), board, 15)
    s = plan.summary
    assert s["dsp_utilization"] > 0.80
    assert s["images_per_second"] <= arch["images_per_second"]
    # the JSON figures agree with each other
    gops = 2 * s["train_macs_per_image"] * s["images_per_second"] / 15 / 1e9
    assert math.isclose(gops, s["throughput_gops_per_fpga"], rel_tol=1e-3)
    assert math.isclose(s["epoch_hours"], 1_281_167 / s["images_per_second"] / 3600, rel_tol=1e-3)


def test_alexnet_conv1_uses_output_channel_partition():
    works = {w.name: w for w in build_works(load_network("alexnet"))}
    assert works["conv1"].split == "ocp"           # 3 input channels: too few for ICP
    assert works["conv2"].split == "icp"


def test_parameter_balancing_on_the_small_board():
    net, board = load_network("digits"), load_board("tiny-test")
    plan = map_network(net, board, 2)
    lends = [l for n in plan.node_plans for l in n.bpram]
    assert lends, "the small board must need parameter balancing"
    for l in lends:
        assert l.lender != l.borrower
        seg = [s for s in plan.node(l.borrower).segments if s.layer == l.layer][0]
        assert seg.weights_borrowed >= l.weights
    # the lent weights and their gradients travel on the links between lender and borrower
    l = lends[0]
    step = 1 if l.borrower > l.lender else -1
    for j in range(l.lender, l.borrower, step):
        fwd = plan.link(j, j + step)
        assert any(s.path == "parameters" and s.layer == l.layer for s in fwd.streams)
        back = plan.link(j + step, j)
        assert any(s.path == "gradients" and s.layer == l.layer for s in back.streams)


def test_a_network_that_cannot_fit_names_the_node_and_shortfall():
    from fpdeep_map.errors import FpdeepError
    with pytest.raises(FpdeepError) as e:
        map_network(load_network("vgg16"), load_board("vc709"), 4)
    msg = str(e.value)
    assert "does not fit" in msg and "node" in msg and "BRAM36" in msg
    assert "\n" not in msg


def test_link_traffic_of_a_split_layer():
    """Across a cut inside an ICP layer: the partial sums of all output channels go forward and
    the errors of all output channels come back."""
    net = load_network("vgg16")
    plan = map_network(net, load_board("vc709").with_overrides(link_gbps=150), 15)
    n0 = plan.node(0)
    seg = [s for s in n0.segments if s.layer == "conv1_2"][0]
    assert seg.split == "icp" and seg.channels[1] < 64
    fwd = {(s.path, s.layer): s.words_per_image for s in plan.link(0, 1).streams}
    assert fwd[("partial_sums", "conv1_2")] == 64 * 224 * 224
    back = {(s.path, s.layer): s.words_per_image for s in plan.link(1, 0).streams}
    assert back[("errors", "conv1_2")] == 64 * 224 * 224
    # the input channels node 1 holds (conv1_1's outputs) are passed on by node 0
    n1seg = [s for s in plan.node(1).segments if s.layer == "conv1_2"][0]
    lo, hi = n1seg.channels
    assert fwd[("activations", "conv1_2")] == (hi - lo) * 224 * 224


def test_act_ram_residency_grows_towards_the_input():
    net = load_network("vgg16")
    works = build_works(net)
    res = residency(net, works, fc_microbatch=1)
    assert all(a > b for a, b in zip(res, res[1:]))
    assert res[-1] == 1.0          # the last fc: its own micro-batch only


def test_operator_graph_has_the_training_operators():
    net = load_network("vgg16")
    g = operator_graph(net)
    assert total_macs(g) == net.total_macs
    assert ("conv1_1", "eb") not in g              # the first layer propagates no error
    for layer in net.compute_layers():
        for phase in ("fp", "pg", "update"):
            assert (layer.name, phase) in g
    # cycles only through the weight edges of the update (the next mini-batch)
    acyclic = nx.DiGraph((u, v) for u, v, d in g.edges(data=True) if d["tensor"] != "weights")
    assert nx.is_directed_acyclic_graph(acyclic)
    cg = coarse_graph(net)
    assert list(cg.nodes) == [l.name for l in net.compute_layers()]
    assert sum(d["macs"] for _, d in cg.nodes(data=True)) == net.total_macs


@pytest.mark.parametrize("topology", ["chain", "ring", "mesh"])
def test_topologies(topology):
    plan = map_network(load_network("vgg16"), load_board("vc709").with_overrides(link_gbps=150),
                       15, topology=topology)
    cap = plan.summary["link_capacity_gbps"]
    assert cap == (75.0 if topology == "mesh" else 150.0)   # 3x5 mesh: four neighbours share
    if topology == "ring":
        assert any({l.src, l.dst} == {0, 14} for l in plan.links)


@pytest.mark.parametrize("name,nodes", [("vgg16", 15), ("tiny", 2), ("digits", 2)])
def test_layer_granular_plans(name, nodes):
    """--split layers: every layer whole on one node; never faster than cutting inside layers."""
    net = load_network(name)
    board = load_board("vc709" if nodes == 15 else "sim-node").with_overrides(link_gbps=1000)
    whole = map_network(net, board, nodes, split="layers")
    for n in whole.node_plans:
        for s in n.segments:
            assert s.split == "whole"
    assert sorted(s.layer for n in whole.node_plans for s in n.segments) == sorted(
        l.name for l in net.compute_layers())
    cut = map_network(net, board, nodes)
    assert whole.summary["compute_images_per_second"] <= cut.summary["compute_images_per_second"]
    check_invariants(net, board, whole)


# ---- timing model: steady state, mini-batch boundary, link transit (docs/mapping.md 4, 6) -----

def _sim_plan(net, nodes=1, batch=4, **kw):
    board = load_board("sim-node")
    if "link_gbps" in kw:
        board = board.with_overrides(link_gbps=kw.pop("link_gbps"))
    return map_network(load_network(net), board, nodes, batch=batch, max_row_lanes=1, **kw)


def test_steady_period_counts_the_line_buffer_start_up():
    """Conv FP/EB engines lose max(0, 2*Wv + 3 - R*G) cycles per image: tiny conv2 (Wv = 10,
    R*G = 16) 7 cycles, measured 1031 per image on one sim-node; 2-node conv2 (R*G = 8) 15."""
    s = _sim_plan("tiny").summary
    assert s["cycles_per_image"] == 1024
    assert s["engine_cycles_per_image"] == s["cycles_per_image_steady"] == 1031
    s = _sim_plan("tiny", nodes=2, split="layers").summary
    assert s["cycles_per_image"] == 512 and s["cycles_per_image_steady"] == 527
    s = _sim_plan("digits").summary           # conv2: R*G = 8 * 4, no loss; conv1 527 < 2048
    assert s["cycles_per_image_steady"] == 2048


@pytest.mark.parametrize("net,batch,n_fc,n_pg,lam,lag,rows,period", [
    ("tiny", 4, 640, 640, 202, 1, 4, 1031),
    ("digits", 4, 1280, 1280, 202, 1, 4, 2048),
    ("tiny", 128, 640, 640, 202, 1, 4, 1031),
])
def test_boundary_cost_formula(net, batch, n_fc, n_pg, lam, lag, rows, period):
    """boundary = A + F - (D_L + 1 + 1/H) T with A = N_pg + 3 N + 10 (measured 2573 / 5133
    from the last image's loss error to the FC's update with ``PGLayer.LATENCY`` 6, so 3 less
    since the accumulators drain under the next image), F = H*W + N_fp + 6 + loss latency
    (measured: the held image's loss error 864 / 1504 cycles after the update); the FC's
    master copy off chip adds ``costs.offchip_update_cycles`` (59 for 640 or 1280 sets, whole
    bursts of 16, a 20-cycle memory)."""
    plan = _sim_plan(net, batch=batch)
    s = plan.summary
    assert costs.offchip_update_cycles(n_fc) == 2 * 20 + 16 + 3 == 59
    a = n_pg + 3 * n_fc + 10 + 59
    f = 16 + n_fc + 6 + lam             # 16 pixels of 4 x 4 into the FC's store
    boundary = a + f - (lag + 1 + 1 / rows) * period
    assert s["boundary_cycles_per_batch"] == pytest.approx(boundary, abs=0.01)
    assert s["cycles_per_image_with_updates"] == pytest.approx(period + boundary / batch,
                                                               abs=0.01)
    assert s["images_per_second"] == pytest.approx(
        plan.clock_mhz * 1e6 / s["cycles_per_image_with_updates"], rel=1e-5)
    assert s["steady_images_per_second"] == pytest.approx(
        plan.clock_mhz * 1e6 / s["cycles_per_image_steady"], rel=1e-5)
    assert s["epoch_hours"] == pytest.approx(1_281_167 / s["images_per_second"] / 3600,
                                             abs=1e-4)


def test_boundary_cost_when_the_fc_is_the_pace():
    """tiny on two sim-nodes: fc4 replays 512 cycles per image, T = 527, so the image after the
    held one follows after max(0.75 T, 512) = 512 (measured 512), and conv2 (node 0, the
    slowest at 527) had images queued in the link's receive buffer during the stall, so the
    batch's other three images come at 512 too (measured): the catch-up is 3 (T - 512)."""
    s = _sim_plan("tiny", nodes=2, split="layers").summary
    a = 512 + 3 * 512 + 10 + costs.offchip_update_cycles(512)
    f = 16 + 512 + 6 + 202
    assert s["boundary_cycles_per_batch"] == pytest.approx(a + f - 3 * 527 - 3 * (527 - 512),
                                                            abs=0.01)
    # measured (12 images, B = 4, seed 0, the master copies off chip; 825.62 on chip)
    assert s["cycles_per_image_with_updates"] == pytest.approx(837.5, rel=0.02)


def test_boundary_cost_against_the_co_simulation():
    """Measured with ``python -m sim.train`` (12 images, B = 4, seed 0): loss-output spacing
    over the first mini-batch and over whole mini-batches (docs/mapping.md section 6), with the
    master copies off chip (memory of 20 cycles)."""
    for net, steady, whole in (("tiny", 1031.0, 1317.25), ("digits", 2048.0, 2568.0)):
        s = _sim_plan(net).summary
        assert s["cycles_per_image_steady"] == pytest.approx(steady, rel=0.02)
        assert s["cycles_per_image_with_updates"] == pytest.approx(whole, rel=0.02)


def test_boundary_catch_up_of_a_weight_stationary_slice_on_the_last_node():
    """digits on 3 ``tiny-test`` (``twochains``): conv2, the slowest layer (2,000 cycles,
    weight-stationary on nodes 0 and 2, 1,024 on node 1), shares node 2 with fc3 (1,280).
    During fc3's boundary stall conv2 runs ``D_conv2 - D_fc3 - 1 = 4 - 1 - 1 = 2`` images past
    the held one (its version gate; node 2's slice holds them in its two accumulator halves),
    so the batch's other three images come 2,000 - 1,280 = 720 cycles early each. Measured
    (12 images, B = 4, seed 0, ``tests/sim/test_cluster_model.py -m long -k twochains``):
    2,133.25 cycles per image over whole mini-batches; 2,548.25 modelled without the room."""
    plan = map_network(load_network("digits"), load_board("tiny-test"), 3, batch=4,
                       max_row_lanes=1)
    lags = {s.layer: math.floor(s.act_ram_images) for n in plan.node_plans for s in n.segments}
    assert (lags["conv2"], lags["fc3"]) == (4, 1)
    s = plan.summary
    assert s["cycles_per_image_steady"] == 2000
    # fc3's stall: A + F - (D_L + 1) T - min(T/H, T - N_fp) = 2,193 with no backlog (the row
    # term, 500); with two images of backlog the catch-up is min(2 T, 3 x 720) = 2,160
    assert s["boundary_cycles_per_batch"] == pytest.approx(2193 + 500 - 2160, abs=0.01)
    assert s["cycles_per_image_with_updates"] == pytest.approx(2133.25, abs=0.01)


def test_residency_includes_link_transit():
    """Two sim-nodes with whole layers: conv1 and conv2 (node 0) wait for errors that cross the
    link twice; each hop costs a frame of 34 words at the link rate + 6 + 54 cycles."""
    one = {s.layer: s for n in _sim_plan("tiny").node_plans for s in n.segments}
    fast = {s.layer: s for n in _sim_plan("tiny", nodes=2, split="layers").node_plans
            for s in n.segments}
    slow = {s.layer: s for n in _sim_plan("tiny", nodes=2, split="layers",
                                          link_gbps=0.2).node_plans for s in n.segments}
    hop_fast = (34 + 60) / 527
    hop_slow = (34 * 32 + 60) / 1100.9
    for layer in ("conv1", "conv2"):
        # at 0.2 Gb/s the FC's replay and loss (720 cycles) end within a period: only the hops
        assert slow[layer].act_ram_images == pytest.approx(
            one[layer].act_ram_images + 2 * hop_slow, abs=1e-3)
        assert fast[layer].act_ram_images >= one[layer].act_ram_images + 2 * hop_fast - 1e-3
        assert slow[layer].act_ram.words > fast[layer].act_ram.words > one[layer].act_ram.words
    assert slow["conv3"].act_ram_images == one["conv3"].act_ram_images    # stays on node 1
    assert [math.floor(slow[l].act_ram_images) for l in ("conv1", "conv2")] == [6, 5]
    # one FPGA: nothing added
    works = build_works(load_network("tiny"))
    assert residency(load_network("tiny"), works, 1) == residency(
        load_network("tiny"), works, 1, link_delay=([0.0] * 4, [0.0] * 4))


def test_residency_of_the_fc_as_built():
    """The FC replays its stored image after the last pixel (N_fp cycles), then the loss unit
    (202 cycles for 10 classes): its own Act-RAM holds 1 + (N_fp + 6 + 202) / T images; the
    layers below keep f + g >= 2 for it (enough on one FPGA, measured) and get more when the
    replay outlasts a period (tiny on two sim-nodes: 720 cycles at T = 527)."""
    one = {s.layer: s for n in _sim_plan("tiny").node_plans for s in n.segments}
    assert one["fc4"].act_ram_images == pytest.approx(1 + (640 + 6 + 202) / 1031, abs=1e-4)
    assert [one[l].act_ram_images for l in ("conv1", "conv2", "conv3")] == [4.25, 3.625, 2.5]
    two = {s.layer: s for n in _sim_plan("tiny", nodes=2, split="layers").node_plans
           for s in n.segments}
    f_fc = 1 + (512 + 6 + 202) / 527
    g_fc = (512 / 16 + 7) / 527
    assert two["fc4"].act_ram_images == pytest.approx(f_fc, abs=1e-4)
    assert two["conv3"].act_ram_images == pytest.approx(2 / 4 + f_fc + g_fc, abs=1e-4)
    assert [math.floor(two[l].act_ram_images) for l in ("conv1", "conv2", "conv3", "fc4")] == \
        [5, 4, 2, 2]


def test_link_bound_steady_period():
    s = _sim_plan("tiny", nodes=2, split="layers", link_gbps=0.2).summary
    assert s["bottleneck"] == "link"
    # 34 wire words of frames per image at 32 cycles each, and a 3-word credit frame per 8192
    # cycles: (34 x 32) / (1 - 3 x 32 / 8192) = 1100.9
    assert s["cycles_per_image_steady"] == pytest.approx(34 * 32 / (1 - 3 * 32 / 8192), abs=0.01)
    # the engines' 527 + 1728 / 4 per image fit in the link's 1100.9: the receive buffers and the
    # lags keep the link busy through the boundary (measured 1104 over whole mini-batches)
    assert s["cycles_per_image_with_updates"] == s["cycles_per_image_steady"]
    assert s["boundary_cycles_per_batch"] == 0


def test_timing_keys_round_trip():
    plan = _sim_plan("tiny", nodes=2, split="layers")
    back = Plan.from_yaml(plan.to_yaml())
    assert back == plan
    for key in ("cycles_per_image_steady", "boundary_cycles_per_batch",
                "cycles_per_image_with_updates", "steady_images_per_second",
                "engine_cycles_per_image"):
        assert back.summary[key] == plan.summary[key]


# ---- ReLU-mask and argmax stores ------------------------------------------------------------

def _without_stores(monkeypatch, *args, **kw):
    """The plan as mapped before the stores were planned (``place_stores`` left out)."""
    from fpdeep_map import mapper
    with monkeypatch.context() as mp:
        mp.setattr(mapper._Context, "place_stores", lambda self: None)
        return map_network(*args, **kw)


def _lags(plan):
    """``floor(act_ram_images)``, the smallest over a layer's segments (the hardware's lag)."""
    lags = {}
    for n in plan.node_plans:
        for s in n.segments:
            lags[s.layer] = min(math.floor(s.act_ram_images), lags.get(s.layer, 10 ** 9))
    return lags


def test_vgg16_keeps_the_big_mask_and_argmax_stores_off_chip(monkeypatch):
    """The plan the build maps (VGG-16 on 15 VC709, ``max_row_lanes=1``): every segment with a
    ReLU / pool has a mask / argmax store of (lag + 1) images, as the node builds them; the
    big ones (conv2_2's on node 4: 128 x 2,546,432 and 256 x 636,608 bits) are off chip, and
    their bytes and traffic (written and read once per image) are in the node's figures."""
    net, board = load_network("vgg16"), load_board("vc709")
    args = (net, board, 15)
    kw = dict(batch=128, max_row_lanes=1)
    plan = map_network(*args, **kw)
    lags = _lags(plan)
    for n in plan.node_plans:
        for s in n.segments:
            posts = [net.layer(p) for p in s.post]
            lag, oc = lags[s.layer], s.out_channels[1] - s.out_channels[0]
            layer = net.layer(s.layer)
            conv_px = layer.out_shape[1] * layer.out_shape[2] if s.kind == "conv" else 1
            pool = next((p for p in posts if p.kind == "maxpool"), None)
            if any(p.kind == "relu" for p in posts):
                assert (s.mask_store.words, s.mask_store.width) == ((lag + 1) * conv_px, oc)
            else:
                assert s.mask_store.words == 0
            if pool is not None:
                assert pool.kernel == 2
                assert (s.arg_store.words, s.arg_store.width) == (
                    (lag + 1) * pool.out_shape[1] * pool.out_shape[2], 2 * oc)
            else:
                assert s.arg_store.words == 0
            for m in (s.mask_store, s.arg_store):
                assert m.depth == m.words and m.banks == 1
                assert m.offchip_words in (0, m.words)
                assert (m.bram18 == 0) == (m.offchip_words > 0 or m.words == 0)
    s = next(s for s in plan.node_plans[4].segments if s.layer == "conv2_2")
    assert lags["conv2_2"] == 202
    assert (s.mask_store.words, s.mask_store.width) == (203 * 112 * 112, 128) == (2_546_432, 128)
    assert (s.arg_store.words, s.arg_store.width) == (203 * 56 * 56, 256) == (636_608, 256)
    assert s.mask_store.offchip_words == s.mask_store.words
    assert s.arg_store.offchip_words == s.arg_store.words
    # the same plan without the stores: the difference is exactly theirs
    old = _without_stores(monkeypatch, *args, **kw)
    ips = plan.summary["steady_images_per_second"]
    assert ips == old.summary["steady_images_per_second"]
    assert plan.summary["bottleneck"] == "compute"
    for n, o in zip(plan.node_plans, old.node_plans):
        off = [(m, px) for s in n.segments
               for m, px in ((s.mask_store, s.mask_store.words // (lags[s.layer] + 1)),
                             (s.arg_store, s.arg_store.words // (lags[s.layer] + 1)))
               if m.offchip_words]
        on = sum(m.bram18 for s in n.segments for m in (s.mask_store, s.arg_store))
        assert n.bram36 == o.bram36 + on / 2
        assert n.bram36 <= board.bram36 * plan.budgets["bram"]
        mbytes = sum(m.words * m.width for m, _ in off) / 8 / 1e6
        gbps = sum(2 * px * m.width for m, px in off) * ips / 1e9
        assert n.offchip_mbytes == pytest.approx(o.offchip_mbytes + mbytes, abs=2e-3)
        assert n.offchip_gbps == pytest.approx(o.offchip_gbps + gbps, abs=2e-4)
    n4, o4 = plan.node_plans[4], old.node_plans[4]
    # 40.7 + 20.4 MB, 2 x (12,544 x 128 + 3,136 x 256) bits per image
    assert n4.offchip_mbytes - o4.offchip_mbytes == pytest.approx(61.12, abs=0.01)
    assert n4.offchip_gbps - o4.offchip_gbps == pytest.approx(
        2 * (12544 * 128 + 3136 * 256) * ips / 1e9, abs=2e-4)


def test_small_stores_on_chip_count_in_the_bram(monkeypatch):
    """tiny on one sim-node: every store fits in the BRAM left; each counts its RAMB18s in the
    node's BRAM36 as an Act-RAM does (ceil(bits / 16 Kbit))."""
    plan = _sim_plan("tiny", batch=2)
    segs = {s.layer: s for s in plan.node_plans[0].segments}
    lags = _lags(plan)
    want = {"conv1": (64, 4, 0, 0), "conv2": (64, 8, 16, 16), "conv3": (16, 8, 0, 0),
            "fc4": (0, 0, 0, 0)}
    total = 0
    for layer, (mpx, mw, apx, aw) in want.items():
        s, d = segs[layer], lags[layer] + 1
        assert (s.mask_store.words, s.mask_store.width) == (d * mpx, mw)
        assert (s.arg_store.words, s.arg_store.width) == (d * apx, aw)
        for m in (s.mask_store, s.arg_store):
            assert m.offchip_words == 0 and m.bram18 == -(-m.words * m.width // 16384)
            total += m.bram18
    assert total == 4
    old = _without_stores(monkeypatch, load_network("tiny"), load_board("sim-node"), 1,
                          batch=2, max_row_lanes=1)
    assert plan.node_plans[0].bram36 == old.node_plans[0].bram36 + total / 2
    assert plan.node_plans[0].offchip_gbps == old.node_plans[0].offchip_gbps


def test_plans_saved_before_the_stores_still_load():
    """A plan written before ``mask_store`` / ``arg_store`` existed (no such keys), as YAML or
    as JSON: loads, with ``None`` entries (the hardware then keeps both stores on chip, sized
    for its lag as before), and round-trips."""
    import json

    import yaml
    plan = _sim_plan("tiny", nodes=2, batch=2)
    d = plan.to_dict()
    for n in d["node_plans"]:
        for s in n["segments"]:
            assert s["mask_store"]["words"] >= 0 and "arg_store" in s
            del s["mask_store"], s["arg_store"]
    for old in (Plan.from_yaml(yaml.safe_dump(d)), Plan.from_dict(json.loads(json.dumps(d)))):
        segs = [s for n in old.node_plans for s in n.segments]
        assert segs and all(s.mask_store is None and s.arg_store is None for s in segs)
        assert Plan.from_yaml(old.to_yaml()) == old
        # everything else as mapped
        for s, t in zip(segs, [s for n in plan.node_plans for s in n.segments]):
            assert (s.act_ram, s.lpram, s.lgb, s.act_ram_images) == (
                t.act_ram, t.lpram, t.lgb, t.act_ram_images)
    # a plan with them keeps them exactly
    back = Plan.from_dict(json.loads(json.dumps(d | {"node_plans": plan.to_dict()["node_plans"]})))
    assert back == plan
