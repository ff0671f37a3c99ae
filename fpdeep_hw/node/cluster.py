"""A chain of training nodes connected through serial links: the whole cluster of a plan.

One :class:`~fpdeep_hw.node.top.NodeTop` per node entry of the plan (whole layers, ICP / OCP
slices of split conv layers, weights lent by a neighbour), and per neighbour pair the paper's
two interconnection pairs: the *forward* direction ``k -> k+1`` (activations, partial sums,
weight sets lent by the next node) and the *backward* direction ``k+1 -> k`` (errors, partial
errors, gradients for the lender). Each direction is one
:class:`~fpdeep_hw.link.framer.LinkTx` -> :class:`sim.link_model.LinkModel` ->
:class:`~fpdeep_hw.link.framer.LinkRx` carrying one :class:`~fpdeep_hw.link.framer.LinkStream`
per node port of each stream the plan lists for that link, bound as a board's ``LinkedNode``
binds them (:func:`fpdeep_hw.link.streams.link_end`: stream id = position + 1; a lent layer's
``parameters`` are two streams, FP and EB weight sets). Every stream's items (pixels of ``C``
lanes, weight sets) are packed densely into 64-bit words (:class:`~fpdeep_hw.link.packer.Packer`
before the transmitter, :class:`~fpdeep_hw.link.packer.Unpacker` after the receiver), so the
payload per image is the plan's ``words_per_image * width / 64``. Credits travel in credit
frames in the opposite direction (``reverse=``), as on hardware, where a node pair has only the
two link directions; a credit frame leaves early when a stream has half its buffer freed
(``credit_urgent``).

::

    host images -> node 0 [conv1 conv2] -a_out-> Tx -> LinkModel -> Rx -a_in-> node 1 [conv3 fc4]
                   node 0                <-e_in- Rx <- LinkModel <- Tx <-e_out- node 1  <- labels

**End of run.** The host raises ``flush`` after the last pixel; node ``k > 0`` sees it only once
as many images have entered it as entered node 0 (``images_in``), and a lender once its
borrower's weight-stationary FP has finished that many: a simulation-level side band standing
for an end-of-run marker that would travel behind the data on the link (not built).

**External memory.** A node's off-chip Act-RAMs, ReLU-mask and argmax stores (``NodeTop``
members ``mem_*``, one burst port per store the plan keeps off chip) stay ports of that node:
the cluster does not bring them out nor drive them; the simulation serves each with its own
memory model
(:class:`sim.dram_model.DRAMModel` as a background testbench on the node's port,
:func:`sim.train.dram_models`). :attr:`Cluster.memory_ports` lists them.

**Parameter lending.** The weight sets of a borrowed segment may be kept by several nodes, near
or far, the borrower keeping a share itself (``NodeTop``, :mod:`fpdeep_hw.node.sets`): the nodes
in between pass the set and gradient streams on, so every link still joins neighbours.

Not built (``ValueError`` naming the stream or segment): streams between non-neighbours, lent
slices of split layers, ring and mesh topologies.

Golden model: :class:`sim.golden.train.GoldenTrainer` (``plan=``: the split arithmetic).
Test / harness: ``tests/sim/test_cluster.py``, ``tests/sim/test_cluster_split.py``,
``tests/sim/test_cluster_model.py``, ``python -m sim.train --nodes N``. Documentation:
``docs/hw-node.md``, "Cluster".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from fpdeep_map.network import Network
from fpdeep_map.plan import Plan
from sim.link_model import LinkModel

from ..link.framer import LinkRx, LinkTx
from ..link.streams import connect_receive, connect_send, link_end
from .top import NodeTop

__all__ = ["Cluster", "ClusterLink", "active_nodes"]


@dataclass
class ClusterLink:
    """One link direction of a :class:`Cluster`.

    Members
    -------
    src, dst : int
        Sending and receiving node.
    direction : str
        ``"forward"`` (``dst == src + 1``) or ``"backward"``.
    entry : fpdeep_map.plan.LinkPlan
        The plan's link entry (what the mapper predicted).
    streams : list of LinkStream
        One per plan stream, in the plan's order.
    tx, model, rx
        :class:`LinkTx`, :class:`LinkModel`, :class:`LinkRx`.
    ports : list of (Interface, Interface)
        Per stream: the sending node's port (which feeds the transmitter through a FIFO of two
        frames, :func:`fpdeep_hw.link.streams.tx_fifo_items`) and the receiving node's port.
    bits : list of int
        Per stream: payload bits of one item (a pixel of ``C`` lanes, a weight set).
    items : list of int
        Per stream: items per image (the image framing of the packer).
    plan_index : list of int
        Per stream: the plan stream (index into ``entry.streams``) it carries; a lent layer's
        ``parameters`` are two link streams (FP and EB weight sets), so that the credits keep
        them independent.
    """

    src: int
    dst: int
    direction: str
    entry: object
    streams: list
    tx: LinkTx
    model: LinkModel
    rx: LinkRx
    ports: list = field(default_factory=list)
    bits: list = field(default_factory=list)
    items: list = field(default_factory=list)
    plan_index: list = field(default_factory=list)

    @property
    def name(self):
        return f"link{self.src}to{self.dst}"

    @property
    def predicted_payload_words(self):
        """The plan's payload per image in 64-bit words (``sum words_per_image * width / 64``)."""
        return sum(s.words_per_image * s.width for s in self.entry.streams) / 64

    @property
    def predicted_wire_words(self):
        """The plan's words on the wire per image (payload plus frame overhead), 64 bits."""
        return self.entry.wire_bits_per_image / 64


