"""Darknet's SGD as a schedule: the [net] options that say how a network learns, and the
learning rate of each update (Darknet's get_current_rate), apart from the kernels that apply
it (the training backends' sgd_update).

Darknet counts in images: `seen` grows by `batch` per train_batch, and update k of a run uses
batch number k = seen / batch, counted after that batch's images (the first update uses 1).
Rates are computed as Darknet's C computes them: float32 options, double pow() and exp(), the
product in double, the rate a float32 (NumPy scalars would multiply in float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nets.cfg import Section

POLICIES = ("constant", "step", "steps", "exp", "poly", "random", "sig")
F32 = np.float32


@dataclass(frozen=True)
class Solver:
    batch: int  # images per update (Darknet's batch; its `net->batch` is batch / subdivisions)
    subdivisions: int
    learning_rate: float
    momentum: float
    decay: float
    policy: str = "constant"
    max_batches: int = 0
    burn_in: int = 0
    power: float = 4.0
    step: int = 1
    scale: float = 1.0
    gamma: float = 1.0
    steps: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()

    @property
    def minibatch(self) -> int:
        """Images per forward and backward pass."""
        return self.batch // self.subdivisions

    def rate(self, batch_number: int, uniform: float = 0.0) -> float:
        """The learning rate of the update that ends batch `batch_number` (Darknet's
        get_current_rate, float32); `uniform` in [0, 1) is the draw the random policy uses."""
        # C keeps these options as floats.
        lr, power, scale, gamma = (F32(v) for v in (self.learning_rate, self.power, self.scale, self.gamma))
        if batch_number < self.burn_in:
            return float(F32(float(lr) * math.pow(F32(batch_number) / F32(self.burn_in), power)))
        if self.policy == "constant":
            return float(lr)
        if self.policy == "step":
            return float(F32(float(lr) * math.pow(scale, batch_number // self.step)))
        if self.policy == "steps":
            rate = lr
            for step, scale in zip(self.steps, self.scales):
                if step > batch_number:
                    break
                rate = F32(rate * F32(scale))
            return float(rate)
        if self.policy == "exp":
            return float(F32(float(lr) * math.pow(gamma, batch_number)))
        if self.policy == "poly":
            left = float(F32(1) - F32(batch_number) / F32(self.max_batches))
            return float(F32(float(lr) * _pow(left, power)))
        if self.policy == "random":
            return float(F32(float(lr) * _pow(uniform, power)))
        # sig: C subtracts an int from a size_t, so before `step` the difference wraps around
        # to nearly 2^64 and the rate is 0 (for gamma > 0); kern keeps that.
        difference = (batch_number - self.step) % (1 << 64)
        exponent = float(gamma * F32(difference))
        ratio = 0.0 if exponent > 709 else 1.0 / (1.0 + math.exp(exponent))
        return float(F32(float(lr) * ratio))

    def update_constants(
        self, batch_number: int, rate_scale: float = 1.0, uniform: float = 0.0
    ) -> tuple[float, float]:
        """(learning_rate / batch, decay * batch) as Darknet's update computes them in float32,
        for a layer whose cfg section scales the rate by `rate_scale` (its learning_rate=)."""
        rate = F32(F32(self.rate(batch_number, uniform)) * F32(rate_scale))
        return float(rate / F32(self.batch)), float(F32(self.decay) * F32(self.batch))


def _pow(base: float, exponent: float) -> float:
    """C's pow for the values a schedule meets: a negative base (past max_batches) gives NaN
    for a non-integer exponent, as in C, rather than a Python exception."""
    try:
        return math.pow(base, exponent)
    except ValueError:
        return math.nan


def read_solver(net: Section) -> Solver:
    """The [net] section's training options, with Darknet's defaults; one line naming the
    option for what Darknet would misread or divide by zero."""
    if not net.has("batch"):
        raise net.error("needs batch= (the images per update) to train")
    if net.integer("random", 0):
        raise net.error("random=1 (multi-scale training) is not supported", "random")
    batch = net.integer("batch", 1)
    subdivisions = net.integer("subdivisions", 1)
    if batch < 1 or subdivisions < 1:
        raise net.error("batch= and subdivisions= must be positive", "batch" if batch < 1 else "subdivisions")
    if batch % subdivisions:
        raise net.error(f"batch={batch} is not a multiple of subdivisions={subdivisions}", "subdivisions")
    policy = net.choice("policy", "constant", POLICIES)
    options = dict(
        batch=batch, subdivisions=subdivisions,
        learning_rate=net.number("learning_rate", 0.001),
        momentum=net.number("momentum", 0.9),
        decay=net.number("decay", 0.0001),
        policy=policy,
        max_batches=net.integer("max_batches", 0),
        burn_in=net.integer("burn_in", 0),
        power=net.number("power", 4.0),
    )
    if options["burn_in"] < 0 or options["max_batches"] < 0:
        raise net.error("burn_in= and max_batches= must be 0 or more")
    if policy == "step":
        options.update(step=net.integer("step", 1), scale=net.number("scale", 1.0))
        if options["step"] < 1:
            raise net.error("step= must be positive", "step")
    elif policy == "steps":
        if not net.has("steps") or not net.has("scales"):
            raise net.error("policy=steps needs steps= and scales=")
        steps, scales = net.integers("steps"), net.numbers("scales")
        if len(steps) != len(scales):
            message = f"steps= has {len(steps)} values, scales= {len(scales)}: expected as many"
            raise net.error(message, "scales")
        options.update(steps=tuple(steps), scales=tuple(scales))
    elif policy in ("exp", "sig"):
        options.update(gamma=net.number("gamma", 1.0))
        if policy == "sig":
            options.update(step=net.integer("step", 1))
    elif policy == "poly" and options["max_batches"] < 1:
        raise net.error("policy=poly needs max_batches=", "max_batches")
    return Solver(**options)

