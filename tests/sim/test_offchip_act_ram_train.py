# amaranth: UnusedElaboratable=no
"""Off-chip Act-RAMs, ReLU-mask and argmax stores in the generated node and in the training
simulation (:mod:`fpdeep_hw.node.top` ``mem_*`` ports, :mod:`fpdeep_hw.memory.offchip_act_ram`,
:mod:`sim.dram_model`, ``python -m sim.train --offchip-act-ram``, ``--offchip-stores``).

The mapper keeps ``tiny``'s Act-RAMs and stores on chip, so the plans are rewritten with
:func:`sim.train.force_offchip_act_ram` and :func:`sim.train.force_offchip_stores` (the test /
debug options ``--offchip-act-ram``, ``--offchip-stores``). Bursts of 4 words and a prefetch
FIFO of 2 bursts, so that every layer's words go through the external ring (with the default
16 x 4 the on-chip FIFOs hold all of ``tiny``'s residency and the ring of conv3 / fc4 is never
used); memory models of 20 cycles.

* ``NodeTop`` has a ``mem_*`` member exactly for each off-chip Act-RAM (``mem_<layer>``) and
  store (``mem_<layer>_mask``, ``mem_<layer>_arg``), connected to its ``OffchipActRAM`` /
  ``OffchipFIFO``; the rings' address ranges are disjoint (``memory_map``); on-chip stores stay
  ``SyncFIFOBuffered`` of the plan's depth.
* ``tiny`` on one ``sim-node`` with every Act-RAM, mask and argmax store off chip, 2 images,
  batch 2: every activation (including the words read back from the memory models), mask,
  argmax (as written by FP and as read back into BPFront), error, gradient, weight version,
  final master weight and overflow count equals the golden model's; every ring was used;
  cycles per image within 2 % of the plan's.
* ``tiny`` on 2 ``sim-node`` boards (conv2 split by output channels, ``mem_conv2_at0`` /
  ``mem_conv2_at1``, ``mem_conv2_at0_mask``, ...), every Act-RAM and store off chip, memory
  stalls: bit-exact.
* ``-m long`` (not in the default run, about 2 minutes): cycles per image with on-chip and
  off-chip Act-RAMs (4 images; default and small bursts): within 2 % (measured: equal, 1031
  cycles per image, 9553 cycles); a 400-cycle memory adds cycles at the end of the run.
"""

import numpy as np
import pytest
from amaranth.hdl import Fragment

from fpdeep_hw.memory.act_ram import ActRAM
from amaranth.lib.fifo import SyncFIFOBuffered

from fpdeep_hw.memory.offchip_act_ram import OffchipActRAM, OffchipFIFO
from fpdeep_hw.node.top import NodeTop, mem_port_name
from fpdeep_map.board import load_board
from fpdeep_map.mapper import map_network
from fpdeep_map.network import load_network
from sim import train
from sim.golden.train import init_weights

SMALL = dict(mem_burst=4, mem_prefetch=2, dram_latency=20)


def _tiny(nodes=1, **kw):
    net = load_network("tiny")
    plan = map_network(net, load_board("sim-node"), nodes, batch=2, max_row_lanes=1, **kw)
    return net, plan


def _node(net, plan, k=0, **kw):
    """A node, elaborated (its wiring checked, every sub-component used)."""
    top = NodeTop(plan, k, net, lr=0.125, init_master=init_weights(net, 0, plan.numerics), **kw)
    Fragment.get(top, None)
    return top


def _mem_members(node):
    """The burst ports of the node's Act-RAMs, mask and argmax stores (the plan keeps every
    master copy off chip too: those ports, ``mem_*_master``, are tested in
    ``tests/sim/test_offchip_master.py``)."""
    return {n for n in node.signature.members if n.startswith("mem_")
            and not n.endswith("_master")}


def _rings(top):
    """``memory_map`` without the master copies' rings."""
    return {k: v for k, v in top.memory_map.items() if v["store"] != "master"}


