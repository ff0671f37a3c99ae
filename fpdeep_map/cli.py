"""Command line: ``python -m fpdeep_map {check,plan,sweep,evaluate} ...``.

Bad input never ends in a traceback: it prints one line ``error: <file>: <field>: <value>:
<problem>`` on standard error, exits with code 2 and writes no output file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from .board import load_board
from .check import check_json, check_report
from .errors import FpdeepError
from .mapper import TOPOLOGIES, evaluate_plan, map_network
from .network import load_network
from .report import plan_json, plan_table, sweep_table


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse's own errors as the one-line kind, exit code 2
        raise FpdeepError("command line", self.prog.split()[-1], " ".join(sys.argv[1:]), message)


def _positive_float(flag):
    def conv(text):
        try:
            v = float(text)
        except ValueError:
            raise FpdeepError("command line", flag, text, "must be a number") from None
        if not v > 0 or v == float("inf"):
            raise FpdeepError("command line", flag, text, "must be a positive number")
        return v
    return conv


def _int_at_least(flag, minimum):
    def conv(text):
        try:
            v = int(text)
        except ValueError:
            raise FpdeepError("command line", flag, text, "must be an integer") from None
        if v < minimum:
            raise FpdeepError("command line", flag, text, f"must be an integer >= {minimum}")
        return v
    return conv


def _node_range(text):
    parts = text.split(":")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise FpdeepError("command line", "--nodes", text, "must be A:B or A:B:STEP (integers)") from None
    if len(nums) not in (2, 3):
        raise FpdeepError("command line", "--nodes", text, "must be A:B or A:B:STEP")
    a, b = nums[:2]
    step = nums[2] if len(nums) == 3 else 1
    if a < 1 or b < a or step < 1:
        raise FpdeepError("command line", "--nodes", text, "needs 1 <= A <= B and STEP >= 1")
    return list(range(a, b + 1, step))


def build_parser():
    p = _Parser(prog="python -m fpdeep_map",
                description="Map CNN training onto a 1-D chain of FPGAs (FPDeep).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("check", help="list a network's layers, shapes, operations and support")
    c.add_argument("--net", required=True, help="zoo name (alexnet, vgg16, vgg19, tiny, digits) or YAML file")
    c.add_argument("--json", action="store_true", help="print one JSON object")

    def common(sp):
        sp.add_argument("--net", required=True, help="zoo name or network YAML file")
        sp.add_argument("--board", required=True, help="board name (vc709, kcu105, alveo-u280, tiny-test) or YAML file")
        sp.add_argument("--link-gbps", type=_positive_float("--link-gbps"),
                        help="usable bandwidth of one link, per direction (default: the board's)")
        sp.add_argument("--clock-mhz", type=_positive_float("--clock-mhz"),
                        help="design clock (default: the board's)")
        sp.add_argument("--topology", choices=TOPOLOGIES, default="chain",
                        help="interconnect (default chain, the paper's 1-D array)")
        sp.add_argument("--batch", type=_int_at_least("--batch", 1), default=128,
                        help="SGD mini-batch size (default 128, the paper's)")
        sp.add_argument("--ocp-threshold", type=_int_at_least("--ocp-threshold", 1), default=16,
                        help="layers with fewer input channels per group use output-channel partition")
        sp.add_argument("--max-row-lanes", type=_int_at_least("--max-row-lanes", 1), default=8,
                        help="most output rows an engine computes side by side (default 8); "
                             "smaller powers of two are tried too and the fastest plan kept")
        sp.add_argument("--split", choices=("channels", "layers"), default="channels",
                        help="channels: cut inside layers (FPDeep, default); layers: whole layers "
                             "per FPGA (the layer-granular baseline as a plan)")
        sp.add_argument("--json", action="store_true", help="print one JSON object")
        sp.add_argument("--plot", metavar="FILE.png", help="draw the figures (needs matplotlib)")

    pl = sub.add_parser("plan", help="map a network onto N FPGAs and report the plan")
    common(pl)
    pl.add_argument("--nodes", required=True, type=_int_at_least("--nodes", 1), help="number of FPGAs")
    pl.add_argument("--out", metavar="FILE", help="write the plan as YAML (the hardware generator's input)")

    sw = sub.add_parser("sweep", help="throughput against cluster size")
    common(sw)
    sw.add_argument("--nodes", required=True, type=_node_range, help="A:B[:STEP]")

    ev = sub.add_parser("evaluate", help="the figures of a saved plan whose parameter lending "
                                         "was edited by hand")
    ev.add_argument("--plan", required=True, metavar="FILE", help="a plan written by 'plan --out'")
    ev.add_argument("--out", metavar="FILE", help="write the plan with its new figures as YAML")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _load_plan(path):
    """``(plan, network, board)`` of a saved plan (one-line errors naming the file)."""
    from .plan import Plan
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise FpdeepError(path, "--plan", path, f"cannot read: {e.strerror}") from None
    try:
        plan = Plan.from_yaml(text)
    except FpdeepError:
        raise
    except Exception as e:                  # noqa: BLE001 -- any malformed plan, one line
        raise FpdeepError(path, "plan", type(e).__name__,
                          f"not a plan file: {' '.join(str(e).split())}") from None
    src = plan.network_source
    try:
        net = load_network(src[4:] if src.startswith("zoo:") else src)
    except FpdeepError as e:
        raise FpdeepError(path, "network_source", src,
                          f"cannot load the plan's network: {e.problem}") from None
    try:
        board = load_board(plan.board_source if os.path.exists(plan.board_source)
                           else plan.board)
    except FpdeepError as e:
        raise FpdeepError(path, "board", plan.board,
                          f"cannot load the plan's board: {e.problem}") from None
    return plan, net, board


def _atomic_write(path, data: bytes):
    """Write the whole file or nothing."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FpdeepError(path, "--out", path, f"folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fpdeep-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load(args):
    net = load_network(args.net)
    board = load_board(args.board).with_overrides(link_gbps=args.link_gbps, clock_mhz=args.clock_mhz)
    return net, board


