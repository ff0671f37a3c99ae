"""The link streams of a plan at one node: which node port carries each plan stream, and how.

Shared by the simulated cluster (:class:`fpdeep_hw.node.cluster.Cluster`, both ends of a link
in one design) and the board top (:class:`fpdeep_hw.board_top.LinkedNode`, one end per board),
so that both build the same framers from a plan:

- per stream the plan lists for a link direction (``plan.links[*].streams``, in order), the
  node ports whose :attr:`NodeTop.link_ports` entry is ``(peer, path, layer)`` of that stream
  (sending ports ``Out`` on the source node, receiving ports ``In`` on the destination), in
  the order of their :attr:`NodeTop.link_tags` (lending chains: borrower, then FP / EB), then
  of their names -- one port, or two for a lent layer's ``parameters`` (FP and EB weight sets),
  two per lending chain where several chains of one layer share the link;
- one :class:`~fpdeep_hw.link.framer.LinkStream` per such port, **stream id = its position
  on the link + 1**, path from the plan, 64-bit words (``width=64, words=1``): the port's items
  (``bits`` each, ``NodeTop.link_items`` per image) are packed densely into link words by a
  :class:`~fpdeep_hw.link.packer.Packer` and cut out again by an
  :class:`~fpdeep_hw.link.packer.Unpacker`;
- ``depth`` words of receive buffer per stream (the transmitter's initial credit); a FIFO of
  two frames' worth of items (:func:`tx_fifo_items`) in front of each packer.

A plan stream without a port, or a neighbour port without a plan stream, raises ``ValueError``.

Test: ``tests/hw/test_build.py`` (board top). Documentation: ``docs/build.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from amaranth.hdl import Value
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered

from .framer import LinkStream
from .packer import Packer, Unpacker

__all__ = ["DEPTH", "MAX_PAYLOAD", "CREDIT_INTERVAL", "LinkEnd", "plan_link", "link_end",
           "tx_fifo_items", "connect_send", "connect_receive"]

#: Receive buffer of every stream in 64-bit words (the transmitter's initial credit).
DEPTH = 1024
#: Maximum payload words per frame (the mapper's frame model,
#: ``fpdeep_map.costs.LINK_FRAME_PAYLOAD_WORDS``).
MAX_PAYLOAD = 32
#: Minimum cycles between two credit frames of a transmitter (unless one is urgent:
#: ``LinkTx(credit_urgent=True)``, half a stream's buffer freed).
CREDIT_INTERVAL = 8192


def plan_link(plan, src, dst):
    """The plan's link entry ``src -> dst`` (``ValueError`` if the plan has none)."""
    for e in plan.links:
        if (e.src, e.dst) == (src, dst):
            return e
    raise ValueError(f"the plan has no link {src} -> {dst}")


@dataclass
class LinkEnd:
    """One node's end of one link direction.

    Members
    -------
    src, dst : int
        Sending and receiving node of the direction.
    entry : fpdeep_map.plan.LinkPlan
        The plan's link entry.
    streams : list of LinkStream
        One per port, in link order (``sid`` = position + 1).
    names : list of str
        Per stream: the node's member name (sending port on ``src``, receiving on ``dst``).
    ports : list
        Per stream: that port.
    bits : list of int
        Per stream: payload bits of one item.
    items : list of int
        Per stream: items per image (``NodeTop.link_items``), the packer's framing.
    plan_index : list of int
        Per stream: the plan stream (index into ``entry.streams``) it carries.
    """

    src: int
    dst: int
    entry: object
    streams: list = field(default_factory=list)
    names: list = field(default_factory=list)
    ports: list = field(default_factory=list)
    bits: list = field(default_factory=list)
    items: list = field(default_factory=list)
    plan_index: list = field(default_factory=list)


def link_end(node, src, dst, *, depth=DEPTH):
    """:class:`LinkEnd` of ``node`` (a ``NodeTop`` of plan node ``src`` or ``dst``) on the plan's
    link ``src -> dst``."""
    k = node.node
    if k not in (src, dst):
        raise ValueError(f"node {k} does not end link {src} -> {dst}")
    e = plan_link(node.plan, src, dst)
    other = dst if k == src else src
    peer = "next" if other > k else "prev"
    flow = wiring.Flow.Out if k == src else wiring.Flow.In
    end = LinkEnd(src, dst, e)
    for j, s in enumerate(e.streams):
        tags = getattr(node, "link_tags", {})
        names = [name for name, key in sorted(node.link_ports.items(),
                                              key=lambda kv: (tags.get(kv[0], ()), kv[0]))
                 if key == (peer, s.path, s.layer) and node.signature.members[name].flow == flow]
        if not names:
            raise ValueError(f"stream {s.path} of {s.layer!r} on link {src} -> {dst} is not "
                             f"built (node {k} has no port for it)")
        for name in names:
            port = getattr(node, name)
            end.streams.append(LinkStream(sid=len(end.streams) + 1, path=s.path, width=64,
                                          words=1, depth=depth))
            end.names.append(name)
            end.ports.append(port)
            end.bits.append(len(Value.cast(port.payload)))
            end.items.append(node.link_items[name])
            end.plan_index.append(j)
    return end


def tx_fifo_items(max_payload, bits):
    """Items of the FIFO in front of a packer of ``bits``-bit items: two frames' worth.

    Two frames wait there while the other staging bank is on the wire, so that a saturated link
    sends full frames (``LinkTx`` cuts a frame at the first cycle its input runs dry).
    """
    return max(2, math.ceil(2 * max_payload * 64 / bits))


def connect_send(m, name, src, tx_input, bits, items, max_payload):
    """Node port ``src`` -> FIFO of :func:`tx_fifo_items` items -> :class:`Packer` ->
    transmitter input ``tx_input`` (submodules ``<name>_q`` and ``<name>_pack``)."""
    fifo = SyncFIFOBuffered(width=bits, depth=tx_fifo_items(max_payload, bits))
    pack = Packer(bits, items)
    m.submodules[f"{name}_q"] = fifo
    m.submodules[f"{name}_pack"] = pack
    m.d.comb += [fifo.w_stream.valid.eq(src.valid),
                 fifo.w_stream.payload.eq(Value.cast(src.payload)),
                 src.ready.eq(fifo.w_stream.ready)]
    wiring.connect(m, fifo.r_stream, pack.i)
    wiring.connect(m, pack.o, tx_input)


def connect_receive(m, name, rx_output, dst, bits, items):
    """Receiver output ``rx_output`` -> :class:`Unpacker` -> node port ``dst`` (submodule
    ``<name>_unpack``)."""
    unpack = Unpacker(bits, items)
    m.submodules[f"{name}_unpack"] = unpack
    wiring.connect(m, rx_output, unpack.i)
    m.d.comb += [dst.valid.eq(unpack.o.valid), dst.payload.eq(unpack.o.payload),
                 unpack.o.ready.eq(dst.ready)]