def test_mem_members_exactly_for_offchip_segments():
    net, plan = _tiny()
    assert all(s.act_ram.offchip_words == 0 for s in plan.node_plans[0].segments)
    top = _node(net, plan)
    assert _mem_members(top) == set() and _rings(top) == {}
    assert all(type(nl.act_ram) is ActRAM and nl.mem is None for nl in top.layers)
    # the rewrite: as the mapper writes an Act-RAM that does not fit
    assert train.force_offchip_act_ram(plan, ["conv2", "fc4"]) == [(0, "conv2"), (0, "fc4")]
    for s in plan.node_plans[0].segments:
        a = s.act_ram
        if s.layer in ("conv2", "fc4"):
            assert (a.offchip_words, a.bram18, a.depth, a.banks) == (a.words, 0, a.words, 1)
        else:
            assert a.offchip_words == 0 and a.bram18 > 0
    top = _node(net, plan, mem_burst=8)
    assert _mem_members(top) == {"mem_conv2", "mem_fc4"}
    by_name = {nl.name: nl for nl in top.layers}
    for n in ("conv1", "conv3"):
        assert type(by_name[n].act_ram) is ActRAM and by_name[n].mem is None
    for n in ("conv2", "fc4"):
        ram = by_name[n].act_ram
        assert isinstance(ram, OffchipActRAM) and by_name[n].mem == f"mem_{n}"
        assert ram.burst == 8 and ram.prefetch == 4
        # the port has the Act-RAM's burst-port signature
        assert top.signature.members[f"mem_{n}"] == ram.signature.members["mem"]
        assert set(top.signature.members[f"mem_{n}"].signature.members) == {
            "aw", "w", "b", "ar", "r"}
        mm = top.memory_map[f"mem_{n}"]
        assert (mm["base"], mm["words"]) == (ram.base, ram.ext_words)
        assert mm["word_bits"] == by_name[n].geometry.in_channels * 16
        assert ram.base + ram.ext_words <= 1 << ram.addr_width
        assert mm["bytes"] == [ram.base * mm["word_bytes"],
                               (ram.base + ram.ext_words) * mm["word_bytes"]]
    # rings one after the other, disjoint, each on a boundary of a burst
    # (conv1's master copy's ring comes first, in segment order)
    a, b = top.memory_map["mem_conv2"], top.memory_map["mem_fc4"]
    assert min(r["bytes"][0] for r in top.memory_map.values()) == 0
    spans = sorted(r["bytes"] for r in top.memory_map.values())
    assert all(x[1] <= y[0] for x, y in zip(spans, spans[1:]))
    assert a["bytes"][1] <= b["bytes"][0]
    assert b["bytes"][0] % (8 * b["word_bytes"]) == 0 and b["base"] % 8 == 0


