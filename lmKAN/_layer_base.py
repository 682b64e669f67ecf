"""The base of both lookup layers: call plans (lmKAN/_call_plans.py), grid nodes that a
dtype conversion does not round to 16 bits, and state dicts whose nodes are checked."""
import warnings

import torch

from ._call_plans import PlannedCalls
from .grids import compute_dtype

__all__ = ["LookupLayerBase"]

_SIXTEEN_BIT = (torch.float16, torch.bfloat16)
FLOAT16_MAX = 65504.0  # the largest finite float16


class LookupLayerBase(PlannedCalls):
    """A layer with a `borders` buffer (its grid nodes) and a table `func_parameter`.

    A layer class defines `grid_nodes()` (the float32 nodes of its grid, from its
    construction arguments) and `grid_description()` (that grid in words, for errors).

    `.half()`, `.bfloat16()` and `.to(torch.float16 / torch.bfloat16)` convert the table but
    keep the nodes in float32: a 16-bit node would move by a sizeable part of a cell on fine
    grids (G=300: cells 0.018 wide near x = 1, bfloat16 steps of 0.004 there), and the cells
    are computed in float32 anyway (grids.compute_dtype). The nodes are taken from before
    the conversion, so they are not rounded on the way.

    A conversion to float16 warns when table values exceed float16's range (65504): they
    become infinite, and so does every output that reads them (bfloat16 has float32's
    range). One reduction at the conversion; calls are not checked.
    """

    def _apply(self, fn, *args, **kwargs):
        nodes = self._buffers.get("borders")
        table = self._parameters.get("func_parameter")
        table = None if table is None else table.detach()  # the values before the conversion
        result = super()._apply(fn, *args, **kwargs)
        converted = self._buffers.get("borders")
        if nodes is not None and converted is not None and converted.dtype in _SIXTEEN_BIT:
            self._buffers["borders"] = nodes.to(device=converted.device,
                                                dtype=compute_dtype(nodes.dtype))
        self._warn_float16_overflow(table)
        return result

    def _warn_float16_overflow(self, before):
        after = self._parameters.get("func_parameter")
        if (before is None or after is None or after.dtype != torch.float16
                or before.dtype == torch.float16):  # (bfloat16 has float32's range: checked)
            return
        over = int((before.abs() > FLOAT16_MAX).sum())
        if over:
            warnings.warn(f"{type(self).__name__}: {over} of {before.numel()} table values exceed "
                          f"float16's largest finite value {FLOAT16_MAX:g} (largest magnitude "
                          f"{before.abs().max().item():.6g}) and became infinite: outputs that "
                          "read them are inf or NaN. bfloat16 keeps float32's range.",
                          stacklevel=4)  # a .half() or .to() called on this layer

    def grid_nodes(self):
        raise NotImplementedError

    def grid_description(self):
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # The cells come from the grid's formula and the weights from `borders`: nodes of
        # another grid would change every output silently, so they are refused, and this
        # layer keeps its whole state (a table made for other nodes does not fit it).
        key = prefix + "borders"
        if key in state_dict:
            problem = nodes_problem(state_dict[key], self.grid_nodes())
            if problem is not None:
                error_msgs.append(f"{key}: {problem}; this {type(self).__name__} has "
                                  f"{self.grid_description()} (docs/spec.md section 1)")
                return
            if state_dict[key].dtype in _SIXTEEN_BIT:  # saved rounded: take the exact nodes
                state_dict[key] = self.grid_nodes().to(self.borders)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


# Loaded float32/float64 nodes may differ from this package's by float32 rounding (another
# implementation of the same formula): a few units in the last place of the largest node.
_NODE_ULPS = 4


def nodes_problem(loaded, expected):
    """Why `loaded` are not the nodes `expected` (float32), or None when they are: equal up to
    float32 rounding, or, for 16-bit nodes, equal to the expected nodes rounded to that dtype."""
    if not isinstance(loaded, torch.Tensor) or not loaded.is_floating_point():
        return f"expected a floating-point tensor of grid nodes, got {type(loaded).__name__}" + (
            f" of dtype {loaded.dtype}" if isinstance(loaded, torch.Tensor) else "")
    if loaded.shape != expected.shape:
        return f"expected {expected.numel()} grid nodes, got shape {list(loaded.shape)}"
    got = loaded.detach().to("cpu", torch.float64)
    if loaded.dtype in _SIXTEEN_BIT:
        want, tol = expected.to(loaded.dtype).to(torch.float64), 0.0
    else:
        want = expected.to(torch.float64)
        tol = _NODE_ULPS * torch.finfo(torch.float32).eps * float(want.abs().max())
    diff = (got - want).abs().nan_to_num(nan=float("inf"))
    worst = int(diff.argmax())
    if float(diff[worst]) > tol:
        return (f"the loaded grid nodes differ from the expected ones by {float(diff[worst]):.3g} "
                f"at node {worst} (loaded {float(got[worst]):.6g}, expected "
                f"{float(want[worst]):.6g}; loaded nodes run from {float(got[0]):.6g} to "
                f"{float(got[-1]):.6g})")
    return None

