"""Hessian regularisation over a whole model, and the schedule of its weight.

Typical training loop::

    schedule = HessianSchedule(total_steps, start=1e-3, end=1e-6)
    for step in range(total_steps):
        loss = task_loss + schedule(step) * hessian_regularization(model)

A large weight early keeps the learned tables smooth while the coarse shape forms (and
stops cells that see few samples from fitting noise); decaying it lets the layer use its
full resolution later.
"""
import math
import numbers

import torch

from . import ops
from ._checks import check_int, check_positive_float
from .lmkan2d import LMKAN2DLayer

__all__ = ["HessianSchedule", "hessian_regularization"]


def hessian_regularization(model: torch.nn.Module) -> torch.Tensor:
    """Sum of `get_hessian_regularization()` over every lmKAN layer in `model`.

    No host synchronisation. The 2D layers' Hessians (LMKAN2DLayer and its subclasses, such
    as LMKAN2DConv2d) are summed by one call (`lmKAN.ops.hessian2d_sum`: on CUDA one value
    launch for up to 8 tables, and one gradient launch); every other layer adds its own
    term. Returns a 0-dim tensor (zero on the model's device when it has no lmKAN layer).
    """
    terms, tables = [], []
    for m in model.modules():
        if not hasattr(m, "get_hessian_regularization"):
            continue
        if isinstance(m, LMKAN2DLayer) and \
                type(m).get_hessian_regularization is LMKAN2DLayer.get_hessian_regularization:
            tables.append((m.func_parameter, m.borders))
        else:
            terms.append(m.get_hessian_regularization())
    if tables:
        terms.insert(0, ops.hessian2d_sum([p for p, _ in tables], [b for _, b in tables]))
    if not terms:
        param = next(model.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)
    total = terms[0]
    for term in terms[1:]:  # one op per extra term (stack + sum would be two ops for two)
        total = total + term
    return total


class HessianSchedule:
    """Weight of the Hessian regulariser: log-linear decay from `start` to `end`.

    The weight falls geometrically from `start` at step 0 to `end` at
    `decay_fraction * total_steps`, and stays at `end` afterwards.
    """

    def __init__(self, total_steps, start=1e-3, end=1e-6, decay_fraction=0.8):
        self.total_steps = check_int("total_steps", total_steps, 1)
        self.start = check_positive_float("start", start)
        self.end = check_positive_float("end", end)
        decay_fraction = check_positive_float("decay_fraction", decay_fraction)
        if decay_fraction > 1:
            raise ValueError(f"decay_fraction must be in (0, 1], got {decay_fraction!r}")
        self.decay_steps = max(1, int(decay_fraction * self.total_steps))

    def __call__(self, step):
        """The weight at `step` (an int; steps before 0 take the start weight)."""
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"step must be an int, got {type(step).__name__} ({step!r})")
        t = min(max(int(step), 0), self.decay_steps) / self.decay_steps
        return math.exp((1 - t) * math.log(self.start) + t * math.log(self.end))