def test_store_members_exactly_for_offchip_stores():
    net, plan = _tiny()
    segs = {s.layer: s for s in plan.node_plans[0].segments}
    # on chip, as the hardware sized them before the plan had them: (lag + 1) x pixels
    top = _node(net, plan)
    for nl in top.layers:
        g, s = nl.geometry, nl.segment
        for fifo, entry, there, px in ((nl.mask_fifo, s.mask_store, g.relu,
                                        g.conv_height * g.conv_width),
                                       (nl.arg_fifo, s.arg_store, g.pool is not None,
                                        g.out_height * g.out_width)):
            if not there:
                assert fifo is None and entry.words == 0
                continue
            assert type(fifo) is SyncFIFOBuffered and entry.offchip_words == 0
            assert fifo.depth == entry.words == (nl.lag + 1) * px
    assert all(nl.memories() == [("master", f"mem_{nl.key}_master", nl.update)]
               for nl in top.layers)
    # the rewrite: as the mapper writes a store that does not fit
    assert train.force_offchip_stores(plan, ["conv2", "fc4"]) == [
        (0, "conv2", "mask"), (0, "conv2", "arg")]
    for s in plan.node_plans[0].segments:
        for st in ("mask", "arg"):
            a = getattr(s, f"{st}_store")
            if s.layer == "conv2":
                assert (a.offchip_words, a.bram18, a.depth, a.banks) == (a.words, 0, a.words, 1)
            else:
                assert a.offchip_words == 0
    train.force_offchip_act_ram(plan, ["conv2"])
    top = _node(net, plan, mem_burst=8)
    assert _mem_members(top) == {"mem_conv2", "mem_conv2_mask", "mem_conv2_arg"}
    nl = next(nl for nl in top.layers if nl.name == "conv2")
    assert nl.memories() == [("act", "mem_conv2", nl.act_ram),
                             ("mask", "mem_conv2_mask", nl.mask_fifo),
                             ("arg", "mem_conv2_arg", nl.arg_fifo),
                             ("master", "mem_conv2_master", nl.update)]
    for st, fifo, bits in (("mask", nl.mask_fifo, 8), ("arg", nl.arg_fifo, 8 * 2)):
        assert isinstance(fifo, OffchipFIFO) and not isinstance(fifo, OffchipActRAM)
        member = mem_port_name("conv2", st)
        assert member == f"mem_conv2_{st}" and getattr(nl, f"mem_{st}") == member
        entry = getattr(segs["conv2"], f"{st}_store")
        assert (fifo.width, fifo.depth, fifo.burst) == (bits, entry.words, 8) == (
            entry.width, entry.words, 8)
        assert top.signature.members[member] == fifo.signature.members["mem"]
        mm = top.memory_map[member]
        assert (mm["layer"], mm["store"], mm["base"], mm["words"], mm["word_bits"]) == (
            "conv2", st, fifo.base, fifo.ext_words, bits)
    # conv1 / conv3 keep their on-chip stores
    assert type(top.layers[0].mask_fifo) is SyncFIFOBuffered
    # every ring in its own byte range, one after the other
    rings = sorted(mm["bytes"] for mm in top.memory_map.values())
    assert [m["store"] for m in _rings(top).values()] == ["act", "mask", "arg"]
    assert all(a[1] <= b[0] for a, b in zip(rings, rings[1:]))
    assert mem_port_name("conv2@1", "lgb") == "mem_conv2_at1_lgb"
    with pytest.raises(ValueError, match=r"^mem_port_name store must be one of \('act', "
                                         r"'mask', 'arg', 'master', 'lgb'\), not 'bgb'$"):
        mem_port_name("conv2", "bgb")


def test_store_entries_checked():
    """NodeTop reads the plan's store entries: one too small for the lag or of the wrong word
    width is refused; a plan of before the entries (None) keeps today's on-chip stores."""
    from fpdeep_map.plan import MemoryPlan
    net, plan = _tiny()
    init = init_weights(net, 0, plan.numerics)
    seg = next(s for s in plan.node_plans[0].segments if s.layer == "conv2")
    good = seg.mask_store
    seg.mask_store = MemoryPlan(words=good.words - 1, width=8)
    with pytest.raises(ValueError, match=r"^NodeTop: the ReLU-mask store of 'conv2' \(255 words\) "
                                         r"cannot hold the lag of 3 images plus one, of 64 "
                                         r"pixels$"):
        NodeTop(plan, 0, net, lr=0.125, init_master=init)
    seg.mask_store, arg = good, seg.arg_store
    seg.arg_store = MemoryPlan(words=arg.words, width=8)
    with pytest.raises(ValueError, match=r"^NodeTop: the argmax store of 'conv2' in the plan "
                                         r"holds words of 8 bits; its FP layer's are 16 bits "
                                         r"wide$"):
        NodeTop(plan, 0, net, lr=0.125, init_master=init)
    for s in plan.node_plans[0].segments:
        s.mask_store = s.arg_store = None
    top = _node(net, plan)
    nl = top.layers[1]
    assert type(nl.mask_fifo) is type(nl.arg_fifo) is SyncFIFOBuffered
    assert (nl.mask_fifo.depth, nl.arg_fifo.depth) == (good.words, arg.words)
    assert train.force_offchip_stores(plan, "all") == []


