"""The layer-granular baseline: whole layers per FPGA, the best possible contiguous split.

This is what pipeline partitioners such as PipeDream produce (one stage = a run of whole
layers). Its best case is computed generously: every node's DSPs work on its layers with no
engine-shape rounding at all, so the only loss is the imbalance of whole layers. The split that
minimises the slowest stage is found exactly by dynamic programming (the linear partition
problem) over the compute layers' FP + EB + PG MACs.
"""

from __future__ import annotations


def layer_granular(works, nodes: int, dsp_per_node: int) -> dict:
    """Best contiguous split of ``works`` into at most ``nodes`` stages.

    Returns ``{"cycles_per_image", "idle_fraction", "stages"}`` where ``stages`` lists the layer
    names of every non-empty stage.
    """
    macs = [w.total_macs for w in works]
    n = len(macs)
    prefix = [0]
    for m in macs:
        prefix.append(prefix[-1] + m)
    k_max = min(nodes, n)
    inf = float("inf")
    # best[k][i]: the smallest slowest-stage work splitting the first i layers into k stages
    best = [[inf] * (n + 1) for _ in range(k_max + 1)]
    cut = [[0] * (n + 1) for _ in range(k_max + 1)]
    best[0][0] = 0
    for k in range(1, k_max + 1):
        for i in range(1, n + 1):
            for j in range(k - 1, i):
                v = max(best[k - 1][j], prefix[i] - prefix[j])
                if v < best[k][i]:
                    best[k][i], cut[k][i] = v, j
    k = min(range(1, k_max + 1), key=lambda kk: (best[kk][n], kk))
    stages, i = [], n
    while k > 0:
        j = cut[k][i]
        stages.append([w.name for w in works[j:i]])
        i, k = j, k - 1
    stages.reverse()
    slowest = best[len(stages)][n]
    period = slowest / dsp_per_node
    total = prefix[n]
    return {"cycles_per_image": period,
            "idle_fraction": 1 - total / (nodes * dsp_per_node * period),
            "stages": stages}
