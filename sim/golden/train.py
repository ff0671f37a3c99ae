"""Golden model of training a whole network: the arithmetic of :mod:`sim.golden.layers` run
image by image with the hardware's weight-version schedule (``docs/training-spec.md``).

The RTL counterpart is the node top of issue 4 (``fpdeep_hw/node/``), built from a plan; the
comparison harness is ``sim/train.py``. Tests: ``tests/sim/test_train_golden.py``.

Schedule
--------
Images are processed in index order ``i = 0, 1, ...`` (across epochs too: the index is global).
Layer ``l`` with lag ``D_l`` runs FP of image ``i`` on weight version ``max(0, (i - D_l) // B)``
and EB/PG of image ``i`` on version ``i // B``; after the last image of mini-batch ``M`` (index
``(M+1)B - 1``) every layer's averaged gradient updates its master copy, producing version
``M + 1``. Because the golden model finishes image ``i`` (FP and BP) before it starts image
``i + 1``, it keeps the older versions FP still needs; the result is the same as the hardware's
overlapped schedule, whose gates enforce exactly this rule.

Members
-------
GoldenTrainer, init_weights, lags_from_plan, splits_from_plan

Split layers
------------
With ``plan=`` the trainer follows the plan's splits (``docs/training-spec.md``, "Split
layers"): FP of an ICP layer is the partial-sum chain (:func:`sim.golden.layers.icp_conv_fp`),
EB of an OCP layer the backward partial-error chain (:func:`sim.golden.layers.ocp_conv_eb`);
every other phase of a split layer, and every whole layer, is unchanged. The records get
``fp_split`` / ``eb_split`` (``{layer: info}`` with the per-node partial sums and counts).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from fpdeep_map.numerics import NumericsConfig
from sim import fixed
from sim.golden import layers as L

__all__ = ["GoldenTrainer", "init_weights", "lags_from_plan", "splits_from_plan",
           "weight_shape"]


def weight_shape(layer) -> tuple:
    """``[O, C/groups, K, K]`` for a conv layer, ``[O, F]`` for an fc layer."""
    if layer.kind == "conv":
        return (layer.out_channels, layer.in_channels // layer.groups, layer.kernel,
                layer.kernel)
    if layer.kind == "fc":
        return (layer.out_channels, layer.in_channels)
    raise ValueError(f"layer {layer.name!r} of kind {layer.kind!r} has no weights")


def init_weights(net, seed, numerics=None):
    """He-normal initial weights, quantized to the master format: ``{layer: int64 array}``.

    ``w0 ~ N(0, 2 / fan_in)`` (``fan_in = C/groups*K*K`` or ``F``), drawn per compute layer in
    network order from ``numpy.random.default_rng(seed)``; ``master = quantize(w0, master)``.
    Deterministic by ``seed``. The float value of the init is ``master / 2**master.frac``.
    """
    numerics = numerics or NumericsConfig()
    rng = np.random.default_rng(seed)
    out = {}
    for l in net.compute_layers():
        shape = weight_shape(l)
        fan_in = int(np.prod(shape[1:]))
        w0 = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
        out[l.name], _ = fixed.quantize(w0, numerics.master)
    return out


def lags_from_plan(plan) -> dict:
    """``{compute layer: D_l}`` with ``D_l = floor(act_ram_images)`` of the layer's segment.

    A layer split over several segments (ICP/OCP over nodes) takes the *minimum* over its
    segments: FP may only run ahead of the update by as many images as every node holding a slice
    of the layer can store.
    """
    lags = {}
    for node in plan.node_plans:
        for seg in node.segments:
            d = int(math.floor(seg.act_ram_images))
            lags[seg.layer] = min(d, lags.get(seg.layer, d))
    return lags


def splits_from_plan(plan) -> dict:
    """``{compute layer: (split, [(lo, hi), ...])}`` for the layers the plan splits over several
    nodes: ``split`` is ``"icp"`` (ranges: input channels, FC: features) or ``"ocp"`` (output
    channels), ranges in node order. Whole layers are absent."""
    segs = {}
    for node in sorted(plan.node_plans, key=lambda n: n.node):
        for seg in node.segments:
            segs.setdefault(seg.layer, []).append(seg)
    out = {}
    for layer, ss in segs.items():
        kinds = {s.split for s in ss}
        if kinds == {"whole"}:
            continue
        if len(kinds) != 1 or len(ss) < 2:
            raise ValueError(f"layer {layer!r}: segments {sorted(kinds)} do not form one split")
        kind = kinds.pop()
        if kind not in ("icp", "ocp"):
            raise ValueError(f"layer {layer!r}: unknown split {kind!r}")
        out[layer] = (kind, [tuple(s.channels) for s in ss])
    return out


class GoldenTrainer:
    """Fixed-point training of ``net`` with the hardware's arithmetic and schedule.

    Parameters
    ----------
    net : fpdeep_map.network.Network
    numerics : NumericsConfig or None
        Formats (default ``NumericsConfig()``).
    batch : int
        Mini-batch size ``B``.
    lr : float
        Learning rate; the hardware constant is ``lr_q = lr_to_q(lr)`` (16 fractional bits).
    lags : dict or None
        ``{compute layer: D_l}`` (see :func:`lags_from_plan`); ``None``: all 0.
    init_master : dict
        ``{compute layer: int array}`` initial master weights (see :func:`init_weights`).
    record : bool
        Keep everything the RTL comparison needs (default). ``False`` keeps only statistics
        (for long runs).
    plan : fpdeep_map.plan.Plan or None
        Follow the plan's split layers (:func:`splits_from_plan`); ``None``: every layer whole.

    Members
    -------
    images_seen : int
        Index of the next image.
    lr_q : int
    lags : dict
    versions : dict
        ``{layer: [(master, working), ...]}``: version ``v`` is entry ``v`` (with ``record=False``
        only the versions still needed are kept; older entries are ``None``).
    avg_grads : dict
        ``{layer: [average gradient of mini-batch M, ...]}`` (``record=True``).
    images : list
        One dict per image (``record=True``): ``index``, ``label``, ``input`` (quantized image),
        ``act`` (``{layer: output}`` for every layer: conv/fc ``y`` before ReLU, relu ``r``,
        maxpool ``p``), ``act_in`` (``{compute layer: input activations}``), ``mask``
        (``{relu layer: mask}``), ``argmax`` (``{maxpool layer: argmax}``), ``scores`` (``z``),
        ``loss_error``, ``err`` (``{layer: error of its output}``: the loss error for the last
        fc, ...), ``err_in`` (``{compute layer: EB output}``, absent for the first), ``grad``
        (``{compute layer: per-image gradient}``), ``fp_version`` and ``bp_version``
        (``{compute layer: v}``); with a plan, ``fp_split`` / ``eb_split`` (``{layer: info}`` of
        :func:`sim.golden.layers.icp_conv_fp` / :func:`sim.golden.layers.ocp_conv_eb`).
    splits : dict
        :func:`splits_from_plan` of the plan (``{}`` without one).
    overflow : collections.Counter
        ``{(layer, what): count}``; ``what`` in ``input``, ``fp_acc``, ``fp_out``, ``loss``,
        ``maxpool_eb``, ``eb``, ``pg``, ``grad_acc``, ``grad_avg``, ``update``. For a split
        phase, ``fp_acc`` / ``eb`` add the accumulator overflows of all nodes and ``fp_out`` /
        ``eb`` all requantisation and partial-sum chain clamps of the span.
    avg_lost, avg_count : collections.Counter
        ``{layer: n}``: averaged gradients rounded to 0 although the sum was not 0, and all
        averaged gradients (a measure of the gradient resolution lost to the format).
    losses, correct : list
        Per image: float cross-entropy (or squared error) of the dequantized scores, and whether
        the arg-max of the scores was the label.
    """

    def __init__(self, net, numerics, batch, lr, lags, init_master, record=True, plan=None):
        self.net = net
        self.splits = splits_from_plan(plan) if plan is not None else {}
        self.numerics = numerics or NumericsConfig()
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive integer, not {batch!r}")
        self.batch = batch
        self.lr_q = L.lr_to_q(lr)
        self.compute = net.compute_layers()
        names = [l.name for l in self.compute]
        lags = dict(lags) if lags else {n: 0 for n in names}
        missing = [n for n in names if n not in lags]
        if missing:
            raise ValueError(f"no lag for layer(s) {', '.join(missing)}")
        if any(int(lags[n]) < 0 for n in names):
            raise ValueError("lags must be non-negative")
        self.lags = {n: int(lags[n]) for n in names}
        self.loss_kind = next(l.loss for l in net.layers if l.kind == "loss")
        self.record = record
        self.versions = {}
        for l in self.compute:
            m = np.asarray(init_master[l.name], dtype=np.int64)
            if m.shape != weight_shape(l):
                raise ValueError(f"initial weights of {l.name!r} have shape {m.shape}, "
                                 f"expected {weight_shape(l)}")
            w, _ = L.working_weight(m, self.numerics)
            self.versions[l.name] = [(m.copy(), w)]
        self.overflow = Counter()
        self.avg_lost, self.avg_count = Counter(), Counter()
        self._gacc = {l.name: np.zeros(weight_shape(l), dtype=np.int64) for l in self.compute}
        self.avg_grads = {l.name: [] for l in self.compute}
        self.images, self.losses, self.correct = [], [], []
        self.images_seen = 0

    # ---- versions ------------------------------------------------------------------------
    def fp_version(self, layer, i):
        """Weight version FP of image ``i`` uses at ``layer``: ``max(0, (i - D_l) // B)``."""
        return max(0, (i - self.lags[layer]) // self.batch)

    def bp_version(self, i):
        """Weight version EB and PG of image ``i`` use: ``i // B``."""
        return i // self.batch

    @property
    def version(self):
        """Number of updates done so far."""
        return self.images_seen // self.batch

    def working(self, layer, v=None):
        """Working weights of ``layer`` at version ``v`` (default: the latest)."""
        vs = self.versions[layer]
        return vs[-1 if v is None else v][1]

    def master(self, layer, v=None):
        vs = self.versions[layer]
        return vs[-1 if v is None else v][0]

    # ---- forward -------------------------------------------------------------------------
    def _forward(self, x, weights_of, rec=None, count=True):
        n = self.numerics
        a, ov = L.quantize_input(np.asarray(x, dtype=np.float64).reshape(self.net.input_shape), n)
        if count:
            self.overflow[("input", "input")] += ov
        if rec is not None:
            rec["input"] = a
        tape = []
        for l in self.net.layers:
            if l.kind in ("conv", "fc"):
                w = weights_of(l.name)
                split = self.splits.get(l.name)
                if split is not None and split[0] == "icp":
                    if l.kind == "conv":
                        if l.groups != 1:
                            raise ValueError(f"layer {l.name!r}: ICP of a grouped convolution")
                        y, info = L.icp_conv_fp(a, w, l.stride, l.padding, split[1], n)
                    else:
                        y, info = L.icp_fc_fp(a.reshape(-1), w, split[1], n)
                    o1 = sum(info["acc_overflow"])
                    o2 = sum(info["partial_overflow"]) + sum(info["add_overflow"])
                    if rec is not None:
                        rec.setdefault("fp_split", {})[l.name] = info
                elif l.kind == "conv":
                    acc, o1 = L.conv_fp(a, w, l.stride, l.padding, l.groups, n)
                    y, o2 = L.fp_output(acc, n)
                else:
                    acc, o1 = L.fc_fp(a.reshape(-1), w, n)
                    y, o2 = L.fp_output(acc, n)
                tape.append((l, a))
                if rec is not None:
                    rec["act_in"][l.name] = a
                a = y
                if count:
                    self.overflow[(l.name, "fp_acc")] += o1
                    self.overflow[(l.name, "fp_out")] += o2
            elif l.kind == "relu":
                a, mask = L.relu(a)
                tape.append((l, mask))
                if rec is not None:
                    rec["mask"][l.name] = mask
            elif l.kind == "maxpool":
                shape = a.shape
                a, am = L.maxpool(a, l.kernel, l.stride)
                tape.append((l, (am, shape)))
                if rec is not None:
                    rec["argmax"][l.name] = am
            elif l.kind == "loss":
                continue
            else:
                raise ValueError(f"layer kind {l.kind!r} is not supported by the golden model")
            if rec is not None:
                rec["act"][l.name] = a
        return a.reshape(-1), tape

    def predict(self, x):
        """Class predicted for image ``x`` with the latest working weights (no counting)."""
        z, _ = self._forward(x, lambda name: self.working(name), count=False)
        return int(np.argmax(z))

    def accuracy(self, xs, ys):
        return float(np.mean([self.predict(x) == int(y) for x, y in zip(xs, ys)]))

    # ---- one image -----------------------------------------------------------------------
    def step(self, x, label):
        """Train on one image (index ``images_seen``); update at the end of its mini-batch.

        Returns the image's record (``record=True``) or ``None``.
        """
        n = self.numerics
        i = self.images_seen
        bpv = self.bp_version(i)
        fpv = {l.name: self.fp_version(l.name, i) for l in self.compute}
        rec = None
        if self.record:
            rec = {"index": i, "label": int(label), "act": {}, "act_in": {}, "mask": {},
                   "argmax": {}, "err": {}, "err_in": {}, "grad": {}, "fp_version": fpv,
                   "bp_version": {l.name: bpv for l in self.compute}}
        z, tape = self._forward(x, lambda name: self.working(name, fpv[name]), rec)
        e, ov = L.loss_error(z, int(label), self.loss_kind, n)
        self.overflow[("loss", "loss")] += ov
        zf = z.astype(np.float64) / 2.0 ** n.activation.frac
        self.losses.append(_loss_value(zf, int(label), self.loss_kind))
        self.correct.append(bool(int(np.argmax(z)) == int(label)))
        if rec is not None:
            rec["scores"] = z
            rec["loss_error"] = e
        # backward
        for l, saved in reversed(tape):
            if rec is not None:
                rec["err"][l.name] = e
            if l.kind in ("conv", "fc"):
                a = saved
                w = self.working(l.name, bpv)
                if l.kind == "conv":
                    g, og = L.conv_pg(e, a, l.kernel, l.stride, l.padding, l.groups, n)
                else:
                    g, og = L.fc_pg(e, a.reshape(-1), n)
                self.overflow[(l.name, "pg")] += og
                self._gacc[l.name], oa = L.accumulate_gradient(self._gacc[l.name], g, n)
                self.overflow[(l.name, "grad_acc")] += oa
                if rec is not None:
                    rec["grad"][l.name] = g
                split = self.splits.get(l.name)
                if l.needs_error and split is not None and split[0] == "ocp":
                    if l.kind == "conv":
                        if l.groups != 1:
                            raise ValueError(f"layer {l.name!r}: OCP of a grouped convolution")
                        e, info = L.ocp_conv_eb(e, w, l.stride, l.padding, a.shape, split[1], n)
                    else:
                        e, info = L.ocp_fc_eb(e, w, split[1], n, in_shape=a.shape)
                    oe = (sum(info["acc_overflow"]) + sum(info["partial_overflow"])
                          + sum(info["add_overflow"]))
                    self.overflow[(l.name, "eb")] += oe
                    if rec is not None:
                        rec["err_in"][l.name] = e
                        rec.setdefault("eb_split", {})[l.name] = info
                elif l.needs_error:
                    if l.kind == "conv":
                        e, oe = L.conv_eb(e, w, l.stride, l.padding, l.groups, a.shape, n)
                    else:
                        e, oe = L.fc_eb(e, w, n, in_shape=a.shape)
                    self.overflow[(l.name, "eb")] += oe
                    if rec is not None:
                        rec["err_in"][l.name] = e
                else:
                    e = None
            elif l.kind == "relu":
                e = L.relu_backward(e.reshape(saved.shape), saved)
            elif l.kind == "maxpool":
                am, shape = saved
                e, om = L.maxpool_backward(e.reshape(am.shape), am, l.kernel, l.stride, shape, n)
                self.overflow[(l.name, "maxpool_eb")] += om
            if e is None:
                break
        if rec is not None:
            self.images.append(rec)
        self.images_seen += 1
        if self.images_seen % self.batch == 0:
            self._update()
        return rec

    def _update(self):
        n = self.numerics
        for l in self.compute:
            avg, o1 = L.average_gradient(self._gacc[l.name], self.batch, n)
            m, _ = self.versions[l.name][-1]
            new, w, o2 = L.update(m, avg, self.lr_q, n)
            self.overflow[(l.name, "grad_avg")] += o1
            self.avg_lost[l.name] += int(np.count_nonzero((avg == 0) & (self._gacc[l.name] != 0)))
            self.avg_count[l.name] += avg.size
            self.overflow[(l.name, "update")] += o2
            self._gacc[l.name] = np.zeros_like(self._gacc[l.name])
            self.versions[l.name].append((new, w))
            if self.record:
                self.avg_grads[l.name].append(avg)
            else:
                # drop versions no FP can use any more: the next image's FP version is the oldest
                oldest = self.fp_version(l.name, self.images_seen)
                vs = self.versions[l.name]
                for v in range(oldest):
                    vs[v] = None

    def run(self, xs, labels):
        """Train on the images in order; returns the list of records (``record=True``)."""
        out = []
        for x, y in zip(xs, labels):
            out.append(self.step(x, y))
        return out

    def overflow_total(self, what=None):
        """Sum of the overflow counts (of one kind ``what`` if given)."""
        return sum(v for (_, k), v in self.overflow.items() if what is None or k == what)


def _loss_value(z, label, kind):
    if kind == "softmax_cross_entropy":
        m = z.max()
        return float(m + math.log(np.exp(z - m).sum()) - z[label])
    t = z.copy()
    t[label] -= 1.0
    return float(0.5 * (t * t).sum())
