"""Convergence of fixed-point training: the golden model against float64 SGD on 8x8 digits.

    python bench/convergence.py [--epochs 10] [--batch 16] [--lr 0.125] [--seeds 0 1 2]
                                [--out docs/convergence.md] [--plot build/convergence.png]

Trains the zoo network ``digits`` three ways from the same initial weights, on the same images in
the same order, with the same mini-batch size and learning rate:

* ``golden``: :class:`sim.golden.train.GoldenTrainer` -- the hardware's arithmetic (16-bit
  fixed point, ``NumericsConfig()`` defaults) and schedule (weight-version lags ``D_l`` taken
  from the real one-node plan ``map_network(digits, sim-node, 1, max_row_lanes=1)``);
* ``golden, D=0``: the same arithmetic with all lags 0 (plain mini-batch SGD schedule), to
  separate the effect of the numerics from that of the slightly-unaligned update;
* ``float``: :class:`sim.reference.FloatTrainer`, float64 mini-batch SGD (independent code).

Prints per-epoch train loss and test accuracy, writes the Markdown report and, when matplotlib
is installed, the plot. ``run()`` is what ``tests/sim/test_convergence.py`` calls.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fpdeep_map.board import load_board  # noqa: E402
from fpdeep_map.mapper import map_network  # noqa: E402
from fpdeep_map.network import load_network  # noqa: E402
from fpdeep_map.numerics import NumericsConfig  # noqa: E402
from sim.data import digits  # noqa: E402
from sim.golden import layers as L  # noqa: E402
from sim.golden.train import GoldenTrainer, init_weights, lags_from_plan  # noqa: E402
from sim.reference import FloatTrainer  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
KINDS = ("float", "golden", "golden_d0")
LABELS = {"float": "float64 SGD", "golden": "golden (plan lags)", "golden_d0": "golden, D=0"}


def plan_lags(net, batch):
    """Lags of the hardware schedule: the one-node ``sim-node`` plan with one row lane."""
    plan = map_network(net, load_board("sim-node"), 1, max_row_lanes=1, batch=batch)
    return lags_from_plan(plan)


def run(epochs=10, batch=16, lr=0.125, seed=0, data_seed=0, numerics=None, with_d0=True,
        log=None):
    """Train ``digits`` for ``epochs`` epochs three ways; returns a dict of per-epoch curves.

    Epoch ``e`` visits the training images in the order ``default_rng((seed, e))
    .permutation``; all trainers see the same images in the same order. The learning rate is
    rounded to the hardware's 16-bit constant and the float trainer uses that same value.
    Entry 0 of every curve is before training (accuracy of the initial weights, loss NaN).
    """
    numerics = numerics or NumericsConfig()
    net = load_network("digits")
    tx, ty, vx, vy = digits(seed=data_seed)
    lags = plan_lags(net, batch)
    master = init_weights(net, seed, numerics)
    lr_q = L.lr_to_q(lr)
    lr_eff = lr_q / 2.0 ** L.LR_FRAC
    trainers = {
        "golden": GoldenTrainer(net, numerics, batch, lr_eff, lags, master, record=False),
        "float": FloatTrainer(net, {k: v / 2.0 ** numerics.master.frac for k, v in
                                    master.items()}, batch, lr_eff),
    }
    if with_d0:
        trainers["golden_d0"] = GoldenTrainer(net, numerics, batch, lr_eff, None, master,
                                              record=False)
    kinds = [k for k in KINDS if k in trainers]

    def acc(k):
        t = trainers[k]
        return float(np.mean([t.predict(x) == y for x, y in zip(vx, vy)]))

    out = {"lags": lags, "lr": lr_eff, "lr_q": lr_q, "batch": batch, "seed": seed,
           "train_images": len(ty), "test_images": len(vy), "seconds": {k: 0.0 for k in kinds},
           "loss": {k: [float("nan")] for k in kinds}, "acc": {k: [acc(k)] for k in kinds}}
    for e in range(epochs):
        order = np.random.default_rng((seed, e)).permutation(len(ty))
        for k in kinds:
            t = trainers[k]
            t0 = time.perf_counter()
            if k == "float":
                losses = [t.step(tx[i], ty[i]) for i in order]
            else:
                n0 = len(t.losses)
                for i in order:
                    t.step(tx[i], ty[i])
                losses = t.losses[n0:]
            out["seconds"][k] += time.perf_counter() - t0
            out["loss"][k].append(float(np.mean(losses)))
            out["acc"][k].append(acc(k))
        if log:
            log(f"seed {seed} epoch {e + 1}: " + "  ".join(
                f"{k} loss {out['loss'][k][-1]:.4f} acc {100 * out['acc'][k][-1]:.1f}%"
                for k in kinds))
    out["overflow"] = {k: dict(trainers[k].overflow) for k in kinds if k != "float"}
    out["overflow_total"] = {k: trainers[k].overflow_total() for k in kinds if k != "float"}
    g = trainers["golden"]
    out["avg_lost"] = {n: g.avg_lost[n] / max(1, g.avg_count[n]) for n in g.avg_count}
    return out


def _plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    r0 = results[0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"float": "-", "golden": "--", "golden_d0": ":"}
    for j, r in enumerate(results):
        color = f"C{j}"
        for k in r["acc"]:
            ep = np.arange(len(r["acc"][k]))
            lab = f"{LABELS[k]}, seed {r['seed']}"
            ax1.plot(ep[1:], r["loss"][k][1:], styles[k], color=color, label=lab)
            ax2.plot(ep, 100 * np.array(r["acc"][k]), styles[k], color=color, label=lab)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss (cross-entropy, mean over the epoch)")
    ax1.set_yscale("log")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test accuracy (%)")
    ax2.set_ylim(80, 100)
    ax2.legend(fontsize=6)
    fig.suptitle(f"digits, batch {r0['batch']}, lr {r0['lr']}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _markdown(results, args, wall, plotted):
    r0 = results[0]
    lines = [
        "# Convergence: fixed-point training (golden model) against float64 SGD",
        "",
        "Generated by `python bench/convergence.py "
        f"--epochs {args.epochs} --batch {args.batch} --lr {args.lr} "
        f"--seeds {' '.join(map(str, args.seeds))}` ({wall:.0f} s on this machine, a 2-core "
        "machine shared with other jobs: the times vary by 2-3x between runs; the accuracies "
        "and losses are deterministic). Every number below is computed by that script.",
        "",
        "Setup: zoo network `digits` (conv 3x3x8 - ReLU - conv 3x3x16 - ReLU - max-pool 2x2 - "
        "FC 10 - softmax cross-entropy, no biases) on scikit-learn's 8x8 digits "
        f"({r0['train_images']} training / {r0['test_images']} test images, fixed split, pixels "
        f"scaled to [0, 1]); mini-batch {r0['batch']}, learning rate {r0['lr']} "
        f"(hardware constant `lr_q = {r0['lr_q']}`, the float run uses the same value); He-normal "
        "initial weights quantized to the master format, the same for all runs; the same image "
        "order per epoch for all runs.",
        "",
        "* **golden**: `sim.golden.train.GoldenTrainer` -- the hardware's arithmetic "
        "(`NumericsConfig()` defaults: activations Q8.8, weights/errors/gradients Q4.12, master "
        "Q4.20, integer softmax) and schedule: FP of image i at layer l runs on weight version "
        "max(0, (i - D_l) // B) with the lags of the real plan "
        f"(`map_network(digits, sim-node, 1, max_row_lanes=1)`): D = {r0['lags']};",
        "* **golden, D=0**: the same arithmetic with every lag 0 (plain SGD schedule);",
        "* **float**: `sim.reference.FloatTrainer`, float64 mini-batch SGD, independent code.",
        "",
    ]
    for r in results:
        lines += [f"## Seed {r['seed']}", "",
                  "| epoch | " + " | ".join(f"{LABELS[k]} loss" for k in r["acc"]) + " | "
                  + " | ".join(f"{LABELS[k]} test acc" for k in r["acc"])
                  + " | golden - float |",
                  "|---:|" + "---:|" * (2 * len(r["acc"]) + 1)]
        for e in range(len(r["acc"]["float"])):
            loss = " | ".join("-" if e == 0 else f"{r['loss'][k][e]:.4f}" for k in r["acc"])
            acc = " | ".join(f"{100 * r['acc'][k][e]:.1f}%" for k in r["acc"])
            d = 100 * (r["acc"]["golden"][e] - r["acc"]["float"][e])
            lines.append(f"| {e} | {loss} | {acc} | {d:+.1f} |")
        secs = ", ".join(f"{LABELS[k]} {r['seconds'][k]:.1f} s "
                         f"({1e3 * r['seconds'][k] / max(1, r['train_images'] * (len(r['acc'][k]) - 1)):.2f}"
                         " ms/image)" for k in r["acc"])
        lines += ["", f"Training time: {secs}. Overflow counts of the fixed-point runs: "
                  f"{r['overflow_total']}.", ""]
    final = [(r["seed"], 100 * r["acc"]["golden"][-1], 100 * r["acc"]["float"][-1])
             for r in results]
    worst_final = max(abs(g - f) for _, g, f in final)
    worst_any = max(abs(100 * (a - b)) for r in results
                    for a, b in zip(r["acc"]["golden"][1:], r["acc"]["float"][1:]))
    lines += [
        "## Result",
        "",
        "| seed | golden final test acc | float final test acc | difference |",
        "|---:|---:|---:|---:|",
    ] + [f"| {s} | {g:.1f}% | {f:.1f}% | {g - f:+.1f} |" for s, g, f in final] + [
        "",
        f"After {args.epochs} epochs the fixed-point golden model is within "
        f"{worst_final:.1f} points of float64 SGD for every seed (largest difference over all "
        f"epochs and seeds: {worst_any:.1f} points; one test image is "
        f"{100 / r0['test_images']:.2f} points). The issue's criterion is 2 points.",
        "",
    ]
    lost = {n: max(r["avg_lost"][n] for r in results) for n in r0["avg_lost"]}
    lost_s = ", ".join(f"{n} {100 * v:.1f}%" for n, v in lost.items())
    d0 = [abs(100 * (a - b)) for r in results if "golden_d0" in r["acc"]
          for a, b in zip(r["acc"]["golden"][1:], r["acc"]["golden_d0"][1:])]
    d0_s = (f"the largest test-accuracy difference between `golden` and `golden, D=0` is "
            f"{max(d0):.1f} points" if d0 else "not measured")
    overflow = sum(v for r in results for v in r["overflow_total"].values())
    if plotted:
        lines += [f"Plot: `{os.path.relpath(args.plot, ROOT)}` (not committed; regenerate with "
                  "the command above).", ""]
    lines += [
        "## Why they agree, and where they differ",
        "",
        "* The forward pass and the gradients of the fixed-point model are the float values "
        "rounded once per layer and phase (see `docs/golden-model.md` for the tolerances), so "
        "the first images train almost identically; the curves then drift apart the way two "
        "float runs with slightly different rounding do (training is chaotic at the scale of "
        "single images), not systematically.",
        "* The master copy keeps 20 fractional bits: with lr = "
        f"{r0['lr']} the smallest weight step is `2**-12 * lr`, far below the Q4.12 LSB of the "
        "working weights, so small averaged gradients still move the weights.",
        "* The averaged gradient is rounded to Q4.12 before the update: an average below "
        "2**-13 in magnitude becomes 0. Measured share of averaged gradients rounded to 0 "
        f"although their sum was not 0 (worst seed, whole run): {lost_s}. Losing those does "
        "not cost accuracy here, so the default formats needed no change.",
        "* The lag (D_l images of the next mini-batch run FP on the previous weights) is a "
        f"small staleness for a mini-batch of {r0['batch']}: {d0_s}, of the order of the "
        "run-to-run noise.",
        f"* Saturations in all fixed-point runs together: {overflow} (overflow counts above).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.125)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "convergence.md"))
    ap.add_argument("--plot", default=os.path.join(ROOT, "build", "convergence.png"))
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    t0 = time.time()
    results = [run(args.epochs, args.batch, args.lr, s, args.data_seed, log=print)
               for s in args.seeds]
    wall = time.time() - t0
    for r in results:
        print(f"seed {r['seed']}: final test accuracy golden {100 * r['acc']['golden'][-1]:.1f}% "
              f"float {100 * r['acc']['float'][-1]:.1f}%")
    print(f"{wall:.1f} s")
    if not args.no_write:
        plotted = _plot(results, args.plot)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(_markdown(results, args, wall, plotted))
        print(f"wrote {args.out}" + (f" and {args.plot}" if plotted else ""))


if __name__ == "__main__":
    main()