def _plot_check(path):
    if not path.endswith(".png"):
        raise FpdeepError("command line", "--plot", path, "must name a .png file")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise FpdeepError("command line", "--plot", path,
                          "needs matplotlib: pip install 'fpdeep[plot]'") from None


def sweep(net, board, node_counts, **kw):
    """Map ``net`` for every N in ``node_counts``; returns the ``sweep --json`` object."""
    points = []
    for n in node_counts:
        try:
            plan = map_network(net, board, n, **kw)
        except FpdeepError as e:
            if "does not fit" not in e.problem:
                raise
            points.append({"nodes": n, "fits": False, "reason": e.problem,
                           "images_per_second": 0.0, "compute_images_per_second": 0.0,
                           "throughput_gops_per_fpga": 0.0, "compute_gops_per_fpga": 0.0,
                           "max_link_gbps": 0.0, "dsp_utilization": 0.0, "idle_fraction": 0.0,
                           "epoch_hours": None, "bottleneck": "none"})
            continue
        s = plan.summary
        points.append({
            "nodes": n,
            "fits": True,
            "images_per_second": s["images_per_second"],
            "compute_images_per_second": s["compute_images_per_second"],
            "throughput_gops_per_fpga": s["throughput_gops_per_fpga"],
            "compute_gops_per_fpga": round(s["throughput_gops_per_fpga"] * s["compute_images_per_second"]
                                           / s["images_per_second"], 3),
            "max_link_gbps": s["max_link_gbps"],
            "dsp_utilization": s["dsp_utilization"],
            "idle_fraction": s["idle_fraction"],
            "epoch_hours": s["epoch_hours"],
            "bottleneck": s["bottleneck"],
        })
    limit = None
    for p in points:
        if not p["fits"]:
            if limit is None:
                continue            # too few nodes to hold the network: scaling starts later
            break
        if p["images_per_second"] >= 0.95 * p["compute_images_per_second"]:
            limit = p["nodes"]
        else:
            break
    return {"network": net.name, "board": board.name, "link_gbps": board.link_gbps,
            "clock_mhz": board.clock_mhz, "topology": kw.get("topology", "chain"),
            "points": points, "linear_limit_nodes": limit}


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "check":
        net = load_network(args.net)
        print(json.dumps(check_json(net)) if args.json else check_report(net))
        return 0

    if args.command == "evaluate":
        plan, net, board = _load_plan(args.plan)
        over = []
        new = evaluate_plan(plan, net, board, where=args.plan, over_budget=over)
        for k, need in over:
            print(f"warning: {args.plan}: node {k} needs {need:.1f} BRAM36 with this lending, "
                  f"above its budget of {new.available['bram36'] * new.budgets['bram']:.1f}",
                  file=sys.stderr)
        if args.out:
            _atomic_write(args.out, new.to_yaml().encode())
        print(json.dumps(plan_json(new)) if args.json else plan_table(new))
        return 0

    if args.plot:
        _plot_check(args.plot)
    net, board = _load(args)
    kw = dict(topology=args.topology, batch=args.batch, ocp_threshold=args.ocp_threshold,
              max_row_lanes=args.max_row_lanes, split=args.split)
    if args.command == "plan":
        plan = map_network(net, board, args.nodes, **kw)
        # everything is computed before anything is written
        outputs = []
        if args.out:
            outputs.append((args.out, plan.to_yaml().encode()))
        if args.plot:
            from .plot import plan_figure
            outputs.append((args.plot, plan_figure(plan, net, board, **kw)))
        for path, data in outputs:
            _atomic_write(path, data)
        print(json.dumps(plan_json(plan)) if args.json else plan_table(plan))
        return 0

    result = sweep(net, board, args.nodes, **kw)
    outputs = []
    if args.plot:
        from .plot import sweep_figure
        outputs.append((args.plot, sweep_figure(result, net, board, args.nodes, **kw)))
    for path, data in outputs:
        _atomic_write(path, data)
    print(json.dumps(result) if args.json else sweep_table(result))
    return 0


def run(argv=None):
    try:
        code = main(argv)
    except FpdeepError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:                 # e.g. piped into `head`
        sys.stderr.close()
        code = 0
    sys.exit(code)
