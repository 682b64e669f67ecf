"""Hessian regularisation over a whole model, and the schedule of its weight.

Typical training loop::

    schedule = HessianSchedule(total_steps, start=1e-3, end=1e-6)
    for step in range(total_steps):
        loss = task_loss + hessian_regularization(model, weight=schedule(step))

(`weight=` is `schedule(step) * hessian_regularization(model)` without the multiplication's
op in each direction: on CUDA the weight goes into the regulariser's own launches.)

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


def hessian_regularization(model: torch.nn.Module, weight=1.0) -> torch.Tensor:
    """`weight` times the sum of `get_hessian_regularization()` over every lmKAN layer in
    `model`.

    No host synchronisation. The 2D layers' Hessians (LMKAN2DLayer and its subclasses, such
    as LMKAN2DConv2d) are summed by one call (`lmKAN.ops.hessian2d_sum`: on CUDA one value
    launch for up to 8 tables, and one gradient launch, the weight applied inside them);
    every other layer adds its own term (`torch.add(..., alpha=weight)`: one op each). A
    weight that is a tensor, or any weight under torch.compile (a float argument of an op
    would be specialised: one recompilation per value of a schedule), multiplies the sum
    instead. Returns a 0-dim tensor (zero on the model's device when it has no lmKAN layer).
    """
    if isinstance(weight, bool) or not isinstance(weight, (numbers.Real, torch.Tensor)):
        raise TypeError(f"weight must be a real number or a tensor, got {type(weight).__name__} "
                        f"({weight!r})")
    compiling = torch.compiler.is_compiling()
    # not while tracing: there a changing float weight is symbolic after its first value, and
    # math.isfinite on it would break the graph (the multiplication below propagates a NaN)
    if isinstance(weight, numbers.Real) and not compiling and not math.isfinite(weight):
        raise ValueError(f"weight must be finite, got {weight!r}")
    if isinstance(weight, torch.Tensor) or compiling:
        total = _weighted_sum(model, 1.0)
        return total if isinstance(weight, numbers.Real) and weight == 1.0 else weight * total
    return _weighted_sum(model, float(weight))


def _weighted_sum(model, weight):
    """weight (a float) times the sum of the lmKAN layers' terms (hessian_regularization)."""
    terms, tables = [], []
    for m in model.modules():
        if not hasattr(m, "get_hessian_regularization"):
            continue
        if isinstance(m, LMKAN2DLayer) and \
                type(m).get_hessian_regularization is LMKAN2DLayer.get_hessian_regularization:
            tables.append((m.func_parameter, m.borders))
        else:
            terms.append(m.get_hessian_regularization())
    total = None
    if tables:
        total = ops.hessian2d_sum([p for p, _ in tables], [b for _, b in tables], weight)
    if total is None and not terms:
        param = next(model.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)
    for term in terms:  # one op per term (stack + sum would be two ops for two)
        if total is None:
            total = term if weight == 1.0 else weight * term
        else:
            total = torch.add(total, term, alpha=weight)
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
