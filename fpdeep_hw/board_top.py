"""The top level of one FPGA board: a training node, its clock, LEDs, chain links and host path.

:class:`BoardTop` wraps a :class:`~fpdeep_hw.node.top.NodeTop` for an Amaranth platform
(``boards.platforms``) or for simulation:

- **Node.** :class:`LinkedNode`: the node (:class:`ObservedNode`, the ``NodeTop`` with its loss
  unit's errors brought out) with the link-layer framers of its chain neighbours. Either as a
  submodule, or -- as ``python -m fpdeep_hw.build`` does, so that the node is converted to
  Verilog exactly once and handed out as its own file -- an ``Instance`` of the separately
  generated module (``node_module=``), connected port by port from ``LinkedNode``'s signature
  (Amaranth names a port ``prev_tx__valid`` for the member path ``("prev_tx", "valid")``, plus
  ``clk`` and ``rst``).
- **Clock.** The node runs in ``sync``. On a platform the top does not define ``sync``, so the
  platform derives it from its default clock (``platform.default_clk``; on Xilinx parts through
  a ``STARTUPE2``/``STARTUPE3``-gated global buffer, Amaranth's ``create_missing_domain``). The
  node therefore runs at the default clock's frequency (VC709 200 MHz, KCU105 125 MHz, U280
  100 MHz); an MMCM for another design clock is not generated.
- **LEDs** (where the platform has ``led`` resources): 0 heartbeat (``sync`` clock alive, about
  1.5 Hz at 200 MHz), 1 host data accepted (``images`` handshake on the first node, ``labels``
  on the others; stretched), 2 weight updates written (bit 0 of ``updates``), 3 every chain link
  up and no receive overflow (lit when the node has no neighbour).
- **Chain links.** Per neighbour the plan gives this node (previous node ``k - 1``, next node
  ``k + 1``) one serial link: in :class:`LinkedNode` (``sync``) a
  :class:`~fpdeep_hw.link.framer.LinkTx` carrying exactly the streams the plan lists for the
  outgoing direction and a :class:`~fpdeep_hw.link.framer.LinkRx` for the incoming one (stream
  ids and widths from :func:`fpdeep_hw.link.streams.link_end`, as in the simulated
  :class:`~fpdeep_hw.node.cluster.Cluster`); credits of each direction travel in credit frames
  of the other. On the board, per neighbour, a
  :class:`~fpdeep_hw.link.transceiver.SerialLinkPHY` black box (Aurora 64B/66B) on a chain
  lane of the platform (:func:`chain_lanes_for`: the previous neighbour on the first lane of
  ``platform.chain_lanes``, the next on the first free lane with another reference clock, else
  on a lane of the same quad sharing the first PHY's reference clock: the first PHY on a clock
  owns it, with the core that has the shared logic, and a sharer's core takes the owner's
  buffered reference clock, QPLL clocks and user clock, as VC709's SFP+ lanes 0 and 1 do on
  ``sfp_refclk`` 0) in its own clock domain (``link_prev`` / ``link_next``, the core's user
  clock; a sharer's is its owner's), and two ``AsyncFIFO`` of :data:`CDC_DEPTH` 64-bit words
  between that domain and ``sync``. The Aurora RX has no back-pressure: the receive FIFO is drained every
  ``sync`` cycle by ``LinkRx`` (always ready), which keeps up as long as the far node's ``sync``
  clock is not faster than this one's (same board type: equal up to the oscillators' ppm); a
  word arriving at a full FIFO sets a sticky overflow flag (LED 3 off).
- **Host.** Node 0 takes the images, the last node the labels, every node ``flush``. On
  hardware that path is PCIe DMA, outside this project: a documented black box
  ``Instance("fpdeep_host_dma", ...)`` (see :data:`HOST_DMA_PORTS`; the ports a node does not
  have are left out). With ``host="ports"`` (simulation or another wrapper) the same signals
  are this component's ports, and with ``links="ports"`` the 64-bit link word streams too
  (no PHY, no clock crossing).

- **External memory.** Every node member ``mem_*`` with the burst-port signature of
  :mod:`fpdeep_hw.memory.offchip_act_ram` (an off-chip Act-RAM's ``mem``) gets its own
  ``MemoryControllerBlackBox`` (``fpdeep_mem_ctrl``), or is a port with ``memory="ports"``.

Vendor specifics live only in the black boxes (Aurora in ``SerialLinkPHY``, the DMA engine here,
the memory controller in ``offchip_act_ram``). Documentation: ``docs/build.md``. Test:
``tests/hw/test_build.py``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from amaranth.hdl import ClockDomain, ClockSignal, Instance, Module, ResetSignal, Signal, Value
from amaranth.lib import io, stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.fifo import AsyncFIFO
from amaranth.lib.wiring import In, Out

from .link.framer import LinkRx, LinkTx
from .link.streams import (CREDIT_INTERVAL, DEPTH, MAX_PAYLOAD, connect_receive, connect_send,
                           link_end)

__all__ = ["BoardTop", "LinkedNode", "ObservedNode", "HOST_DMA_MODULE", "HOST_DMA_PORTS",
           "CDC_DEPTH", "ChainLane", "chain_lanes_for", "gt_quad", "node_instance_ports"]

#: Module name of the host DMA black box.
HOST_DMA_MODULE = "fpdeep_host_dma"

#: 64-bit words of each clock-crossing FIFO between a PHY's user clock and ``sync``.
CDC_DEPTH = 64

#: Ports of the host black box (AXI4-Stream style; widths from the node's signature). A node
#: has ``images_*`` only if it is the first, ``labels_*`` and ``loss_*`` only if it is the last.
HOST_DMA_PORTS = {
    "clk": "in: the node clock (sync); the DMA engine crosses into it",
    "rst": "in: the node reset (power-on, 15 cycles)",
    "images_tdata": "out: one pixel, C lanes of the activation format, lane 0 in the low bits",
    "images_tvalid": "out", "images_tready": "in",
    "labels_tdata": "out: the class of one image", "labels_tvalid": "out", "labels_tready": "in",
    "flush": "out: level; node 0: after the last image's last pixel was sent; node k > 0: "
             "once also images_in equals the images sent into node 0",
    "images_in": "in: images whose last pixel entered the node (for the flush of node k > 0)",
    "updates": "in: updates written (status for the host)",
    "loss_valid": "in: an error word of the loss unit this cycle (ObservedNode.loss_valid)",
    "loss_error": "in: its payload, classes lanes of the error format (training progress)",
}

def node_instance_ports(node):
    """``{port name: (direction, value)}`` of a component's Verilog ports, from its signature."""
    ports = {}
    for path, member, value in node.signature.flatten(node):
        name = "__".join(str(p) for p in path)
        ports[name] = ("i" if member.flow == wiring.Flow.In else "o", value)
    return ports


