"""The link streams of a plan: which node port ends each plan stream, and its ``LinkStream``.

Shared by the simulated cluster (:class:`fpdeep_hw.node.cluster.Cluster`, both ends of a link
in one design) and the board top (:class:`fpdeep_hw.board_top.LinkedNode`, one end per board),
so that the two build the same framers from a plan:

- one :class:`~fpdeep_hw.link.framer.LinkStream` per stream the plan lists for a link direction
  (``plan.links[*].streams``), **stream id = position in that list + 1**, path from the plan;
- a stream's item is the node port's payload (a pixel of ``C`` lanes): one 64-bit word when it
  has at most 64 bits (``width`` = its bits), else ``ceil(bits / 64)`` words of 64 bits;
- ``depth`` words of receive buffer per stream (the transmitter's initial credit).

Only whole-layer plans without lending are bound: activations on a forward link ``a -> a + 1``
(``a_out`` of node ``a`` into ``a_in`` of node ``a + 1``, whose first layer consumes them) and
errors on a backward link ``a -> a - 1`` (``e_out`` of node ``a`` into ``e_in`` of node
``a - 1``, the errors of that node's last layer). Anything else raises ``ValueError`` naming the
stream.

Test: ``tests/hw/test_build.py`` (board top) and ``tests/sim/test_cluster.py`` (cluster).
Documentation: ``docs/build.md``, ``docs/hw-node.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .framer import LinkStream

__all__ = ["DEPTH", "MAX_PAYLOAD", "CREDIT_INTERVAL", "LinkEnd", "plan_link", "stream_port",
           "link_end", "tx_fifo_items"]

#: Receive buffer of every stream in 64-bit words (the transmitter's initial credit).
DEPTH = 1024
#: Maximum payload words per frame (the mapper's frame model,
#: ``fpdeep_map.costs.LINK_FRAME_PAYLOAD_WORDS``).
MAX_PAYLOAD = 32
#: Minimum cycles between two credit frames of a transmitter.
CREDIT_INTERVAL = 8192


def plan_link(plan, src, dst):
    """The plan's link entry ``src -> dst`` (``ValueError`` if the plan has none)."""
    for e in plan.links:
        if (e.src, e.dst) == (src, dst):
            return e
    raise ValueError(f"the plan has no link {src} -> {dst}")


def stream_port(node, s, src, dst):
    """The port of ``node`` (a ``NodeTop`` of plan node ``src`` or ``dst``) ending stream ``s``.

    ``s`` is a plan stream (``fpdeep_map.plan`` link stream: ``path``, ``layer``) of link
    ``src -> dst``. Returns the sending port on node ``src`` and the receiving port on node
    ``dst``.
    """
    plan, k = node.plan, node.node
    if k not in (src, dst):
        raise ValueError(f"node {k} does not end link {src} -> {dst}")
    if s.path == "activations" and dst == src + 1 and \
            plan.node_plans[dst].segments and plan.node_plans[dst].segments[0].layer == s.layer:
        return node.a_out if k == src else node.a_in
    if s.path == "errors" and dst == src - 1 and dst < len(plan.node_plans) - 1 and \
            plan.node_plans[dst].segments and plan.node_plans[dst].segments[-1].layer == s.layer:
        return node.e_out if k == src else node.e_in
    raise ValueError(f"stream {s.path} of {s.layer!r} on link {src} -> {dst} is not built "
                     f"(only whole-layer plans without lending)")


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
        One per plan stream, in the plan's order (``sid`` = position + 1).
    ports : list
        Per stream: the node's port (sending port on ``src``, receiving port on ``dst``).
    bits : list of int
        Per stream: payload bits of one item.
    """

    src: int
    dst: int
    entry: object
    streams: list = field(default_factory=list)
    ports: list = field(default_factory=list)
    bits: list = field(default_factory=list)


def link_end(node, src, dst, *, depth=DEPTH):
    """:class:`LinkEnd` of ``node`` (a ``NodeTop``) on the plan's link ``src -> dst``."""
    e = plan_link(node.plan, src, dst)
    end = LinkEnd(src, dst, e)
    for j, s in enumerate(e.streams):
        port = stream_port(node, s, src, dst)
        nbits = len(port.payload.as_value())
        words = math.ceil(nbits / 64)
        end.streams.append(LinkStream(sid=j + 1, path=s.path, width=nbits if words == 1 else 64,
                                      words=words, depth=depth))
        end.ports.append(port)
        end.bits.append(nbits)
    return end


def tx_fifo_items(max_payload, ls):
    """Items of the FIFO in front of a transmitter input of stream ``ls``: two frames.

    A frame's worth of words waits there while the other staging bank is on the wire, so that a
    saturated link sends full frames (``LinkTx`` cuts a frame at the first cycle its input runs
    dry).
    """
    return max(2, math.ceil(2 * max_payload / ls.words))
