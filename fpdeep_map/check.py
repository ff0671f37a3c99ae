"""``python -m fpdeep_map check``: a network's layers, shapes, work and storage at a glance.

:func:`check_report` gives the readable table, :func:`check_json` the same content as a plain,
JSON-serialisable dict.  Work is counted per image in MACs for forward propagation (FP), error
back-propagation (EB, none for the first compute layer) and parameter gradients (PG); one MAC is
two operations.

Members
-------
check_report, check_json, human
"""

from __future__ import annotations

from .network import Network

__all__ = ["check_report", "check_json", "human"]


def human(n: float) -> str:
    """``n`` with 4 significant digits and a k/M/G/T suffix (``724406816 -> '724.4 M'``)."""
    if n == 0:
        return "0"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.4g} {suffix}"
    return f"{n:g}"


def _ops(n) -> str:
    s = human(n)
    return s + "OP" if s[-1].isalpha() else s + " OP"


def _shape(s) -> str:
    return "x".join(str(d) for d in s)


def _geometry(l) -> str:
    if l.kind == "conv":
        g = f"{l.kernel}x{l.kernel}"
        if l.stride != 1:
            g += f" s{l.stride}"
        if l.padding:
            g += f" p{l.padding}"
        if l.groups != 1:
            g += f" g{l.groups}"
        return g
    if l.kind in ("maxpool", "avgpool"):
        g = f"{l.kernel}x{l.kernel} s{l.stride}"
        if l.padding:
            g += f" p{l.padding}"
        if not l.ceil_mode:
            g += " floor"
        return g
    if l.kind == "loss":
        return l.loss
    return ""


def _support_line(net: Network) -> str:
    bad = net.unsupported()
    if not bad:
        return "all layers supported"
    return (f"UNSUPPORTED layers ({len(bad)}): "
            + ", ".join(f"{l.name} ({l.kind})" for l in bad)
            + " -- `plan` refuses this network until they are removed")


def check_json(net: Network) -> dict:
    """Everything :func:`check_report` shows, as a JSON-serialisable dict.

    Keys: ``network``, ``source``, ``input_shape``, ``classes``, ``supported`` (bool),
    ``unsupported`` (layer names), ``layers`` (one object per layer) and ``totals``.
    """
    layers = []
    for l in net.layers:
        layers.append({
            "name": l.name,
            "kind": l.kind,
            "supported": l.supported,
            "in_shape": list(l.in_shape),
            "out_shape": list(l.out_shape),
            "in_channels": l.in_channels,
            "out_channels": l.out_channels,
            "kernel": l.kernel,
            "stride": l.stride,
            "padding": l.padding,
            "groups": l.groups,
            "fp_macs": l.fp_macs,
            "eb_macs": net.eb_macs(l),
            "pg_macs": l.pg_macs,
            "weights": l.weights,
            "biases": l.biases,
            "params": l.params,
            "in_activations": l.in_activations,
            "out_activations": l.out_activations,
            **({"loss": l.loss} if l.kind == "loss" else {}),
        })
    return {
        "network": net.name,
        "source": net.source,
        "input_shape": list(net.input_shape),
        "classes": net.classes,
        "supported": not net.unsupported(),
        "unsupported": [l.name for l in net.unsupported()],
        "layers": layers,
        "totals": net.totals(),
    }


def check_report(net: Network) -> str:
    """A readable table of every layer: shapes, FP/EB/PG MACs, parameters, activations."""
    t = net.totals()
    lines = [
        f"network {net.name} ({net.source}): input {_shape(net.input_shape)}, "
        f"{net.classes} classes, {len(net.layers)} layers, "
        f"{len(net.compute_layers())} conv/fc",
        _support_line(net),
        "",
    ]
    head = ["#", "layer", "kind", "in", "out", "geometry", "FP MACs", "EB MACs", "PG MACs",
            "params", "activations"]
    rows = []
    for i, l in enumerate(net.layers):
        kind = l.kind if l.supported else f"{l.kind}*"
        rows.append([str(i), l.name, kind, _shape(l.in_shape), _shape(l.out_shape),
                     _geometry(l),
                     human(l.fp_macs), human(net.eb_macs(l)), human(l.pg_macs),
                     human(l.params), human(l.out_activations)])
    rows.append(["", "total", "", "", "", "", human(t["fp_macs"]), human(t["eb_macs"]),
                 human(t["pg_macs"]), human(t["params"]), human(t["activations"])])
    right = {0, 6, 7, 8, 9, 10}
    widths = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]

    def fmt(r):
        return "  ".join(r[c].rjust(widths[c]) if c in right else r[c].ljust(widths[c])
                         for c in range(len(head))).rstrip()

    lines.append(fmt(head))
    lines.append("  ".join("-" * w for w in widths))
    for r in rows[:-1]:
        lines.append(fmt(r))
    lines.append("  ".join("-" * w for w in widths))
    lines.append(fmt(rows[-1]))
    lines += [
        "",
        f"per image: forward {t['fp_macs']:,} MACs ({_ops(t['forward_ops'])}); training "
        f"FP+EB+PG {t['train_macs']:,} MACs ({_ops(t['train_ops'])})",
        f"parameters: {t['params']:,} ({t['weights']:,} weights + {t['biases']:,} biases); "
        f"activations (layer outputs): {t['activations']:,}",
        "EB of the first conv/fc layer is 0: the image needs no error. "
        "Activations: output values per layer; * marks an unsupported layer.",
    ]
    return "\n".join(lines) + "\n"
