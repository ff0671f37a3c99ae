"""Benchmark: a CE array in Amaranth's simulator, and elaboration of a large array to Verilog.

Prints

1. simulated cycles per second of ``CEArray.fp(k, s, p)`` (default 3x3, S=4, P=4) streaming one
   window + weight set per cycle (new random operands every cycle, output never stalled), and
2. seconds to elaborate ``CEArray.fp(k=3, s=16, p=16)`` (3x3 x 16 x 16 = 2304 multipliers) to
   Verilog with ``amaranth.back.verilog.convert``.

Usage::

    python bench/bench_ce_array.py [--cycles 2000] [--k 3 --s 4 --p 4] [--big-s 16 --big-p 16]
                                   [--skip-verilog]
"""

from __future__ import annotations

import argparse
import random
import time

from amaranth.back import verilog
from amaranth.sim import Simulator

from fpdeep_hw.compute.conv_engine import CEArray


def simulate(k, s, p, cycles, seed=0):
    """Run ``cycles`` cycles of a streaming CE array; return (seconds, outputs received)."""
    dut = CEArray.fp(k=k, s=s, p=p)
    rng = random.Random(seed)
    lo, hi = -(1 << 15), (1 << 15) - 1
    wins = [[[[rng.randint(lo, hi) for _ in range(k)] for _ in range(k)] for _ in range(s)]
            for _ in range(16)]
    wts = [{"weights": [[[[rng.randint(lo, hi) for _ in range(k)] for _ in range(k)]
                         for _ in range(s)] for _ in range(p)], "last": 1} for _ in range(16)]
    # convert the payloads to constants once: converting nested lists in ``ctx.set`` every cycle
    # would cost more than simulating the design
    wins = [dut.win.payload.shape().const(w) for w in wins]
    wts = [dut.wt.payload.shape().const(w) for w in wts]
    received = []

    async def drive(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.win.valid, 1)
        ctx.set(dut.wt.valid, 1)
        for n in range(cycles):
            ctx.set(dut.win.payload, wins[n % 16])
            ctx.set(dut.wt.payload, wts[n % 16])
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            if valid:
                received.append(n)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    t0 = time.perf_counter()
    sim.run()
    return time.perf_counter() - t0, len(received)


def elaborate(k, s, p):
    """Seconds to convert ``CEArray.fp(k, s, p)`` to Verilog; returns (seconds, characters)."""
    t0 = time.perf_counter()
    text = verilog.convert(CEArray.fp(k=k, s=s, p=p), name="ce_array", emit_src=False)
    return time.perf_counter() - t0, len(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=2000)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--s", type=int, default=4)
    ap.add_argument("--p", type=int, default=4)
    ap.add_argument("--big-s", type=int, default=16)
    ap.add_argument("--big-p", type=int, default=16)
    ap.add_argument("--skip-verilog", action="store_true")
    args = ap.parse_args(argv)

    secs, n_out = simulate(args.k, args.s, args.p, args.cycles)
    macs = args.k * args.k * args.s * args.p
    print(f"simulation: CEArray.fp k={args.k} S={args.s} P={args.p} ({macs} multipliers): "
          f"{args.cycles} cycles in {secs:.2f} s = {args.cycles / secs:.0f} cycles/s "
          f"({n_out} output words)")
    if not args.skip_verilog:
        secs, chars = elaborate(3, args.big_s, args.big_p)
        print(f"elaboration: CEArray.fp k=3 S={args.big_s} P={args.big_p} "
              f"({9 * args.big_s * args.big_p} multipliers) to Verilog in {secs:.1f} s "
              f"({chars / 1e6:.1f} MB of Verilog)")


if __name__ == "__main__":
    main()
