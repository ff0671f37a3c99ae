"""Fixed-point number formats shared by the plan, the hardware and the golden model.

This module is pure Python (no numpy, no Amaranth): it only *describes* formats. The arithmetic
lives twice, identically: in :mod:`sim.fixed` (numpy golden model) and in
:mod:`fpdeep_hw.numerics` (Amaranth). Both follow the rules written here.

A value ``v`` in format ``FixedFormat(width=W, frac=F)`` is the two's-complement integer
``q`` in ``[-2**(W-1), 2**(W-1) - 1]`` with ``v = q / 2**F``.

Requantisation (after a multiply-accumulate, an average, an update) takes an integer ``x`` with
``F_in`` fractional bits to a format with ``F_out`` fractional bits:

1. **Rounding** when ``F_in > F_out`` (``s = F_in - F_out`` bits are dropped):

   - ``"half_up"`` (default): ``floor((x + 2**(s-1)) / 2**s)`` -- round to nearest, ties towards
     plus infinity. One adder and an arithmetic shift in hardware.
   - ``"truncate"``: ``floor(x / 2**s)`` -- round towards minus infinity (arithmetic shift).

   When ``F_out >= F_in`` the value is shifted left exactly (no rounding).
2. **Saturation**: a result outside the target range is clamped to the nearest end of the range
   and the *overflow* counter of the block that produced it is incremented. Nothing ever wraps.

Accumulators are ``acc_width`` bits wide (48 by default, as a DSP48 slice's P register).
Accumulation itself saturates as well, so an accumulator overflow is counted, not wrapped.
"""

from __future__ import annotations

from dataclasses import dataclass, asdict

ROUNDING_MODES = ("half_up", "truncate")
FORMAT_KINDS = ("activation", "weight", "error", "gradient", "master", "partial")


@dataclass(frozen=True)
class FixedFormat:
    """A signed two's-complement fixed-point format.

    Parameters
    ----------
    width : int
        Total number of bits, sign included (2..64).
    frac : int
        Number of fractional bits (0..62; may exceed ``width`` for a purely fractional format).
    rounding : str
        ``"half_up"`` or ``"truncate"``; used when a wider value is brought into this format.
    """

    width: int = 16
    frac: int = 8
    rounding: str = "half_up"

    def __post_init__(self):
        if not isinstance(self.width, int) or not 2 <= self.width <= 64:
            raise ValueError(f"fixed-point width must be an integer in 2..64, not {self.width!r}")
        if not isinstance(self.frac, int) or not 0 <= self.frac <= 62:
            raise ValueError(f"fixed-point frac must be an integer in 0..62, not {self.frac!r}")
        if self.rounding not in ROUNDING_MODES:
            raise ValueError(f"rounding must be one of {ROUNDING_MODES}, not {self.rounding!r}")

    @property
    def min_int(self) -> int:
        return -(1 << (self.width - 1))

    @property
    def max_int(self) -> int:
        return (1 << (self.width - 1)) - 1

    @property
    def lsb(self) -> float:
        """Value of one least significant bit."""
        return 2.0 ** -self.frac

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FixedFormat":
        return cls(**d)

    def __str__(self):
        return f"Q{self.width - self.frac}.{self.frac}({self.rounding})"


@dataclass(frozen=True)
class NumericsConfig:
    """The formats of one design: one per kind of value, plus the accumulator width.

    Defaults (16-bit data, as the paper's one-MAC-per-DSP48-per-cycle throughput implies):

    ============ =========== ===================================================================
    kind         format      why
    ============ =========== ===================================================================
    activation   Q8.8        post-ReLU activations of normalised images stay well under 128
    weight       Q4.12       weights of trained CNNs are small; 12 fractional bits keep detail
    error        Q4.12       errors are small; saturation counted if they are not
    gradient     Q4.12       batch-averaged gradient handed to the update
    master       Q4.20 (24b) weight master copy: updates of lr*grad below the Q4.12 LSB (down
                             to 2**-20) accumulate here instead of being rounded away; the
                             engines read it rounded to the weight format
    partial      Q16.16 (32b) ICP partial sums passed along the chain (final rounding to the
                             activation format happens once, on the last node of the layer)
    grad_acc     24 bits     gradient-buffer accumulators: sum of B per-image gradients
                             (B up to 2**(24-16)=256 in the default gradient format)
    ============ =========== ===================================================================

    Per parameter kept on chip: ``master.width + grad_acc_width`` bits (48 by default) -- the
    mapper's BRAM model reads these widths.
    """

    activation: FixedFormat = FixedFormat(16, 8)
    weight: FixedFormat = FixedFormat(16, 12)
    error: FixedFormat = FixedFormat(16, 12)
    gradient: FixedFormat = FixedFormat(16, 12)
    master: FixedFormat = FixedFormat(24, 20)
    partial: FixedFormat = FixedFormat(32, 16)
    acc_width: int = 48
    grad_acc_width: int = 24

    def __post_init__(self):
        if not isinstance(self.acc_width, int) or not 16 <= self.acc_width <= 96:
            raise ValueError(f"accumulator width must be an integer in 16..96, not {self.acc_width!r}")
        if not isinstance(self.grad_acc_width, int) or not self.gradient.width <= self.grad_acc_width <= 64:
            raise ValueError(f"gradient accumulator width must be an integer in "
                             f"{self.gradient.width}..64, not {self.grad_acc_width!r}")

    def to_dict(self) -> dict:
        d = {k: getattr(self, k).to_dict() for k in FORMAT_KINDS}
        d["acc_width"] = self.acc_width
        d["grad_acc_width"] = self.grad_acc_width
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NumericsConfig":
        kw = {k: FixedFormat.from_dict(v) for k, v in d.items() if k in FORMAT_KINDS}
        for k in ("acc_width", "grad_acc_width"):
            if k in d:
                kw[k] = d[k]
        return cls(**kw)
