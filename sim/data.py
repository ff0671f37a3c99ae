"""Training data for simulations and experiments: the 8x8 digits set and synthetic images.

Members
-------
digits, synthetic
"""

from __future__ import annotations

import numpy as np

__all__ = ["digits", "synthetic"]


def digits(seed=0, test_fraction=0.2):
    """The 8x8 handwritten digits of scikit-learn (``sklearn.datasets.load_digits``, 1797 images).

    Pixel values 0..16 are scaled to ``[0, 1]``; images are ``[1, 8, 8]`` float64, labels int64.
    The split is a fixed permutation drawn from ``numpy.random.default_rng(seed)``: the last
    ``round(test_fraction * 1797)`` images of it are the test set.

    Returns ``(train_x, train_y, test_x, test_y)``. Raises ``ImportError`` with the install hint
    when scikit-learn (the ``data`` extra) is missing.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the digits data set needs scikit-learn: "
                          "pip install 'fpdeep[data]' (or pip install scikit-learn)") from e
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), not {test_fraction!r}")
    d = load_digits()
    x = (np.asarray(d.images, dtype=np.float64) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(d.target, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    tr, te = order[:len(y) - n_test], order[len(y) - n_test:]
    return x[tr], y[tr], x[te], y[te]


def synthetic(net, n, seed=0):
    """``n`` random images of ``net``'s input shape (uniform in ``[0, 1)``) and random labels in
    ``0 .. net.classes - 1``: ``(x[n, C, H, W] float64, y[n] int64)``, deterministic by seed."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, not {n!r}")
    rng = np.random.default_rng(seed)
    x = rng.random((n,) + tuple(net.input_shape))
    y = rng.integers(0, net.classes, n).astype(np.int64)
    return x, y
