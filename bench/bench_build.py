"""Benchmark of ``python -m fpdeep_hw.build``: seconds and peak memory per build, Yosys vs plan.

Each case runs the command in a child process (``resource.getrusage(RUSAGE_CHILDREN)`` gives
the peak resident memory of the largest child so far, so the cases run in separate
``bench_build.py --case`` processes):

- ``vgg16-node4``: the issue's command, ``--board vc709 --node 4`` (VGG-16 on 15 VC709: ICP
  slices of conv2_2 and conv3_1 with off-chip Act-RAMs, a lender of conv5_2 weight sets, a
  pass-through of conv5_1 / conv5_2 sets), built (aim: under 60 s and 4 GB). The child runs
  with an address-space limit of ``--mem-limit-gb`` (default 12) so that a runaway build fails
  instead of exhausting the machine; the per-stage seconds of its progress lines are kept
  (``stages``).
- ``vgg16-node4-yosys``: node 4 with ``--synth --synth-memory-only --synth-hierarchy --yosys
  yosys`` (a native Yosys on the node's RTLIL, the flow up to the DSP and memory mapping, the
  hierarchy kept): Yosys' DSP and block RAM against the plan and against the build's own
  estimate (``rtl_memory``), and its LUT RAM against the estimate's. Needs ``yosys`` on the
  PATH; about a quarter of an hour or more.
- ``tiny-small``: ``tiny`` on 1 VC709 mapped with a 4 % DSP budget (the sim-node engines,
  105 multipliers), built with ``--synth``: Yosys' DSP and BRAM counts against the plan.
- ``tiny``, ``digits``: the largest nodes that build today, ``tiny`` / ``digits`` on 1 VC709
  with the full budget (``max_row_lanes=1``), ``--all`` (the whole 1-node cluster).
- ``vgg16-all``: the whole default cluster, ``--board vc709 --all --jobs 2`` (15 nodes in two
  worker processes; the peak is the largest worker's). Refused today, before anything is
  built: node 14's fc6 / fc7 / fc8 weights, which the plan streams from off-chip memory, would
  be in block RAM (1,568 Mbit for fc6 alone).
- ``vgg16-0to13``: the nodes that build, ``--board vc709 --node 0:13 --jobs 2`` (every node
  but 14; nodes 8-13 hold their 512-lane windows in runs of lanes, ``fpdeep_hw.wide``).
- ``tiny-2nodes``: ``tiny`` on 2 VC709 with whole layers per node (``split="layers"``, 4 % DSP
  budget: node 0 ``conv1 conv2``, node 1 ``conv3 fc4``), ``--all --jobs 1``: both nodes with
  their chain links (framers in the node, Aurora black box and clock crossing in the top).

Usage::

    python bench/bench_build.py                 # every case, a table and bench/build.json
    python bench/bench_build.py --case tiny-small
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = ("vgg16-node4", "vgg16-node4-yosys", "tiny-small", "tiny", "digits", "tiny-2nodes", "vgg16-all",
         "vgg16-0to13")


def _plan_file(tmp, net, budget, nodes=1, **kw):
    from fpdeep_map.board import load_board
    from fpdeep_map.mapper import map_network
    from fpdeep_map.network import load_network
    if budget:
        kw["dsp_budget"] = budget
    plan = map_network(load_network(net), load_board("vc709"), nodes, batch=128,
                       max_row_lanes=1, **kw)
    f = Path(tmp) / f"{net}.yaml"
    f.write_text(plan.to_yaml())
    return f


def _limit(gb):
    def apply():
        limit = int(gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def run_case(case, mem_limit_gb=12.0):
    if case == "vgg16-node4-yosys" and shutil.which("yosys") is None:
        return {"case": case, "exit": None, "seconds": 0.0, "peak_mb": 0.0, "stdout": [],
                "stages": [], "error": ["skipped: no native yosys on the PATH"]}
    tmp = Path(tempfile.mkdtemp(prefix="bench_build_"))
    out = tmp / "out"
    if case == "vgg16-node4":
        args = ["--board", "vc709", "--node", "4"]
    elif case == "vgg16-node4-yosys":
        args = ["--board", "vc709", "--node", "4", "--synth", "--synth-memory-only",
                "--synth-hierarchy", "--yosys", "yosys"]
    elif case == "vgg16-all":
        args = ["--board", "vc709", "--all", "--jobs", "2"]
    elif case == "vgg16-0to13":
        args = ["--board", "vc709", "--node", "0:13", "--jobs", "2"]
    elif case == "tiny-2nodes":
        args = ["--plan", str(_plan_file(tmp, "tiny", 0.04, 2, split="layers")), "--all",
                "--jobs", "1"]
    elif case == "tiny-small":
        args = ["--plan", str(_plan_file(tmp, "tiny", 0.04)), "--node", "0", "--synth"]
    else:
        args = ["--plan", str(_plan_file(tmp, case, None)), "--all", "--jobs", "1"]
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fpdeep_hw.build", *args, "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT,
                          preexec_fn=_limit(mem_limit_gb) if mem_limit_gb else None)
    seconds = time.monotonic() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    res = {"case": case, "args": args, "exit": proc.returncode, "seconds": round(seconds, 1),
           "peak_mb": round(peak_mb, 1),
           "stdout": proc.stdout.strip().splitlines(),
           "error": [l for l in proc.stderr.splitlines() if l.startswith("error:")],
           "stages": [l.split("] ", 1)[1] for l in proc.stderr.splitlines()
                      if l.startswith("[") and " done (" in l]}
    if proc.returncode not in (0, 2):
        res["error"].append(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                            else f"exit {proc.returncode}")
    reports = sorted(out.glob("*/node*/report.json"), key=lambda f: int(f.parent.name[4:]))
    if len(reports) > 1:
        res["nodes"] = []
        for f in reports:
            r = json.loads(f.read_text())
            mem = r.get("rtl_memory", {})
            res["nodes"].append({"node": r["node"], "seconds": r.get("seconds"),
                                 "rtl_mbit": round(mem.get("bits", 0) / 2**20, 1),
                                 "rtl_bram36": mem.get("bram36"),
                                 "fits_in_bram": mem.get("fits_in_bram"),
                                 "plan_bram36": r["predicted"]["bram36"]})
    if reports:
        r = json.loads(reports[0].read_text())
        res["predicted"] = r["predicted"]
        res["mac_units"] = r["mac_units"]
        if "rtl_memory" in r:
            res["rtl_bram36"] = r["rtl_memory"]["bram36"]
            if r["predicted"]["bram36"]:
                res["rtl_bram36_vs_plan"] = round(r["rtl_memory"]["bram36"]
                                                  / r["predicted"]["bram36"], 3)
        if "yosys" in r:
            y = {k: v for k, v in r["yosys"].items() if k != "cells"}
            res["yosys"] = y
            p = r["predicted"]
            res["dsp_vs_plan"] = round(y["dsp"] / p["dsp"], 3) if p["dsp"] else None
            res["bram36_vs_plan"] = round(y["bram36"] / p["bram36"], 3) if p["bram36"] else None
            mem = r.get("rtl_memory") or {}
            if mem.get("bram36"):
                res["bram36_vs_estimate"] = round(y["bram36"] / mem["bram36"], 3)
            if mem.get("lutram_luts") and y.get("lutram_luts") is not None:
                res["lutram_luts_vs_estimate"] = round(y["lutram_luts"] / mem["lutram_luts"], 3)
        res["verilog_mb"] = round(sum(f.stat().st_size for f in reports[0].parent.glob("*.v"))
                                  / 1e6, 1)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=CASES)
    p.add_argument("--json", default=str(ROOT / "bench" / "build.json"))
    p.add_argument("--mem-limit-gb", type=float, default=12.0,
                   help="address-space limit of each build process (0: none)")
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.mem_limit_gb)))
        return 0
    results = []
    for case in CASES:
        proc = subprocess.run([sys.executable, __file__, "--case", case, "--mem-limit-gb",
                               str(args.mem_limit_gb)], capture_output=True, text=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        extra = ""
        if "yosys" in r:
            extra = (f"  Yosys DSP {r['yosys']['dsp']} / plan {r['predicted']['dsp']}, "
                     f"BRAM36 {r['yosys']['bram36']} / plan {r['predicted']['bram36']}")
        print(f"{case:17s} exit {r['exit']}  {r['seconds']:8.1f} s  {r['peak_mb']:8.1f} MB{extra}")
        for line in r["error"] + (r["stages"] if case == "vgg16-node4" else []):
            print("   ", line)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
