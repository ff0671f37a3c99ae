"""The plan: what every FPGA of the chain holds, computes, stores and sends.

A plan is the single input of the hardware generator (``fpdeep_hw``) and of the simulator
(``sim``). It is written as YAML (``Plan.to_yaml``) and read back (``Plan.from_yaml``); the round
trip is exact (``Plan.from_yaml(p.to_yaml()) == p``).

Conventions
-----------
* Nodes are numbered 0..N-1 along the chain; node 0 receives the images from the host.
* A *segment* is a slice of one compute layer (conv or fc) on one node. ``split`` is ``whole``
  (the layer is not cut), ``icp`` (input channels ``channels`` = [lo, hi) of the layer are here,
  partial sums of all output channels flow along the chain) or ``ocp`` (output channels
  ``channels`` = [lo, hi) are computed here from all input channels). Ranges are half-open.
  For ``whole`` segments ``channels`` is all input channels.
* Engines: one per phase (``fp``, ``eb``, ``pg``): an array of ``p`` output-channel lanes x ``s``
  input-channel lanes x ``x`` output rows side by side, each lane a ``kernel`` x ``kernel`` tile
  of multiply-accumulate units (one DSP slice each).
* Links: ``src`` -> ``dst`` between chain neighbours (``dst = src + 1`` forward, ``src - 1``
  backward); each carries typed streams in words per image.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import yaml

from .numerics import NumericsConfig

PLAN_FORMAT = 1


@dataclass
class EnginePlan:
    phase: str                  # 'fp' | 'eb' | 'pg'
    kernel: int
    p: int                      # output-channel lanes
    s: int                      # input-channel lanes
    x: int                      # output rows side by side
    dsp: int
    cycles_per_image: int
    macs_per_image: int


@dataclass
class MemoryPlan:
    """One on-chip memory (or its off-chip part): words of ``width`` bits in ``banks`` banks."""
    words: int
    width: int
    banks: int = 1
    depth: int = 0              # words per bank
    bram18: int = 0             # RAMB18 used on chip
    offchip_words: int = 0      # words kept in off-chip memory instead


@dataclass
class SegmentPlan:
    layer: str
    index: int                  # position among the network's compute layers
    kind: str                   # 'conv' | 'fc'
    split: str                  # 'whole' | 'icp' | 'ocp'
    channels: list              # [lo, hi): input channels (icp/whole) or output channels (ocp)
    in_channels: list           # input channels this node reads
    out_channels: list          # output channels it produces (partial sums for icp)
    completes: list             # output channels finished here ([lo, hi) or [])
    post: list                  # relu / maxpool layers applied here to the finished channels
    weights: int                # weights of this segment (all of them, local and borrowed)
    weights_borrowed: int       # of those, kept in a neighbour's BPRAM
    engines: dict               # phase -> EnginePlan
    act_ram: MemoryPlan         # input activations kept from FP until PG
    act_ram_images: float       # how many images' worth that is (residency / pipeline period)
    lpram: MemoryPlan           # parameters (master copy)
    lgb: MemoryPlan             # gradient accumulators
    line_buffers: MemoryPlan    # FP, PG (activations) and EB (errors) line buffers
    # the ReLU masks and max-pool argmaxes kept from FP until BP of the same image, (lag + 1)
    # images' worth (words: output pixels of the convolution / of the pool, width: output
    # channels bits / their argmax bits; words = 0 without a ReLU / pool). None: a plan saved
    # before these stores were planned (the hardware keeps them on chip, sized as its lag asks)
    mask_store: MemoryPlan | None = None
    arg_store: MemoryPlan | None = None
    # the master copy of the segment's weights (master format), read, updated and written back
    # once per mini-batch: off chip (offchip_words = words). None: a plan saved before this
    # entry (the hardware keeps the master copy on chip)
    master_store: MemoryPlan | None = None


@dataclass
class LendPlan:
    """Parameters of ``layer`` used on ``borrower`` and kept on ``lender`` (BPRAM + BGB)."""
    layer: str
    lender: int
    borrower: int
    weights: int
    bram18: int


@dataclass
class StreamPlan:
    """One typed stream on a link. ``layer`` names the layer the data belong to: activations
    and partial sums of the layer that consumes / produces them; errors of the layer whose
    *output* they are the errors of (so the errors a layer's EB computes carry the name of the
    layer below it); parameters and gradients of the layer they are the weights of."""
    path: str                   # 'activations' | 'partial_sums' | 'errors' | 'partial_errors'
                                # | 'parameters' | 'gradients'
    layer: str
    words_per_image: float
    width: int                  # bits per word


@dataclass
class LinkPlan:
    src: int
    dst: int
    streams: list               # [StreamPlan]
    bits_per_image: float       # payload
    gbps: float                 # on the wire (payload + frame headers/CRC) at the plan's rate
    wire_bits_per_image: float = 0.0   # payload + frame headers and CRC trailers


@dataclass
class NodePlan:
    node: int
    segments: list              # [SegmentPlan]
    dsp: int
    bram36: float
    lut: int
    ff: int
    cycles_per_image: int       # slowest engine on this node
    macs_per_image: int
    gops: float
    link_gbps_in: float
    link_gbps_out: float
    offchip_gbps: float         # off-chip memory traffic (FC weights, spilled Act-RAM and
                                # mask / argmax stores, ...)
    offchip_mbytes: float
    bpram: list = field(default_factory=list)   # [LendPlan] kept here for others


@dataclass
class Plan:
    network: str
    network_source: str
    board: str
    board_source: str
    nodes: int
    clock_mhz: float
    link_gbps: float
    topology: str
    batch: int
    fc_microbatch: int
    numerics: NumericsConfig
    budgets: dict               # fraction of each resource the plan may use
    available: dict             # per node: dsp, bram36, lut, ff
    node_plans: list            # [NodePlan]
    links: list                 # [LinkPlan]
    summary: dict               # the performance figures (see mapper.summary keys)
    format: int = PLAN_FORMAT

    # ---- YAML ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"fpdeep_plan": self.format}
        for f in dataclasses.fields(self):
            if f.name == "format":
                continue
            v = getattr(self, f.name)
            d[f.name] = v.to_dict() if isinstance(v, NumericsConfig) else _plain(v)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        d = dict(d)
        fmt = d.pop("fpdeep_plan", None)
        if fmt != PLAN_FORMAT:
            raise ValueError(f"fpdeep_plan: {fmt!r}: not a plan of format {PLAN_FORMAT}")
        d["numerics"] = NumericsConfig.from_dict(d["numerics"])
        d["node_plans"] = [_node_from(n) for n in d["node_plans"]]
        d["links"] = [_link_from(l) for l in d["links"]]
        return cls(format=fmt, **d)

    @classmethod
    def from_yaml(cls, text: str) -> "Plan":
        return cls.from_dict(yaml.safe_load(text))

    # ---- queries ------------------------------------------------------------------------------
    def node(self, k: int) -> NodePlan:
        return self.node_plans[k]

    def link(self, src: int, dst: int) -> LinkPlan | None:
        for l in self.links:
            if l.src == src and l.dst == dst:
                return l
        return None


def _plain(v):
    if dataclasses.is_dataclass(v):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _seg_from(d):
    d = dict(d)
    d["engines"] = {k: EnginePlan(**e) for k, e in d["engines"].items()}
    for k in ("act_ram", "lpram", "lgb", "line_buffers"):
        d[k] = MemoryPlan(**d[k])
    for k in ("mask_store", "arg_store", "master_store"):   # absent from older plans: None
        if d.get(k) is not None:
            d[k] = MemoryPlan(**d[k])
    return SegmentPlan(**d)


def _node_from(d):
    d = dict(d)
    d["segments"] = [_seg_from(s) for s in d["segments"]]
    d["bpram"] = [LendPlan(**b) for b in d.get("bpram", [])]
    return NodePlan(**d)


def _link_from(d):
    d = dict(d)
    d["streams"] = [StreamPlan(**s) for s in d["streams"]]
    return LinkPlan(**d)


def set_ranges(total, shares):
    """Contiguous set ranges for keepers holding ``shares`` (weights, any unit) of ``total``
    sets, in order: boundaries at the cumulative shares rounded to whole sets (half up). A
    keeper whose share rounds to no set gets ``None``. The hardware lends these ranges
    (``fpdeep_hw.node.sets.keepers_of``) and the mapper counts them (link traffic, the
    weight-stationary share of a borrowed segment)."""
    whole = sum(shares)
    out, acc, lo = [], 0, 0
    for s in shares:
        acc += s
        hi = (2 * acc * total + whole) // (2 * whole) if whole else 0
        out.append((lo, hi) if hi > lo else None)
        lo = hi
    return out
