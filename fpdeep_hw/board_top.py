"""The top level of one FPGA board: a training node, its clock, LEDs, chain links and host path.

:class:`BoardTop` wraps a :class:`~fpdeep_hw.node.top.NodeTop` for an Amaranth platform
(``boards.platforms``) or for simulation:

- **Node.** Either the ``NodeTop`` itself as a submodule, or -- as ``python -m fpdeep_hw.build``
  does, so that the node is converted to Verilog exactly once and handed out as its own file --
  an ``Instance`` of the separately generated node module (``node_module=``), connected port by
  port from ``NodeTop``'s signature (Amaranth names a port ``images__valid`` for the member path
  ``("images", "valid")``, plus ``clk`` and ``rst``).
- **Clock.** The node runs in ``sync``. On a platform the top does not define ``sync``, so the
  platform derives it from its default clock (``platform.default_clk``; on Xilinx parts through
  a ``STARTUPE2``/``STARTUPE3``-gated global buffer, Amaranth's ``create_missing_domain``). The
  node therefore runs at the default clock's frequency (VC709 200 MHz, KCU105 125 MHz, U280
  100 MHz); an MMCM for another design clock is not generated.
- **LEDs** (where the platform has ``led`` resources): 0 heartbeat (``sync`` clock alive, about
  1.5 Hz at 200 MHz), 1 host data accepted (``images`` handshake, stretched), 2 weight updates
  written (bit 0 of ``updates``), 3 every chain link up (``channel_up`` of all PHYs; lit when
  the node has no neighbour).
- **Chain links.** Not built yet. The design: one
  :class:`~fpdeep_hw.link.transceiver.SerialLinkPHY` per neighbour the plan gives this node
  (previous node on ``platform.chain_lanes[0]``, next node on ``platform.chain_lanes[1]``), its
  streams in the Aurora user clock domain, an async FIFO into ``sync`` and the framer
  (``fpdeep_hw/link/framer.py``) between the PHY and the node's link streams (``NodeTop``'s
  ``a_in``/``a_out``/``e_in``/``e_out``). Until that is written a node with a neighbour is
  refused (``ValueError``) rather than built with unconnected lanes; LED 3 is lit.
- **Host.** Node 0 takes the images and the last node the labels (and ``flush``) from the host.
  On hardware that path is PCIe DMA, outside this project: a documented black box
  ``Instance("fpdeep_host_dma", ...)`` (see :data:`HOST_DMA_PORTS`). With ``host="ports"`` (for
  simulation or another wrapper) the same signals are this component's ports.

Vendor specifics live only in the two black boxes (Aurora in ``SerialLinkPHY``, the DMA engine
here). Documentation: ``docs/build.md``. Test: ``tests/hw/test_build.py``.
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Instance, Module, Signal
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["BoardTop", "ObservedNode", "HOST_DMA_MODULE", "HOST_DMA_PORTS", "node_instance_ports"]

#: Module name of the host DMA black box.
HOST_DMA_MODULE = "fpdeep_host_dma"

#: Ports of the host black box (AXI4-Stream style; widths from the node's signature).
HOST_DMA_PORTS = {
    "clk": "in: the node clock (sync); the DMA engine crosses into it",
    "rst": "in: the node reset (power-on, 15 cycles)",
    "images_tdata": "out: one pixel, C lanes of the activation format, lane 0 in the low bits",
    "images_tvalid": "out", "images_tready": "in",
    "labels_tdata": "out: the class of one image", "labels_tvalid": "out", "labels_tready": "in",
    "flush": "out: level, after the last image's last pixel was sent",
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


class BoardTop(wiring.Component):
    """One board of the chain: a node, its clock, LEDs, chain link PHYs and host interface.

    Parameters
    ----------
    node_top : NodeTop
        The node (its ``plan`` and ``node`` say which neighbours and host streams it has). It is
        wrapped in an :class:`ObservedNode` (member ``observed``), whose ports the Verilog has.
    host : {"dma", "ports"}
        ``"dma"``: the host path is the ``fpdeep_host_dma`` black box (hardware); ``"ports"``:
        ``images``, ``labels``, ``flush`` and ``updates`` are ports of this component.
    node_module : str, optional
        Instantiate the node as ``Instance(node_module, ...)`` of the separately converted
        Verilog of ``ObservedNode(node_top)`` instead of elaborating it here.
    core : str
        Component name of the Aurora core the PHYs instantiate.

    Members
    -------
    images, labels, flush, updates
        Only with ``host="ports"``: the node's host ports, passed through.
    leds : ``Out(4)``
        Only with ``host="ports"``: the LED status bits (see the module docstring).
    has_prev, has_next : bool
        Whether the plan gives this node a previous / next neighbour.
    """

    def __init__(self, node_top, *, host="dma", node_module=None, core="aurora_64b66b_0"):
        if host not in ("dma", "ports"):
            raise ValueError(f"BoardTop host must be 'dma' or 'ports', not {host!r}")
        if node_module is not None and not (isinstance(node_module, str) and node_module.isidentifier()):
            raise ValueError(f"BoardTop node_module must be a Verilog identifier, not {node_module!r}")
        plan, k = node_top.plan, node_top.node
        self.has_prev = k > 0
        self.has_next = k < len(plan.node_plans) - 1
        if self.has_prev or self.has_next:
            raise ValueError(f"BoardTop: node {k} of {len(plan.node_plans)} has chain neighbours, "
                             f"but the board's chain links (SerialLinkPHY, clock crossing, "
                             f"framer) are not built yet")
        self.node_top = node_top
        self.observed = ObservedNode(node_top)
        self.host = host
        self.node_module = node_module
        self.core = core
        members = {}
        if host == "ports":
            members = {
                "images": node_top.signature.members["images"],
                "labels": node_top.signature.members["labels"],
                "flush": In(1),
                "updates": Out(32),
                "leds": Out(4),
            }
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        node = self.observed

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
                sig = Signal(len(value), name=f"node_{name}")
                ports[name] = sig
                kwargs[f"{d}_{name}"] = sig
            m.submodules.node = Instance(self.node_module, **kwargs)

        # ---- host path ---------------------------------------------------------------------
        if self.host == "ports":
            m.d.comb += [
                ports["images__valid"].eq(self.images.valid),
                ports["images__payload"].eq(self.images.payload),
                self.images.ready.eq(ports["images__ready"]),
                ports["labels__valid"].eq(self.labels.valid),
                ports["labels__payload"].eq(self.labels.payload),
                self.labels.ready.eq(ports["labels__ready"]),
                ports["flush"].eq(self.flush),
                self.updates.eq(ports["updates"]),
            ]
        else:
            m.submodules.host = Instance(
                HOST_DMA_MODULE,
                i_clk=ClockSignal("sync"), i_rst=node_rst,
                o_images_tdata=ports["images__payload"], o_images_tvalid=ports["images__valid"],
                i_images_tready=ports["images__ready"],
                o_labels_tdata=ports["labels__payload"], o_labels_tvalid=ports["labels__valid"],
                i_labels_tready=ports["labels__ready"],
                o_flush=ports["flush"], i_updates=ports["updates"],
                i_loss_valid=ports["loss_valid"], i_loss_error=ports["loss_error"])

        # ---- status LEDs --------------------------------------------------------------------
        heartbeat = Signal(27)
        seen = Signal(24)
        m.d.sync += heartbeat.eq(heartbeat + 1)
        with m.If(ports["images__valid"] & ports["images__ready"]):
            m.d.sync += seen.eq(~0)
        with m.Elif(seen != 0):
            m.d.sync += seen.eq(seen - 1)
        links_up = 1                # no chain links are built yet (see the module docstring)
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
