"""The base of both lookup layers: call plans (lmKAN/_call_plans.py) and grid nodes that a
dtype conversion does not round to 16 bits."""
import torch

from ._call_plans import PlannedCalls
from .grids import compute_dtype

__all__ = ["LookupLayerBase"]

_SIXTEEN_BIT = (torch.float16, torch.bfloat16)


class LookupLayerBase(PlannedCalls):
    """A layer with a `borders` buffer (its grid nodes) and a table `func_parameter`.

    `.half()`, `.bfloat16()` and `.to(torch.float16 / torch.bfloat16)` convert the table but
    keep the nodes in float32: a 16-bit node would move by a sizeable part of a cell on fine
    grids (G=300: cells 0.018 wide near x = 1, bfloat16 steps of 0.004 there), and the cells
    are computed in float32 anyway (grids.compute_dtype). The nodes are taken from before
    the conversion, so they are not rounded on the way.
    """

    def _apply(self, fn, *args, **kwargs):
        nodes = self._buffers.get("borders")
        result = super()._apply(fn, *args, **kwargs)
        converted = self._buffers.get("borders")
        if nodes is not None and converted is not None and converted.dtype in _SIXTEEN_BIT:
            self._buffers["borders"] = nodes.to(device=converted.device,
                                                dtype=compute_dtype(nodes.dtype))
        return result