def test_split_layer_port_names():
    net, plan = _tiny(nodes=2)
    assert train.force_offchip_act_ram(plan, "all") == [
        (0, "conv1"), (0, "conv2"), (1, "conv2"), (1, "conv3"), (1, "fc4")]
    assert _mem_members(_node(net, plan, 0)) == {"mem_conv1", "mem_conv2_at0"}
    assert _mem_members(_node(net, plan, 1)) == {"mem_conv2_at1", "mem_conv3", "mem_fc4"}


def test_bad_arguments(tmp_path, capsys):
    net, plan = _tiny()
    with pytest.raises(train.TrainError, match=r"^--offchip-act-ram: no layer 'conv9' in the "
                                               r"plan \(layers: conv1, conv2, conv3, fc4, or "
                                               r"all\)$"):
        train.force_offchip_act_ram(plan, ["conv2", "conv9"])
    with pytest.raises(train.TrainError, match=r"^--offchip-stores: no layer 'conv9' in the "
                                               r"plan \(layers: conv1, conv2, conv3, fc4, or "
                                               r"all\)$"):
        train.force_offchip_stores(plan, ["conv9"])
    with pytest.raises(train.TrainError, match=r"^--offchip-lgb: no layer 'conv9' in the "
                                               r"plan \(layers: conv1, conv2, conv3, fc4, or "
                                               r"all\)$"):
        train.force_offchip_lgb(plan, ["conv9"])
    init = init_weights(net, 0, plan.numerics)
    with pytest.raises(ValueError, match=r"^NodeTop mem_burst must be a power of two from 2 to "
                                         r"256, not 12$"):
        NodeTop(plan, 0, net, lr=0.125, init_master=init, mem_burst=12)
    with pytest.raises(ValueError, match=r"^NodeTop mem_prefetch must be an integer of at least "
                                         r"2, not 1$"):
        NodeTop(plan, 0, net, lr=0.125, init_master=init, mem_prefetch=1)
    cases = [
        (["--offchip-act-ram", "conv9"], "--offchip-act-ram: no layer 'conv9' in the plan"),
        (["--offchip-stores", "conv9"], "--offchip-stores: no layer 'conv9' in the plan"),
        (["--offchip-lgb", "conv9"], "--offchip-lgb: no layer 'conv9' in the plan"),
        (["--dram-latency", "0"], "--dram-latency must be a positive integer, not 0"),
        (["--dram-words-per-cycle", "3"], "--dram-words-per-cycle must be in (0, 2], not 3.0"),
        (["--dram-stall", "1"], "--dram-stall must be in [0, 1), not 1.0"),
        (["--offchip-burst", "3"], "--offchip-burst must be a power of two from 2 to 256, "
                                   "not 3"),
        (["--offchip-prefetch", "1"], "--offchip-prefetch must be an integer of at least 2, "
                                      "not 1"),
        (["--master-fold", "0"], "--master-fold must be a positive integer, not 0"),
        (["--master-prefetch", "0"], "--master-prefetch must be a positive integer, not 0"),
        (["--master-burst", "3"], "--master-burst must be a divisor of --offchip-burst (16) "
                                  "of at least 2, not 3"),
    ]
    for k, (extra, msg) in enumerate(cases):
        out = tmp_path / f"out{k}"
        argv = ["--net", "tiny", "--board", "sim-node", "--images", "2", "--batch", "2",
                "--out", str(out)] + extra
        assert train.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and msg in err, err
        assert not out.exists()
    with pytest.raises(SystemExit) as e:          # argparse's own check: its one line
        train.main(["--net", "tiny", "--board", "sim-node", "--images", "2", "--batch", "2",
                    "--out", str(tmp_path / "ws"), "--ws-pg", "some"])
    assert e.value.code == 2 and not (tmp_path / "ws").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: argument --ws-pg: invalid choice: "
                                                    "'some'"), err
    with pytest.raises(SystemExit) as e:
        train.main(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    for opt in ("--offchip-act-ram", "--offchip-stores", "--offchip-lgb", "--ws-pg",
                "--dram-latency",
                "--dram-words-per-cycle", "--dram-stall", "--offchip-burst", "--offchip-prefetch"):
        assert opt in help_text


STORES = {"conv1": ["mask"], "conv2": ["mask", "arg"], "conv3": ["mask"]}


def _check_rings(res, keys, lgbs=()):
    assert set(res["offchip_act_ram"]) == set(keys)
    # the segments' mask and argmax stores, keys <segment>/<store>
    stores = [f"{key}/{st}" for key in keys for st in STORES.get(key.split("@")[0], [])]
    masters = [f"{key}/master" for key in keys]
    lgbs = [f"{key}/lgb" for key in lgbs]
    assert set(res["offchip_stores"]) == set(stores) | set(masters) | set(lgbs)
    assert set(res["dram"]) - {"latency", "words_per_cycle", "stall", "burst",
                               "prefetch"} == set(keys) | set(stores) | set(masters) | set(lgbs)
    for key in keys + stores + lgbs:
        d = res["dram"][key]
        # every layer's words went through its external ring and came back
        assert d["bursts_written"] > 0 and d["words_written"] == d["words_read"] > 0, (key, d)
        assert d["bursts_read"] == d["bursts_written"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("offchip")
    res = train.run("tiny", "sim-node", images=2, batch=2, seed=0, out=out,
                    offchip_act_ram="all", offchip_stores="all", offchip_lgb="all", **SMALL)
    print({k: res[k] for k in ("bit_exact", "cycles", "cycles_per_image",
                               "plan_cycles_per_image", "wall_seconds")}, res["dram"])
    return res, out


@pytest.mark.timeout(600)
def test_single_node_all_offchip_bit_exact(single):
    """Every store the plan may keep off chip, off chip: the Act-RAMs, ReLU-mask and argmax
    stores, master copies and the conv layers' gradient accumulators (``--offchip-lgb``,
    ``OffchipGradBuffer``: fc4's LGB stays on chip, its PG drains in another order)."""
    from fpdeep_hw.memory.offchip_grad_buffer import OffchipGradBuffer
    res, out = single
    assert res["mismatches"] == [] and res["bit_exact"] is True
    assert res["updates"] == {"conv1": 1, "conv2": 1, "conv3": 1, "fc4": 1}
    top = res["_prep"]["top"]
    assert all(isinstance(nl.act_ram, OffchipActRAM) for nl in top.layers)
    assert [isinstance(nl.pg.lgb, OffchipGradBuffer) for nl in top.layers] == [
        True, True, True, False]
    assert _mem_members(top) == {"mem_conv1", "mem_conv2", "mem_conv3", "mem_fc4",
                                 "mem_conv1_mask", "mem_conv2_mask", "mem_conv2_arg",
                                 "mem_conv3_mask", "mem_conv1_lgb", "mem_conv2_lgb",
                                 "mem_conv3_lgb"}
    _check_rings(res, ["conv1", "conv2", "conv3", "fc4"], lgbs=["conv1", "conv2", "conv3"])
    # an LGB's ring: written by both images, read by the second and by the drain
    for nl in top.layers[:3]:
        d = res["dram"][f"{nl.key}/lgb"]
        assert d["words_written"] == d["words_read"] == 2 * nl.pg.lgb.ext_words
    assert res["dram"]["latency"] == 20
    # the prefetch hides the 20-cycle memory: the period stays at the plan's (1024)
    assert res["cycles_per_image"] <= 1.02 * res["plan_cycles_per_image"]
    z = np.load(out / "result.npz")
    for layer in ("conv1", "conv2", "conv3", "fc4"):
        assert np.array_equal(z[f"weights_after/{layer}"], z[f"golden_weights_after/{layer}"])
    # the words read back from the memory are compared: one changed word is a mismatch
    prep, rec, final = res["_prep"], res["_rec"], res["_final"]
    cyc, word = rec[("conv2", "act")][40]
    rec[("conv2", "act")][40] = (cyc, [word[0] ^ 4] + word[1:])
    assert any("conv2.act" in b for b in train.compare(prep, rec, final))
    rec[("conv2", "act")][40] = (cyc, word)
    assert train.compare(prep, rec, final) == []
    # so are the masks and argmaxes read back from the memory, every one of them
    for key in (("conv1", "mask_mem"), ("conv2", "mask_mem"), ("conv2", "arg_mem"),
                ("conv3", "mask_mem")):
        assert [w for _, w in rec[key]] == [w for _, w in rec[(key[0], key[1][:-4])]]
        assert len(rec[key]) == 2 * {"conv1": 64, "conv2": 64, "conv3": 16}[key[0]] // (
            4 if key == ("conv2", "arg_mem") else 1)
        cyc, word = rec[key][7]
        rec[key][7] = (cyc, [word[0] ^ 1] + word[1:])
        assert any(f"{key[0]}.{key[1]}" in b for b in train.compare(prep, rec, final))
        rec[key][7] = (cyc, word)
    assert train.compare(prep, rec, final) == []


@pytest.mark.long
@pytest.mark.timeout(600)
def test_two_nodes_offchip_on_each_node_bit_exact():
    """Only with ``-m long`` (CI time): the one-node test has every store off chip."""
    res = train.run("tiny", "sim-node", nodes=2, images=2, batch=2, seed=0,
                    offchip_act_ram="all", offchip_stores="all", dram_stall=0.1, **SMALL)
    print({k: res[k] for k in ("bit_exact", "cycles", "cycles_per_image", "wall_seconds")},
          res["dram"])
    assert res["mismatches"] == [] and res["bit_exact"] is True
    top = res["_prep"]["top"]
    assert [_mem_members(n) for n in top.nodes] == [
        {"mem_conv1", "mem_conv2_at0", "mem_conv1_mask", "mem_conv2_at0_mask",
         "mem_conv2_at0_arg"},
        {"mem_conv2_at1", "mem_conv3", "mem_fc4", "mem_conv2_at1_mask", "mem_conv2_at1_arg",
         "mem_conv3_mask"}]
    assert sorted((k, name) for k, name, _ in top.memory_ports) == sorted([
        (0, "mem_conv1"), (0, "mem_conv1_mask"), (0, "mem_conv2_at0"), (0, "mem_conv2_at0_arg"),
        (0, "mem_conv2_at0_mask"), (1, "mem_conv2_at1"), (1, "mem_conv2_at1_arg"),
        (1, "mem_conv2_at1_mask"), (1, "mem_conv3"), (1, "mem_conv3_mask"), (1, "mem_fc4"),
        (0, "mem_conv1_master"), (0, "mem_conv2_at0_master"), (1, "mem_conv2_at1_master"),
        (1, "mem_conv3_master"), (1, "mem_fc4_master")])
    _check_rings(res, ["conv1", "conv2@0", "conv2@1", "conv3", "fc4"])
    for lk in res["links"]:
        assert lk["payload_words_per_image"] == pytest.approx(
            lk["predicted_payload_words_per_image"])


@pytest.mark.long
@pytest.mark.timeout(1800)
def test_cycles_offchip_close_to_onchip():
    """20-cycle memory, default (16 x 4) and small (4 x 2) bursts and prefetch: cycles as on
    chip. A 400-cycle memory: the run's tail waits for the last words (more cycles), still
    bit-exact (the words really come from the memory model)."""
    on = train.run("tiny", "sim-node", images=4, batch=2, seed=0)
    off = train.run("tiny", "sim-node", images=4, batch=2, seed=0, offchip_act_ram="all")
    small = train.run("tiny", "sim-node", images=4, batch=2, seed=0, offchip_act_ram="all",
                      **SMALL)
    slow = train.run("tiny", "sim-node", images=4, batch=2, seed=0, offchip_act_ram="all",
                     **dict(SMALL, dram_latency=400))
    for r in (on, off, small, slow):
        print({k: r[k] for k in ("bit_exact", "cycles", "cycles_per_image",
                                 "cycles_per_image_mean")}, r["dram"])
        assert r["bit_exact"] is True
    for r in (off, small):
        assert r["cycles_per_image"] == pytest.approx(on["cycles_per_image"], rel=0.02)
        assert r["cycles"] == pytest.approx(on["cycles"], rel=0.02)
    assert slow["cycles"] > 1.1 * on["cycles"]
