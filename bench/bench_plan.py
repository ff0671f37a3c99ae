"""Time to plan: VGG-19 onto 100 FPGAs (aim: well under a second), and a few other cases.

Prints the median of several runs of ``map_network`` (the whole flow: partition, engines,
storage, balancing, traffic, performance) and the resulting figures, so that a slow-down or a
change of result shows at once. Wall-clock figures: run on a quiet machine.

    python bench/bench_plan.py [--repeat N]
"""

import argparse
import statistics
import time

from fpdeep_map import partition
from fpdeep_map.board import load_board
from fpdeep_map.mapper import map_network
from fpdeep_map.network import load_network

CASES = [("vgg19", "vc709", 100, 250.0), ("vgg16", "vc709", 15, None),
         ("alexnet", "vc709", 15, None), ("vgg16", "alveo-u280", 8, None),
         ("digits", "tiny-test", 3, None)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"{'network':<8} {'board':<11} {'nodes':>5} {'median s':>9} {'min s':>7} "
          f"{'images/s':>10} {'GOPS/FPGA':>10} {'idle':>7} {'bottleneck':>10}")
    for net_name, board_name, nodes, link in CASES:
        net = load_network(net_name)
        board = load_board(board_name).with_overrides(link_gbps=link)
        times = []
        for _ in range(args.repeat):
            partition.clear_caches()          # every run cold: no shapes remembered
            t0 = time.perf_counter()
            plan = map_network(net, board, nodes)
            times.append(time.perf_counter() - t0)
        s = plan.summary
        print(f"{net_name:<8} {board_name:<11} {nodes:>5} {statistics.median(times):>9.3f} "
              f"{min(times):>7.3f} {s['images_per_second']:>10.1f} "
              f"{s['throughput_gops_per_fpga']:>10.1f} {s['idle_fraction']:>7.2%} "
              f"{s['bottleneck']:>10}")


if __name__ == "__main__":
    main()
