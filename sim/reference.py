"""Float64 reference of training: convolution forward and backward, loss, and an SGD trainer.

Independent of the fixed-point golden model (:mod:`sim.golden.layers`, :mod:`sim.golden.train`):
the convolutions here are written as sums over kernel offsets of strided slices (no im2col, no
integer code), the softmax uses ``numpy.exp``. The tests compare the golden model with these
functions (``tests/sim/test_golden_layers.py``) and the convergence experiment trains the same
network both ways (``bench/convergence.py``, ``docs/convergence.md``).

Layouts as in the golden model: maps ``[C,H,W]``, conv weights ``[O,C/groups,K,K]``, FC weights
``[O,F]`` over the C-major flattened input. No biases.

Members
-------
conv_forward, conv_input_grad, conv_weight_grad, relu_forward, maxpool_forward,
maxpool_backward, fc_forward, softmax, loss_grad, FloatTrainer
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["conv_forward", "conv_input_grad", "conv_weight_grad", "relu_forward",
           "maxpool_forward", "maxpool_backward", "fc_forward", "softmax", "loss_grad",
           "loss_value", "FloatTrainer"]


def _out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _group_slices(c, o, groups):
    cg, og = c // groups, o // groups
    return [(slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)) for g in range(groups)]


def conv_forward(a, w, stride=1, pad=0, groups=1):
    """``y[o,y,x] = sum_{c,ky,kx} a[c, y*s+ky-P, x*s+kx-P] * w[o,c,ky,kx]`` in float64."""
    a = np.asarray(a, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    c, h, wd = a.shape
    o, _, k, _ = w.shape
    ho, wo = _out(h, k, stride, pad), _out(wd, k, stride, pad)
    ap = np.zeros((c, h + 2 * pad, wd + 2 * pad))
    ap[:, pad:pad + h, pad:pad + wd] = a
    y = np.zeros((o, ho, wo))
    for cs, os_ in _group_slices(c, o, groups):
        for ky in range(k):
            for kx in range(k):
                patch = ap[cs, ky:ky + stride * (ho - 1) + 1:stride,
                           kx:kx + stride * (wo - 1) + 1:stride]      # [cg, ho, wo]
                y[os_] += np.einsum("chw,oc->ohw", patch, w[os_, :, ky, kx])
    return y


def conv_input_grad(e_out, w, stride, pad, groups, in_shape):
    """Gradient of ``sum(e_out * conv_forward(a, w))`` with respect to ``a``: shape ``in_shape``."""
    e = np.asarray(e_out, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    c, h, wd = in_shape
    o, _, k, _ = w.shape
    _, ho, wo = e.shape
    gp = np.zeros((c, h + 2 * pad, wd + 2 * pad))
    for cs, os_ in _group_slices(c, o, groups):
        for ky in range(k):
            for kx in range(k):
                gp[cs, ky:ky + stride * (ho - 1) + 1:stride,
                   kx:kx + stride * (wo - 1) + 1:stride] += np.einsum(
                       "ohw,oc->chw", e[os_], w[os_, :, ky, kx])
    return gp[:, pad:pad + h, pad:pad + wd]


def conv_weight_grad(e_out, a, k, stride, pad, groups):
    """Gradient of ``sum(e_out * conv_forward(a, w))`` with respect to ``w``."""
    e = np.asarray(e_out, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    c, h, wd = a.shape
    o, ho, wo = e.shape
    ap = np.zeros((c, h + 2 * pad, wd + 2 * pad))
    ap[:, pad:pad + h, pad:pad + wd] = a
    g = np.zeros((o, c // groups, k, k))
    for cs, os_ in _group_slices(c, o, groups):
        for ky in range(k):
            for kx in range(k):
                patch = ap[cs, ky:ky + stride * (ho - 1) + 1:stride,
                           kx:kx + stride * (wo - 1) + 1:stride]
                g[os_, :, ky, kx] = np.einsum("ohw,chw->oc", e[os_], patch)
    return g


def relu_forward(y):
    y = np.asarray(y, dtype=np.float64)
    return np.maximum(y, 0.0), y > 0


def maxpool_forward(r, k, s):
    """Caffe ceil-mode max-pool (last window clipped); returns ``(pooled, (iy, ix))`` where the
    index arrays give the winning pixel of each window (first maximum in raster order)."""
    r = np.asarray(r, dtype=np.float64)
    c, h, w = r.shape
    ho = max(-(-(h - k) // s), 0) + 1
    wo = max(-(-(w - k) // s), 0) + 1
    pooled = np.full((c, ho, wo), -np.inf)
    iy = np.zeros((c, ho, wo), dtype=np.int64)
    ix = np.zeros((c, ho, wo), dtype=np.int64)
    for ky in range(k):
        for kx in range(k):
            for oy in range(ho):
                y = oy * s + ky
                if y >= h:
                    continue
                xs = np.arange(wo) * s + kx
                ok = xs < w
                v = r[:, y, xs[ok]]
                better = v > pooled[:, oy, ok]
                sub = pooled[:, oy, ok]
                sub[better] = v[better]
                pooled[:, oy, ok] = sub
                t = iy[:, oy, ok]
                t[better] = y
                iy[:, oy, ok] = t
                t = ix[:, oy, ok]
                t[better] = np.broadcast_to(xs[ok], v.shape)[better]
                ix[:, oy, ok] = t
    return pooled, (iy, ix)


def maxpool_backward(e, where, in_shape):
    iy, ix = where
    out = np.zeros(in_shape)
    c = np.broadcast_to(np.arange(in_shape[0])[:, None, None], e.shape)
    np.add.at(out, (c, iy, ix), e)
    return out


def fc_forward(a, w):
    return np.asarray(w, dtype=np.float64) @ np.asarray(a, dtype=np.float64).reshape(-1)


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    t = np.exp(z - z.max())
    return t / t.sum()


def loss_grad(z, label, kind="softmax_cross_entropy"):
    """d loss / d z for one image: ``softmax(z) - onehot`` or ``z - onehot`` (squared error
    ``0.5 * |z - onehot|**2``)."""
    z = np.asarray(z, dtype=np.float64)
    onehot = np.zeros_like(z)
    onehot[label] = 1.0
    if kind == "softmax_cross_entropy":
        return softmax(z) - onehot
    if kind == "squared_error":
        return z - onehot
    raise ValueError(f"unknown loss {kind!r}")


def loss_value(z, label, kind="softmax_cross_entropy"):
    z = np.asarray(z, dtype=np.float64)
    if kind == "softmax_cross_entropy":
        m = z.max()
        return float(m + math.log(np.exp(z - m).sum()) - z[label])
    onehot = np.zeros_like(z)
    onehot[label] = 1.0
    return float(0.5 * ((z - onehot) ** 2).sum())


class FloatTrainer:
    """Float64 mini-batch SGD of a :class:`fpdeep_map.network.Network` (no biases).

    Same schedule as plain SGD: every image of a mini-batch runs forward and backward on the
    weights after the previous mini-batch's update; the update is ``w -= lr * mean(grad)``.

    Parameters
    ----------
    net : Network
    weights : dict
        ``{layer name: float array}`` initial weights (``[O,C/g,K,K]`` conv, ``[O,F]`` fc);
        copied.
    batch : int
    lr : float

    Members
    -------
    weights : dict
        Current weights.
    images_seen : int
    """

    def __init__(self, net, weights, batch, lr):
        self.net, self.batch, self.lr = net, int(batch), float(lr)
        self.weights = {k: np.array(v, dtype=np.float64) for k, v in weights.items()}
        self._grad = {k: np.zeros_like(v) for k, v in self.weights.items()}
        self._in_batch = 0
        self.images_seen = 0
        self.loss_kind = next(l.loss for l in net.layers if l.kind == "loss")

    def forward(self, x):
        """Forward pass; returns ``(scores, tape)``."""
        a = np.asarray(x, dtype=np.float64).reshape(self.net.input_shape)
        tape = []
        for l in self.net.layers:
            if l.kind == "conv":
                tape.append((l, a))
                a = conv_forward(a, self.weights[l.name], l.stride, l.padding, l.groups)
            elif l.kind == "fc":
                tape.append((l, a))
                a = fc_forward(a, self.weights[l.name])
            elif l.kind == "relu":
                a, m = relu_forward(a)
                tape.append((l, m))
            elif l.kind == "maxpool":
                shape = a.shape
                a, where = maxpool_forward(a, l.kernel, l.stride)
                tape.append((l, (where, shape)))
        return a.reshape(-1), tape

    def predict(self, x):
        return int(np.argmax(self.forward(x)[0]))

    def step(self, x, label):
        """Train on one image (updates at the end of each mini-batch); returns its loss."""
        z, tape = self.forward(x)
        e = loss_grad(z, label, self.loss_kind)
        for l, saved in reversed(tape):
            if l.kind == "fc":
                a = saved
                self._grad[l.name] += np.outer(e, a.reshape(-1))
                e = (self.weights[l.name].T @ e).reshape(a.shape)
            elif l.kind == "conv":
                a = saved
                self._grad[l.name] += conv_weight_grad(e, a, l.kernel, l.stride, l.padding,
                                                       l.groups)
                if l.needs_error:
                    e = conv_input_grad(e, self.weights[l.name], l.stride, l.padding, l.groups,
                                        a.shape)
            elif l.kind == "relu":
                e = np.where(saved, e.reshape(saved.shape), 0.0)
            elif l.kind == "maxpool":
                where, shape = saved
                e = maxpool_backward(e.reshape(where[0].shape), where, shape)
        self._in_batch += 1
        self.images_seen += 1
        if self._in_batch == self.batch:
            for k in self.weights:
                self.weights[k] -= self.lr * self._grad[k] / self.batch
                self._grad[k][...] = 0.0
            self._in_batch = 0
        return loss_value(z, label, self.loss_kind)