class ChainLane(NamedTuple):
    """The lane of one chain neighbour (:func:`chain_lanes_for`).

    ``lane`` and ``refclk`` are ``(resource name, number)`` pairs; ``owner`` is ``None`` when
    this neighbour's PHY owns the reference clock (its core has the shared logic), else the side
    (``"prev"``) whose PHY owns it and whose quad PLL this lane shares.
    """
    lane: tuple
    refclk: tuple
    owner: str | None = None


_GT_SITE = re.compile(r"_X(\d+)Y(\d+)$")


def gt_quad(platform, lane):
    """The GT quad ``(column, row)`` of ``lane`` from ``platform.gt_channel_sites`` (four
    channels a quad: ``GTHE2_CHANNEL_X1Y13`` -> ``(1, 3)``), or ``None`` if the site is unknown."""
    site = getattr(platform, "gt_channel_sites", {}).get(tuple(lane))
    match = _GT_SITE.search(site) if isinstance(site, str) else None
    return None if match is None else (int(match[1]), int(match[2]) // 4)


def chain_lanes_for(platform, sides):
    """``{side: ChainLane(lane, refclk, owner)}`` for the neighbours ``sides`` (``"prev"``,
    ``"next"``), in that order.

    Each side gets the first free lane of ``platform.chain_lanes`` whose reference clock no
    earlier side uses, and its PHY owns that clock (``owner`` ``None``): two neighbours use two
    quads / cages when the board has them (KCU105 ``sfp`` 0 and ``fmc_hpc_dp`` 0, U280 ``qsfp0``
    0 and ``qsfp1`` 0). Failing that, it gets the first free lane whose reference clock an
    earlier side owns and which sits in that owner's GT quad (:func:`gt_quad`; the QPLL clocks
    do not leave the quad, and a lane without a known site is never shared), and its PHY shares
    the owner's clock (``owner`` = that side): VC709 ``sfp`` 0 and ``sfp`` 1, both on
    ``sfp_refclk`` 0 of quad 113. Raises ``ValueError`` when no lane is left.
    """
    lanes = [((res, num), tuple(refclk)) for res, num, refclk in getattr(platform, "chain_lanes", ())]
    chosen, owners = {}, {}         # owners: refclk -> side whose PHY owns it
    for side in sides:
        taken = {c.lane for c in chosen.values()}
        free = [(lane, refclk) for lane, refclk in lanes if lane not in taken]
        pick = next((ChainLane(lane, refclk) for lane, refclk in free if refclk not in owners),
                    None)
        if pick is None:
            for lane, refclk in free:
                quad = gt_quad(platform, lane)
                if quad is not None and quad == gt_quad(platform, chosen[owners[refclk]].lane):
                    pick = ChainLane(lane, refclk, owners[refclk])
                    break
        if pick is None:
            have = ", ".join(f"{r}{n}" for (r, n), _ in lanes) or "none"
            raise ValueError(
                f"{type(platform).__name__}: no chain lane left for the {side} neighbour: a node "
                f"with {len(sides)} neighbours needs {len(sides)} lanes, each with a reference "
                f"clock of its own or in the GT quad of the lane owning its clock, but the "
                f"platform has {have}")
        chosen[side] = pick
        if pick.owner is None:
            owners[pick.refclk] = side
    return chosen


class ObservedNode(wiring.Component):
    """A node with its loss unit's error output brought out: the module the build converts.

    ``NodeTop``'s ports carry no data out (ready bits and counters only), so synthesis would
    remove every data path as unobservable, and a port-level comparison would check control
    only. This wrapper forwards every ``NodeTop`` port unchanged and adds, on the node that
    holds the loss, ``loss_valid`` (an error word was taken by BP this cycle) and ``loss_error``
    (its payload: ``classes`` lanes of the error format, lane 0 in the low bits). The errors
    depend on every FP layer and, from the second mini-batch on, on every update, so all of the
    node is observable; on hardware the host reads them as training progress.

    Members
    -------
    (every member of ``NodeTop``)
    loss_valid : ``Out(1)``
    loss_error : ``Out(classes * error.width)``
    """

    def __init__(self, node_top):
        self.node_top = node_top
        members = dict(node_top.signature.members.items())
        if getattr(node_top, "loss", None) is not None:
            members["loss_valid"] = Out(1)
            members["loss_error"] = Out(len(node_top.loss.o.payload.as_value()))
        super().__init__(members)

    plan = property(lambda self: self.node_top.plan)
    node = property(lambda self: self.node_top.node)

    def elaborate(self, platform):
        m = Module()
        node = self.node_top
        m.submodules.node = node
        outer = {path: value for path, _, value in self.signature.flatten(self)}
        for path, member, value in node.signature.flatten(node):
            if member.flow == wiring.Flow.In:
                m.d.comb += value.eq(outer[path])
            else:
                m.d.comb += outer[path].eq(value)
        if "loss_valid" in self.signature.members:
            o = node.loss.o
            m.d.comb += [self.loss_valid.eq(o.valid & o.ready),
                         self.loss_error.eq(o.payload.as_value())]
        return m


class LinkedNode(wiring.Component):
    """A node with the framers of its chain links: the module the build converts to Verilog.

    Forwards every :class:`ObservedNode` member except the neighbour ports
    (``NodeTop.link_ports``: ``a_in``, ``a_out``, ``e_in``, ``e_out``, ...), which are connected
    to the framers: per neighbour (``side`` ``"prev"`` for node ``k - 1``, ``"next"`` for node
    ``k + 1``) a ``LinkTx`` for the plan's link ``k -> neighbour`` and a ``LinkRx`` for
    ``neighbour -> k``, each carrying one ``LinkStream`` per port of a plan stream
    (:func:`fpdeep_hw.link.streams.link_end`: stream id = position + 1, items packed densely into
    64-bit words by a ``Packer`` / ``Unpacker`` per stream, as in
    :class:`~fpdeep_hw.node.cluster.Cluster`); credits for the incoming direction leave in
    credit frames of the outgoing one (``LinkRx.credit_o`` -> ``LinkTx.credit_send``) and
    credits for the outgoing direction come back in credit frames of the incoming one
    (``LinkRx.credit_recv`` -> ``LinkTx.credit_i``); a credit frame goes out early when a stream
    has half its buffer freed (``credit_urgent``, as in ``Cluster``). A FIFO of two frames'
    worth of items (:func:`~fpdeep_hw.link.streams.tx_fifo_items`) sits in front of every
    packer. A node without neighbours is its ``ObservedNode`` with the same ports.

    Parameters
    ----------
    node_top : NodeTop
    depth, max_payload, credit_interval : int
        Framer parameters (defaults: those of the simulated cluster, :mod:`fpdeep_hw.link.streams`).

    Members
    -------
    (every member of ``ObservedNode`` but the link ports)
    prev_tx, next_tx : ``Out(stream.Signature(64))``
        Frame words to the neighbour's PHY (only for a neighbour the node has).
    prev_rx, next_rx : ``In(stream.Signature(64))``
        Frame words from the PHY (``ready`` is constant 1: the Aurora RX has no ready).
    prev_crc_errors, prev_seq_errors, prev_frames, next_... : ``Out(32)``
        The receiver's counters (``LinkRx``).
    sides : tuple of str
        The neighbours the node exchanges data with (the peers of ``NodeTop.link_ports``).
    """

    def __init__(self, node_top, *, depth=DEPTH, max_payload=MAX_PAYLOAD,
                 credit_interval=CREDIT_INTERVAL):
        k = node_top.node
        self.node_top = node_top
        self.observed = ObservedNode(node_top)
        peers = {key[0] for key in node_top.link_ports.values()}
        self.sides = tuple(s for s in ("prev", "next") if s in peers)
        self.ends = {}
        for side in self.sides:
            j = k - 1 if side == "prev" else k + 1
            out, inc = link_end(node_top, k, j, depth=depth), link_end(node_top, j, k, depth=depth)
            tx = LinkTx(out.streams, max_payload=max_payload, reverse=inc.streams,
                        credit_interval=credit_interval, credit_urgent=True)
            rx = LinkRx(inc.streams, max_payload=max_payload, reverse=out.streams)
            self.ends[side] = (out, inc, tx, rx)
        self.link_names = set(node_top.link_ports)
        bound = set()
        for out, inc, _, _ in self.ends.values():
            bound |= set(out.names) | set(inc.names)
        if bound != self.link_names:
            raise ValueError(f"LinkedNode: node {k} has neighbour ports the plan's links do not "
                             f"carry: {', '.join(sorted(self.link_names - bound))}")
        members = {name: member for name, member in self.observed.signature.members.items()
                   if name not in self.link_names}
        for side in self.sides:
            members[f"{side}_tx"] = Out(stream.Signature(64))
            members[f"{side}_rx"] = In(stream.Signature(64))
            for c in ("crc_errors", "seq_errors", "frames"):
                members[f"{side}_{c}"] = Out(32)
        self._max_payload = max_payload
        super().__init__(members)

    plan = property(lambda self: self.node_top.plan)
    node = property(lambda self: self.node_top.node)

    def elaborate(self, platform):
        m = Module()
        obs = self.observed
        m.submodules.node = obs
        outer = {path: value for path, _, value in self.signature.flatten(self)}
        for path, member, value in obs.signature.flatten(obs):
            if path[0] in self.link_names:
                continue
            if member.flow == wiring.Flow.In:
                m.d.comb += value.eq(outer[path])
            else:
                m.d.comb += outer[path].eq(value)
        for side in self.sides:
            out, inc, tx, rx = self.ends[side]
            m.submodules[f"{side}_tx"] = tx
            m.submodules[f"{side}_rx"] = rx
            wiring.connect(m, tx.o, wiring.flipped(getattr(self, f"{side}_tx")))
            wiring.connect(m, wiring.flipped(getattr(self, f"{side}_rx")), rx.i)
            for c in ("crc_errors", "seq_errors", "frames"):
                m.d.comb += getattr(self, f"{side}_{c}").eq(getattr(rx, c))
            for j, (name, nbits, n_items, port_i) in enumerate(zip(out.names, out.bits,
                                                                   out.items, tx.inputs)):
                connect_send(m, f"{side}_{j}", getattr(obs, name), port_i, nbits, n_items,
                             self._max_payload)
            for j, (name, nbits, n_items, port_o) in enumerate(zip(inc.names, inc.bits,
                                                                   inc.items, rx.outputs)):
                connect_receive(m, f"{side}_{j}", port_o, getattr(obs, name), nbits, n_items)
            wiring.connect(m, rx.credit_o, tx.credit_send)
            wiring.connect(m, rx.credit_recv, tx.credit_i)
        return m


class BoardTop(wiring.Component):
    """One board of the chain: a node, its clock, LEDs, chain link PHYs and host interface.

    Parameters
    ----------
    node_top : NodeTop
        The node (its ``plan`` and ``node`` say which neighbours and host streams it has). It is
        wrapped in a :class:`LinkedNode` (member ``linked``), whose ports the Verilog has.
    host : {"dma", "ports"}
        ``"dma"``: the host path is the ``fpdeep_host_dma`` black box (hardware); ``"ports"``:
        the node's host ports (``images`` on the first node, ``labels`` on the last, ``flush``,
        ``updates``, ``images_in``) and the LED bits are ports of this component.
    links : {"phy", "ports"}
        ``"phy"``: a ``SerialLinkPHY`` per neighbour with clock crossing (needs a platform);
        ``"ports"``: the node's 64-bit link word streams (``prev_tx``, ``prev_rx``, ...) are
        ports of this component, in ``sync``.
    memory : {"controller", "ports"}
        The node's external-memory burst ports (members ``mem_*`` with the signature of
        :func:`fpdeep_hw.memory.offchip_act_ram.memory_port_signature`, e.g. the ``mem`` port of
        an ``OffchipActRAM`` brought out by the node): ``"controller"``: one
        :class:`~fpdeep_hw.memory.offchip_act_ram.MemoryControllerBlackBox`
        (``fpdeep_mem_ctrl``) each, needs a platform; ``"ports"``: ports of this component
        (simulation with :class:`sim.dram_model.DRAMModel`).
    node_module : str, optional
        Instantiate the node as ``Instance(node_module, ...)`` of the separately converted
        Verilog of ``LinkedNode(node_top)`` instead of elaborating it here.
    core : str
        Component name of the Aurora core of a PHY that owns its reference clock; a PHY sharing
        another's instantiates ``core + "_shared"`` (see :mod:`fpdeep_hw.link.transceiver`).

    Members
    -------
    images, labels, flush, updates, images_in
        Only with ``host="ports"``: the node's host ports, passed through.
    leds : ``Out(4)``
        Only with ``host="ports"``: the LED status bits (see the module docstring).
    prev_tx, prev_rx, next_tx, next_rx
        Only with ``links="ports"``: the link word streams of :class:`LinkedNode`.
    mem_*
        Only with ``memory="ports"``: the node's external-memory burst ports.
    memory_ports : list of str
        Names of the node's external-memory burst ports.
    has_prev, has_next : bool
        Whether the plan gives this node a previous / next neighbour.
    """

    def __init__(self, node_top, *, host="dma", links="phy", memory="controller",
                 node_module=None, core="aurora_64b66b_0"):
        if host not in ("dma", "ports"):
            raise ValueError(f"BoardTop host must be 'dma' or 'ports', not {host!r}")
        if links not in ("phy", "ports"):
            raise ValueError(f"BoardTop links must be 'phy' or 'ports', not {links!r}")
        if memory not in ("controller", "ports"):
            raise ValueError(f"BoardTop memory must be 'controller' or 'ports', not {memory!r}")
        if node_module is not None and not (isinstance(node_module, str) and node_module.isidentifier()):
            raise ValueError(f"BoardTop node_module must be a Verilog identifier, not {node_module!r}")
        self.node_top = node_top
        self.linked = LinkedNode(node_top)
        if node_module is not None:
            # only its ports are used (the node itself is an Instance of its own Verilog): not
            # an elaboratable left unused
            self.linked._MustUse__silence = True
            self.linked.observed._MustUse__silence = True
            for _, _, tx, rx in self.linked.ends.values():      # its framers too
                tx._MustUse__silence = rx._MustUse__silence = True
        self.has_prev = "prev" in self.linked.sides
        self.has_next = "next" in self.linked.sides
        self.host = host
        self.links = links
        self.memory = memory
        self.node_module = node_module
        self.core = core
        self.phys = {}
        lm = self.linked.signature.members
        members = {}
        if host == "ports":
            for name in ("images", "labels", "flush"):
                if name in lm:
                    members[name] = lm[name]
            members["updates"] = Out(32)
            members["images_in"] = Out(32)
            members["leds"] = Out(4)
        if links == "ports":
            for side in self.linked.sides:
                members[f"{side}_tx"] = lm[f"{side}_tx"]
                members[f"{side}_rx"] = lm[f"{side}_rx"]
        #: the node's external-memory burst ports (members ``mem_*``, e.g. of an OffchipActRAM)
        self.memory_ports = sorted(name for name, mem in lm.items()
                                   if name.startswith("mem_") and mem.is_signature and
                                   set(mem.signature.members) == {"aw", "w", "b", "ar", "r"})
        if memory == "ports":
            for name in self.memory_ports:
                members[name] = lm[name]
        super().__init__(members)

    def elaborate(self, platform):
        node = self.linked
        if self.links == "phy" and node.sides and platform is None:
            raise ValueError("BoardTop: a node with chain neighbours needs a platform for "
                             "links='phy' (use links='ports' in simulation)")
        m = Module()

        # ---- power-on reset: the platforms' sync domain has no reset, so the node and the host
        # black box get one held for 15 cycles after configuration (registers start at init)
        por = Signal(4, init=15)
        with m.If(por != 0):
            m.d.sync += por.eq(por - 1)
        node_rst = Signal()
        m.d.comb += node_rst.eq(por != 0)

        # ---- the node (same port names as its Verilog) -----------------------------------
        if self.node_module is None:
            m.submodules.node = node
            ports = {name: v for name, (_, v) in node_instance_ports(node).items()}
        else:
            ports, kwargs = {}, {"i_clk": ClockSignal("sync"), "i_rst": node_rst}
            for name, (d, value) in node_instance_ports(node).items():
                sig = Signal(len(Value.cast(value)), name=f"node_{name}")
                ports[name] = sig
                kwargs[f"{d}_{name}"] = sig
            m.submodules.node = Instance(self.node_module, **kwargs)

        # ---- host path ---------------------------------------------------------------------
        first, last = "images__valid" in ports, "labels__valid" in ports
        if self.host == "ports":
            for name, (d, _) in node_instance_ports(node).items():
                head = name.split("__")[0]
                if head in ("images", "labels", "flush", "updates", "images_in"):
                    outer = getattr(self, head)
                    if "__" in name:
                        outer = getattr(outer, name.split("__")[1])
                    if d == "i":
                        m.d.comb += ports[name].eq(outer)
                    else:
                        m.d.comb += outer.eq(ports[name])
        else:
            kw = {"i_clk": ClockSignal("sync"), "i_rst": node_rst, "o_flush": ports["flush"],
                  "i_updates": ports["updates"], "i_images_in": ports["images_in"]}
            if first:
                kw.update(o_images_tdata=ports["images__payload"],
                          o_images_tvalid=ports["images__valid"],
                          i_images_tready=ports["images__ready"])
            if last:
                kw.update(o_labels_tdata=ports["labels__payload"],
                          o_labels_tvalid=ports["labels__valid"],
                          i_labels_tready=ports["labels__ready"])
            if "loss_valid" in ports:
                kw.update(i_loss_valid=ports["loss_valid"], i_loss_error=ports["loss_error"])
            m.submodules.host = Instance(HOST_DMA_MODULE, **kw)

        # ---- chain links ----------------------------------------------------------------------
        links_up = Signal(init=1)
        if self.links == "ports":
            for side in node.sides:
                for d in ("tx", "rx"):
                    for f in ("valid", "payload", "ready"):
                        outer = getattr(getattr(self, f"{side}_{d}"), f)
                        inner = ports[f"{side}_{d}__{f}"]
                        if (d == "tx") == (f != "ready"):
                            m.d.comb += outer.eq(inner)
                        else:
                            m.d.comb += inner.eq(outer)
        elif node.sides:
            from .link.transceiver import SerialLinkPHY
            lanes = chain_lanes_for(platform, node.sides)
            ok = []
            for side in node.sides:
                lane, refclk, owner = lanes[side]
                dom = f"link_{side}"
                if owner is None:
                    phy = SerialLinkPHY(lane=lane, refclk=refclk, core=self.core, domain=dom,
                                        init_domain="sync")
                else:
                    phy = SerialLinkPHY(lane=lane, owner=self.phys[owner], domain=dom,
                                        init_domain="sync")
                self.phys[side] = phy
                m.submodules[f"phy_{side}"] = phy
                m.domains += ClockDomain(dom)
                m.d.comb += [ClockSignal(dom).eq(phy.user_clk), ResetSignal(dom).eq(phy.user_rst)]
                txq = AsyncFIFO(width=64, depth=CDC_DEPTH, w_domain="sync", r_domain=dom)
                rxq = AsyncFIFO(width=64, depth=CDC_DEPTH, w_domain=dom, r_domain="sync")
                m.submodules[f"{side}_txq"] = txq
                m.submodules[f"{side}_rxq"] = rxq
                m.d.comb += [txq.w_stream.valid.eq(ports[f"{side}_tx__valid"]),
                             txq.w_stream.payload.eq(ports[f"{side}_tx__payload"]),
                             ports[f"{side}_tx__ready"].eq(txq.w_stream.ready),
                             ports[f"{side}_rx__valid"].eq(rxq.r_stream.valid),
                             ports[f"{side}_rx__payload"].eq(rxq.r_stream.payload),
                             rxq.r_stream.ready.eq(ports[f"{side}_rx__ready"])]
                wiring.connect(m, txq.r_stream, phy.tx)
                wiring.connect(m, phy.rx, rxq.w_stream)
                # the Aurora RX has no ready: a word at a full FIFO is lost (sticky flag)
                overflow = Signal(name=f"{side}_overflow")
                with m.If(phy.rx.valid & ~rxq.w_stream.ready):
                    m.d[dom] += overflow.eq(1)
                good = Signal(name=f"{side}_good")
                m.submodules[f"{side}_good_sync"] = FFSynchronizer(
                    phy.channel_up & ~overflow, good, o_domain="sync")
                ok.append(good)
            m.d.comb += links_up.eq(ok[0] if len(ok) == 1 else ok[0] & ok[1])

        # ---- external memory: one controller black box per burst port ------------------------
        from .memory.offchip_act_ram import MemoryControllerBlackBox
        for name in self.memory_ports:
            sig = node.signature.members[name].signature
            if self.memory == "ports":
                outer_port = getattr(self, name)
            else:
                width = len(ports[f"{name}__w__payload"])
                addr = len(ports[f"{name}__aw__payload"])
                ctrl = MemoryControllerBlackBox(width, addr)
                m.submodules[f"ctrl_{name}"] = ctrl
                outer_port = ctrl.port
            for f in ("aw", "w", "b", "ar", "r"):
                to_mem = sig.members[f].flow == wiring.Flow.Out
                s = getattr(outer_port, f)
                for g in ("valid", "payload", "ready"):
                    inner_sig = ports[f"{name}__{f}__{g}"]
                    node_drives = to_mem == (g != "ready")
                    if node_drives:
                        m.d.comb += getattr(s, g).eq(inner_sig)
                    else:
                        m.d.comb += inner_sig.eq(getattr(s, g))

        # ---- status LEDs --------------------------------------------------------------------
        heartbeat = Signal(27)
        seen = Signal(24)
        m.d.sync += heartbeat.eq(heartbeat + 1)
        host_in = "images" if first else "labels" if last else None
        if host_in is not None:
            with m.If(ports[f"{host_in}__valid"] & ports[f"{host_in}__ready"]):
                m.d.sync += seen.eq(~0)
            with m.Elif(seen != 0):
                m.d.sync += seen.eq(seen - 1)
        status = [heartbeat[-1], seen != 0, ports["updates"][0], links_up]
        if self.host == "ports":
            for i, s in enumerate(status):
                m.d.comb += self.leds[i].eq(s)
        elif platform is not None:
            for i, s in enumerate(status):
                try:
                    led = platform.request("led", i, dir="-")
                except Exception:       # ResourceError: the board has fewer (or no) LEDs
                    break
                buf = io.Buffer("o", led)
                m.submodules[f"led_buf{i}"] = buf
                m.d.comb += buf.o.eq(s)
        return m