def active_nodes(plan):
    """Nodes of the chain that take part: up to the last one that holds a layer. The mapper can
    leave nodes at the end of the chain empty (a small network on many boards: ``tiny`` on 4
    ``sim-node`` at batch 4 fills 3); no plan stream reaches them, so they are idle. An empty
    node *before* one that holds layers would have to relay the chain's streams, which is not
    built: ``ValueError``."""
    held = [k for k, np_ in enumerate(plan.node_plans) if np_.segments]
    if not held:
        raise ValueError("Cluster: no node of the plan holds a layer")
    n = held[-1] + 1
    gaps = [k for k in range(n) if not plan.node_plans[k].segments]
    if gaps:
        raise ValueError(f"Cluster: node {gaps[0]} holds no layer but node {n - 1} after it "
                         f"does (a relay node is not built)")
    return n


class Cluster(wiring.Component):
    """Every node of a plan, chained through link models (see the module docstring).

    Parameters
    ----------
    plan : fpdeep_map.plan.Plan
        A plan whose node entries hold contiguous runs of whole layers, in order.
    network : fpdeep_map.network.Network
    lr : float
    init_master : dict
        ``{compute layer: int array}`` initial master weights.
    batch : int, optional
        Mini-batch size (default ``plan.batch``).
    fifo_images, fifo_rows, fifo_whole_bits, fifo_fold : int
        Passed to every :class:`NodeTop`.
    link_latency : int
        Cycles of each :class:`LinkModel` (54: Aurora 64B/66B per hop).
    words_per_cycle : Fraction or float, optional
        Link bandwidth in 64-bit words per cycle; default from ``plan.link_gbps`` and
        ``plan.clock_mhz`` (capped at 1).
    max_payload : int
        ``max_payload`` of every framer (32: the mapper's frame model,
        ``fpdeep_map.costs.LINK_FRAME_PAYLOAD_WORDS``).
    depth : int
        Receive buffer of every stream in 64-bit words (the transmitter's initial credit).
    credit_interval : int
        Minimum cycles between two credit frames of a transmitter.
    flips : dict, optional
        ``{(src, dst): [(word index, bit), ...]}``: bit errors the link model of that direction
        puts on the wire (:class:`sim.link_model.LinkModel` ``flips``), for integrity tests.
    mem_burst, mem_prefetch : int
        Passed to every :class:`NodeTop` (its off-chip Act-RAMs).
    master_burst, master_prefetch, master_fold : int, optional
        Passed to every :class:`NodeTop` (its off-chip master copies).
    grad_fold, bpram_fold : int, optional
        Passed to every :class:`NodeTop` (its gradient buffers, its BPRAMs).
    ws_pg : bool or str, optional
        Passed to every :class:`NodeTop` (the PG order of its own layers).

    Members
    -------
    images : ``In(stream)``
        Host pixels into node 0 (as :attr:`NodeTop.images`).
    labels : ``In(stream)``
        Host labels into the last node.
    flush : ``In(1)``
        Level raised by the host after the last pixel (see the module docstring).
    updates : ``Out(32)``
        Node 0's first layer's weight updates.
    nodes : list of NodeTop
        The nodes that hold layers (:func:`active_nodes`).
    idle_nodes : list of int
        Nodes at the end of the chain that the plan leaves empty (not built).
    links : list of ClusterLink
    layers : list of NodeLayer
        Every node's layers in network order (plain attribute, as :attr:`NodeTop.layers`).
    loss : LossUnit
        The last node's loss unit.
    numerics, batch, lags, mac_units
        As :class:`NodeTop`'s (``mac_units`` summed over the nodes).
    memory_ports : list of (int, str, Interface)
        ``(node, member, port)`` of every node's off-chip store burst port (``mem_*``: Act-RAMs,
        mask, argmax and master-copy stores; not ports of the cluster, see the module
        docstring).
    """

    def __init__(self, plan, network, *, lr, init_master, batch=None, fifo_images=1,
                 fifo_rows=None, fifo_whole_bits=0, fifo_fold=1, link_latency=54,
                 words_per_cycle=None, max_payload=32, depth=1024,
                 credit_interval=8192, flips=None, mem_burst=16, mem_prefetch=4,
                 master_burst=None, master_prefetch=None, master_fold=1, grad_fold=1,
                 bpram_fold=1, ws_pg=False):
        if not isinstance(plan, Plan):
            raise TypeError(f"Cluster plan must be a Plan, not {plan!r}")
        if not isinstance(network, Network):
            raise TypeError(f"Cluster network must be a Network, not {network!r}")
        n = active_nodes(plan)
        if n < 2:
            raise ValueError(f"Cluster needs a plan of at least 2 nodes that hold layers, not {n} "
                             f"(use NodeTop)")
        if plan.topology != "chain":
            raise ValueError(f"Cluster: only chain plans are built, not {plan.topology!r}")
        #: nodes at the end of the chain the plan leaves without a layer: nothing reaches them
        #: (no plan link), they are not built
        self.idle_nodes = list(range(n, len(plan.node_plans)))
        if words_per_cycle is None:
            words_per_cycle = min(Fraction(plan.link_gbps * 1e9 / (64 * plan.clock_mhz * 1e6))
                                  .limit_denominator(4096), Fraction(1))
        self.nodes = [NodeTop(plan, k, network, lr=lr, init_master=init_master, batch=batch,
                              fifo_images=fifo_images, fifo_rows=fifo_rows,
                              fifo_whole_bits=fifo_whole_bits, fifo_fold=fifo_fold,
                              mem_burst=mem_burst, mem_prefetch=mem_prefetch,
                              master_burst=master_burst, master_prefetch=master_prefetch,
                              master_fold=master_fold, grad_fold=grad_fold,
                              bpram_fold=bpram_fold, ws_pg=ws_pg)
                      for k in range(n)]
        self._plan, self._network = plan, network
        for node in self.nodes:
            for nl in node.layers:
                if nl.lender is not None:
                    # monitors find the borrowed segment's updates and BGBs on its keepers:
                    # [(Lender, (lo, hi))] in address order
                    nl.parts = [(self.nodes[j].lenders[
                                    self.nodes[j].chain_names[(nl.name, nl.node)]], r)
                                for j, r in sorted(nl.lender.ranges.items())]
        self.words_per_cycle = Fraction(words_per_cycle).limit_denominator(4096)
        self.link_latency = link_latency
        entries = {(e.src, e.dst): e for e in plan.links}
        for key in entries:
            if abs(key[0] - key[1]) != 1:
                raise ValueError(f"Cluster: link {key[0]} -> {key[1]} is not between neighbours")
        plans = {}
        for k in range(n - 1):
            for a, b in ((k, k + 1), (k + 1, k)):
                e = entries.get((a, b))
                if e is None:
                    raise ValueError(f"Cluster: the plan has no link {a} -> {b}")
                # the same stream binding as a board's LinkedNode (fpdeep_hw/link/streams.py):
                # items packed densely into 64-bit words (Packer / Unpacker)
                try:
                    tx_end = link_end(self.nodes[a], a, b, depth=depth)
                    rx_end = link_end(self.nodes[b], a, b, depth=depth)
                except ValueError as err:
                    raise ValueError(f"Cluster: {err}") from None
                if (tx_end.items, tx_end.bits, tx_end.plan_index) != \
                        (rx_end.items, rx_end.bits, rx_end.plan_index):
                    raise ValueError(f"Cluster: nodes {a} and {b} disagree on the items of link "
                                     f"{a} -> {b}: {tx_end.items} x {tx_end.bits} bits sent, "
                                     f"{rx_end.items} x {rx_end.bits} bits expected")
                plans[(a, b)] = (e, tx_end.streams, list(zip(tx_end.ports, rx_end.ports)),
                                 tx_end.bits, tx_end.items, tx_end.plan_index)
        self.links = []
        for k in range(n - 1):
            for a, b in ((k, k + 1), (k + 1, k)):
                e, ls, ports, bits, items, index = plans[(a, b)]
                rev = plans[(b, a)][1]
                self.links.append(ClusterLink(
                    src=a, dst=b, direction="forward" if b > a else "backward", entry=e,
                    streams=ls,
                    tx=LinkTx(ls, max_payload=max_payload, reverse=rev,
                              credit_interval=credit_interval, credit_urgent=True),
                    model=LinkModel(width=64, latency=link_latency,
                                    words_per_cycle=self.words_per_cycle,
                                    flips=tuple((flips or {}).get((a, b), ()))),
                    rx=LinkRx(ls, max_payload=max_payload, reverse=rev),
                    ports=ports, bits=bits, items=items, plan_index=index))
        self._check_ports()
        first, last = self.nodes[0], self.nodes[-1]
        super().__init__({
            "images": In(first.images.signature.flip()),
            "labels": In(last.labels.signature.flip()),
            "flush": In(1),
            "updates": Out(32),
        })

    plan = property(lambda self: self._plan)
    network = property(lambda self: self._network)
    numerics = property(lambda self: self.nodes[0].numerics)
    batch = property(lambda self: self.nodes[0].batch)
    lags = property(lambda self: self.nodes[0].lags)
    loss = property(lambda self: self.nodes[-1].loss)

    @property
    def layers(self):
        """Every :class:`~fpdeep_hw.node.top.NodeLayer` of every node, in network order."""
        return [nl for node in self.nodes for nl in node.layers]

    @property
    def mac_units(self):
        """Multipliers of the CE arrays of all nodes."""
        return sum(node.mac_units for node in self.nodes)

    @property
    def memory_ports(self):
        """``[(node, member, port)]``: every node's off-chip store burst port (Act-RAMs, mask,
        argmax and master-copy stores, :meth:`~fpdeep_hw.node.top.NodeTop.memories`)."""
        return [(k, member, getattr(node, member)) for k, node in enumerate(self.nodes)
                for _, _, member, _ in node.memories()]

    def link(self, src, dst):
        """The :class:`ClusterLink` of direction ``src -> dst``."""
        return next(lk for lk in self.links if (lk.src, lk.dst) == (src, dst))

    def _check_ports(self):
        """Every neighbour port of every node carries a stream of the plan."""
        used = {(k, name) for k, node in enumerate(self.nodes) for name in node.link_ports}
        bound = set()
        for lk in self.links:
            for src, dst in lk.ports:
                for k in (lk.src, lk.dst):
                    for name in self.nodes[k].link_ports:
                        if getattr(self.nodes[k], name) is src or \
                                getattr(self.nodes[k], name) is dst:
                            bound.add((k, name))
        for k, name in sorted(used - bound):
            peer, path, layer = self.nodes[k].link_ports[name]
            raise ValueError(f"Cluster: node {k} port {name} ({path} of {layer!r} with the "
                             f"{peer} node) has no stream in the plan")

    def elaborate(self, platform):
        m = Module()
        for k, node in enumerate(self.nodes):
            m.submodules[f"node{k}"] = node
        first, last = self.nodes[0], self.nodes[-1]
        wiring.connect(m, wiring.flipped(self.images), first.images)
        wiring.connect(m, wiring.flipped(self.labels), last.labels)
        for k, node in enumerate(self.nodes):
            if k == 0:
                m.d.comb += node.flush.eq(self.flush)
            else:
                m.d.comb += node.flush.eq(self.flush & (node.images_in == first.images_in))
        m.d.comb += self.updates.eq(first.updates)
        # a lender stops the FP weight stream at the end of the run once its borrower's FP has
        # finished every image that entered the cluster (the end-of-run side band)
        for node in self.nodes:
            for n, lender in node.lenders.items():
                b = self.nodes[lender.borrower]
                if b is node:
                    continue                # the borrower's own share: NodeTop's flush
                done = getattr(b, f"ws_images_{b.chain_names[(lender.geometry.name, b.node)]}")
                m.d.comb += getattr(node, f"lend_flush_{n}").eq(
                    self.flush & (done == first.images_in))
        for lk in self.links:
            m.submodules[f"{lk.name}_tx"] = lk.tx
            m.submodules[f"{lk.name}_wire"] = lk.model
            m.submodules[f"{lk.name}_rx"] = lk.rx
            wiring.connect(m, lk.tx.o, lk.model.i)
            wiring.connect(m, lk.model.o, lk.rx.i)
            for j, ((src, dst), port_i, port_o, nbits, n_items) in enumerate(zip(
                    lk.ports, lk.tx.inputs, lk.rx.outputs, lk.bits, lk.items)):
                # a FIFO of two frames' worth of items before the packer: a saturated link
                # sends full frames (LinkTx cuts a frame at the first cycle its input runs dry)
                connect_send(m, f"{lk.name}_{j}", src, port_i, nbits, n_items,
                             lk.tx.max_payload)
                connect_receive(m, f"{lk.name}_{j}", port_o, dst, nbits, n_items)
        # credits: each node's receiver of one direction tells its transmitter of the other
        for lk in self.links:
            back = self.link(lk.dst, lk.src)
            # lk.rx sits in node lk.dst, next to back.tx (lk.dst -> lk.src)
            wiring.connect(m, lk.rx.credit_o, back.tx.credit_send)
            wiring.connect(m, lk.rx.credit_recv, back.tx.credit_i)
        return m
