"""The operator graph of training (paper section 3.1, Fig. 1B) as a networkx graph.

Nodes are operators ``(layer, phase)`` with ``phase`` in ``fp`` (forward propagation), ``eb``
(error back-propagation), ``pg`` (parameter gradients) and ``update`` (weight update), plus the
``loss``. Node attributes: ``layer``, ``phase``, ``kind`` (the layer kind), ``macs`` (multiply-
accumulates per image; relu/pool/loss count 0 MACs -- they run in special-function units) and
``ops`` (2 x MACs, the paper's operation count).

Edges are tensors, with ``tensor`` (``activation``, ``error``, ``gradient``, ``weights``) and
``words`` (values per image; weights and gradients: per mini-batch, once).

:func:`coarse_graph` collapses it to the paper's one-way graph G-bar: one node per compute layer
carrying the FP + EB + PG work of that layer and of the relu/pool layers that follow it.
"""

from __future__ import annotations

import networkx as nx

from .network import Network


def operator_graph(net: Network) -> nx.DiGraph:
    g = nx.DiGraph(network=net.name)
    prev = None                  # previous layer (name) on the forward path
    first_compute = net.first_compute()
    for layer in net.layers:
        if layer.kind == "loss":
            g.add_node(("loss", "loss"), layer=layer.name, phase="loss", kind="loss", macs=0, ops=0)
            if prev is not None:
                g.add_edge((prev, "fp"), ("loss", "loss"), tensor="activation",
                           words=layer.in_activations)
                g.add_edge(("loss", "loss"), (prev, "eb"), tensor="error",
                           words=layer.in_activations)
            continue
        fp_macs = layer.fp_macs if layer.is_compute else 0
        g.add_node((layer.name, "fp"), layer=layer.name, phase="fp", kind=layer.kind,
                   macs=fp_macs, ops=2 * fp_macs)
        needs_eb = layer.is_compute and layer is not first_compute and net.eb_macs(layer) > 0
        if not layer.is_compute or needs_eb:
            eb_macs = net.eb_macs(layer) if layer.is_compute else 0
            g.add_node((layer.name, "eb"), layer=layer.name, phase="eb", kind=layer.kind,
                       macs=eb_macs, ops=2 * eb_macs)
        if layer.is_compute:
            g.add_node((layer.name, "pg"), layer=layer.name, phase="pg", kind=layer.kind,
                       macs=layer.pg_macs, ops=2 * layer.pg_macs)
            g.add_node((layer.name, "update"), layer=layer.name, phase="update", kind=layer.kind,
                       macs=0, ops=0)
            g.add_edge((layer.name, "pg"), (layer.name, "update"), tensor="gradient",
                       words=layer.params)
            g.add_edge((layer.name, "update"), (layer.name, "fp"), tensor="weights",
                       words=layer.params)
            if (layer.name, "eb") in g:
                g.add_edge((layer.name, "update"), (layer.name, "eb"), tensor="weights",
                           words=layer.params)
            # the layer's input activations are kept (Act-RAM) for its gradients
            if prev is not None:
                g.add_edge((prev, "fp"), (layer.name, "pg"), tensor="activation",
                           words=layer.in_activations)
        if prev is not None:
            g.add_edge((prev, "fp"), (layer.name, "fp"), tensor="activation",
                       words=layer.in_activations)
        prev = layer.name
    # errors flow back: eb of layer i+1 feeds eb (if any) and pg of layer i
    names = [l.name for l in net.layers if l.kind != "loss"]
    for upper, lower in zip(reversed(names), reversed(names[:-1])):
        src = (upper, "eb") if (upper, "eb") in g else None
        if src is None:
            continue
        words = net.layer(upper).in_activations
        if (lower, "eb") in g:
            g.add_edge(src, (lower, "eb"), tensor="error", words=words)
        if (lower, "pg") in g:
            g.add_edge(src, (lower, "pg"), tensor="error", words=words)
    if names and (names[-1], "eb") in g and (names[-1], "pg") in g:
        g.add_edge(("loss", "loss"), (names[-1], "pg"), tensor="error",
                   words=net.layer(names[-1]).out_activations)
    return g


def coarse_graph(net: Network) -> nx.DiGraph:
    """The one-way graph G-bar: compute layers in order, each with its training MACs."""
    g = operator_graph(net)
    cg = nx.DiGraph(network=net.name)
    prev = None
    for layer in net.compute_layers():
        macs = sum(d["macs"] for _, d in g.nodes(data=True) if d["layer"] == layer.name)
        cg.add_node(layer.name, macs=macs, ops=2 * macs)
        if prev is not None:
            cg.add_edge(prev, layer.name, words=layer.in_activations)
        prev = layer.name
    return cg


def total_macs(g: nx.DiGraph) -> int:
    return sum(d["macs"] for _, d in g.nodes(data=True))
