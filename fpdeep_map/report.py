"""Human-readable tables and the JSON objects of the ``plan`` and ``sweep`` commands."""

from __future__ import annotations

from .plan import Plan


def plan_json(plan: Plan) -> dict:
    """The ``plan --json`` object (keys are a public interface: add, never rename)."""
    s = plan.summary
    return {
        "network": plan.network,
        "board": plan.board,
        "nodes": plan.nodes,
        "clock_mhz": plan.clock_mhz,
        "link_gbps": plan.link_gbps,
        "topology": plan.topology,
        "batch": plan.batch,
        "fc_microbatch": plan.fc_microbatch,
        "images_per_second": s["images_per_second"],
        "compute_images_per_second": s["compute_images_per_second"],
        "cycles_per_image": s["cycles_per_image"],
        "steady_images_per_second": s["steady_images_per_second"],
        "cycles_per_image_steady": s["cycles_per_image_steady"],
        "boundary_cycles_per_batch": s["boundary_cycles_per_batch"],
        "cycles_per_image_with_updates": s["cycles_per_image_with_updates"],
        "throughput_gops_per_fpga": s["throughput_gops_per_fpga"],
        "epoch_hours": s["epoch_hours"],
        "dsp_utilization": s["dsp_utilization"],
        "idle_fraction": s["idle_fraction"],
        "max_link_gbps": s["max_link_gbps"],
        "link_capacity_gbps": s["link_capacity_gbps"],
        "bottleneck": s["bottleneck"],
        "lent_weights": s["lent_weights"],
        "per_node": [
            {
                "node": n.node,
                "layers": [{"layer": seg.layer, "split": seg.split, "channels": list(seg.channels)}
                           for seg in n.segments],
                "dsp": n.dsp,
                "bram36": n.bram36,
                "lut": n.lut,
                "ff": n.ff,
                "gops": n.gops,
                "link_gbps_in": n.link_gbps_in,
                "link_gbps_out": n.link_gbps_out,
                "offchip_gbps": n.offchip_gbps,
                "cycles_per_image": n.cycles_per_image,
                "lends": [{"layer": l.layer, "to_node": l.borrower, "weights": l.weights}
                          for l in n.bpram],
            }
            for n in plan.node_plans
        ],
    }


def _layers_text(node, width=46):
    parts = []
    for seg in node.segments:
        if seg.split == "whole":
            parts.append(seg.layer)
        else:
            parts.append(f"{seg.layer}[{seg.channels[0]}:{seg.channels[1]}]{seg.split}")
    text = " ".join(parts)
    return text if len(text) <= width else text[: width - 3] + "..."


def plan_table(plan: Plan) -> str:
    a = plan.available
    s = plan.summary
    rows = [f"fpdeep plan: {plan.network} on {plan.nodes} x {plan.board} ({plan.topology}), "
            f"{plan.clock_mhz:g} MHz, links {plan.link_gbps:g} Gb/s per direction",
            "",
            f"{'node':>4}  {'layers held':<46} {'DSP':>9} {'BRAM36':>11} {'LUT':>10} "
            f"{'GOPS':>7} {'in Gb/s':>8} {'out Gb/s':>8}"]
    for n in plan.node_plans:
        rows.append(
            f"{n.node:>4}  {_layers_text(n):<46} {n.dsp:>5} {n.dsp / a['dsp']:>3.0%} "
            f"{n.bram36:>7.1f} {n.bram36 / a['bram36']:>3.0%} {n.lut:>6} {n.lut / a['lut']:>3.0%} "
            f"{n.gops:>7.1f} {n.link_gbps_in:>8.2f} {n.link_gbps_out:>8.2f}")
    lent = [l for n in plan.node_plans for l in n.bpram]
    rows += [
        "",
        f"throughput        {s['images_per_second']:.1f} images/s "
        f"({s['throughput_gops_per_fpga']:.0f} GOPS per FPGA), bottleneck: {s['bottleneck']}",
        f"cycles per image  {s['cycles_per_image_with_updates']:.1f} over whole mini-batches "
        f"= {s['cycles_per_image_steady']:g} within one + {s['boundary_cycles_per_batch']:g} "
        f"per mini-batch boundary / {plan.batch}",
        f"compute bound     {s['compute_images_per_second']:.1f} images/s "
        f"({s['engine_cycles_per_image']:g} cycles per image; CE words {s['cycles_per_image']})",
        f"DSP utilisation   {s['dsp_utilization']:.1%}   idle (imbalance) {s['idle_fraction']:.2%}",
        f"busiest link      {s['max_link_gbps']:.2f} of {s['link_capacity_gbps']:g} Gb/s",
        f"epoch (ImageNet)  {s['epoch_hours']:.2f} h",
        f"FC micro-batch    {plan.fc_microbatch} (mini-batch {plan.batch})",
        f"balanced params   {s['lent_weights']} weights kept in neighbours"
        + (" (" + ", ".join(f"{l.layer}: {l.weights} on node {l.lender} for node {l.borrower}"
                             for l in lent[:4]) + (", ..." if len(lent) > 4 else "") + ")"
           if lent else ""),
    ]
    return "\n".join(rows)


def sweep_table(result: dict) -> str:
    rows = [f"fpdeep sweep: {result['network']} on {result['board']}, links "
            f"{result['link_gbps']:g} Gb/s ({result['topology']})", "",
            f"{'nodes':>5} {'images/s':>10} {'GOPS/FPGA':>10} {'max link':>9} {'bottleneck':>10}"]
    for p in result["points"]:
        if not p["fits"]:
            rows.append(f"{p['nodes']:>5} {'does not fit':>10}")
            continue
        rows.append(f"{p['nodes']:>5} {p['images_per_second']:>10.1f} "
                    f"{p['throughput_gops_per_fpga']:>10.1f} {p['max_link_gbps']:>9.2f} "
                    f"{p['bottleneck']:>10}")
    rows += ["", f"linear scaling (>= 95% of compute-bound per-FPGA throughput) up to "
                 f"{result['linear_limit_nodes']} nodes"]
    return "\n".join(rows)
