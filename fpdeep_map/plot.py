"""Figures (optional: needs matplotlib, ``pip install 'fpdeep[plot]'``).

* :func:`plan_figure`: per-FPGA resource use (DSP, BRAM, LUT, FF as a share of the device) and
  the DSPs each FPGA gives to each layer -- the paper's Fig. 14.
* :func:`sweep_figure`: images per second against cluster size for several link bandwidths, with
  the compute-bound line -- the paper's Fig. 15 roofline.

Both return PNG bytes; the caller writes the file (atomically, after everything succeeded).
"""

from __future__ import annotations

import io


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def plan_figure(plan, net=None, board=None, **_):
    plt = _pyplot()
    a = plan.available
    nodes = [n.node for n in plan.node_plans]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(7, 0.45 * len(nodes) + 3), 7.5),
                                   sharex=True)
    width = 0.2
    for i, (key, label) in enumerate((("dsp", "DSP"), ("bram36", "BRAM"), ("lut", "LUT"),
                                      ("ff", "FF"))):
        vals = [getattr(n, key) / a[key] * 100 for n in plan.node_plans]
        ax1.bar([x + (i - 1.5) * width for x in nodes], vals, width, label=label)
    ax1.set_ylabel("utilisation (%)")
    ax1.set_ylim(0, 105)
    ax1.axhline(80, color="grey", lw=0.8, ls="--")
    ax1.legend(ncol=4, loc="lower right", fontsize=8)
    s = plan.summary
    ax1.set_title(f"{plan.network} on {plan.nodes} x {plan.board}: {s['images_per_second']:.0f} "
                  f"images/s, {s['throughput_gops_per_fpga']:.0f} GOPS/FPGA, "
                  f"idle {s['idle_fraction']:.1%}, bottleneck {s['bottleneck']}", fontsize=9)

    layers = []
    for n in plan.node_plans:
        for seg in n.segments:
            if seg.layer not in layers:
                layers.append(seg.layer)
    cmap = plt.get_cmap("tab20")
    bottom = [0] * len(nodes)
    for li, layer in enumerate(layers):
        vals = [sum(e.dsp for seg in n.segments if seg.layer == layer for e in seg.engines.values())
                for n in plan.node_plans]
        ax2.bar(nodes, vals, 0.7, bottom=bottom, label=layer, color=cmap(li % 20))
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax2.axhline(a["dsp"], color="black", lw=0.8, ls="--")
    ax2.set_ylim(0, a["dsp"] * 1.08)
    ax2.text(nodes[0] - 0.4, a["dsp"] * 1.01, "device DSPs", fontsize=7)
    ax2.set_ylabel("DSP slices per layer")
    ax2.set_xlabel("FPGA")
    ax2.set_xticks(nodes)
    ax2.legend(ncol=min(6, len(layers)), fontsize=7, loc="upper center",
               bbox_to_anchor=(0.5, -0.18))
    return _png(fig)


def sweep_figure(result, net, board, node_counts, link_options=(40.0, 150.0, 250.0), **kw):
    """Throughput against N for the board's link and ``link_options`` Gb/s."""
    from .cli import sweep
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    pts = [p for p in result["points"] if p["fits"]]
    ns = [p["nodes"] for p in pts]
    ax.plot(ns, [p["compute_images_per_second"] for p in pts], "k--", label="compute bound")
    ax.plot(ns, [p["images_per_second"] for p in pts], "o-", ms=3,
            label=f"{board.link_gbps:g} Gb/s (board, linear to {result['linear_limit_nodes']})")
    for g in link_options:
        if abs(g - board.link_gbps) < 1e-9:
            continue
        other = sweep(net, board.with_overrides(link_gbps=g), node_counts, **kw)
        ax.plot(ns, [p["images_per_second"] for p in other["points"] if p["fits"]], "o-", ms=3,
                label=f"{g:g} Gb/s (linear to {other['linear_limit_nodes']})")
    ax.set_xlabel("FPGAs")
    ax.set_ylabel("images per second")
    ax.set_title(f"{result['network']} on {result['board']}: scaling against link bandwidth",
                 fontsize=10)
    ax.grid(True, lw=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
