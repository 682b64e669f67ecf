"""Argument and input checks shared by the layers.

Every message names the argument, what was expected and what was received.
"""
import math
import numbers

import torch

# Input dtypes accepted by float32 layers: computed in float32 (ops._run_layer).
LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)

# The 2D ops' largest table side (csrc/lmkan2d/plan.h kMaxTableSide: the kernels' table
# offsets are 32-bit): the 2D layer's num_grids limit and the fake implementations' check.
MAX_TABLE_SIDE_2D = 4000
# The ops' host code narrows sizes to int: the layers' widths and the fakes' checks.
INT32_MAX = 2 ** 31 - 1


def check_int(name, value, minimum, even=False, maximum=None, why=""):
    """A Python int in [minimum, maximum] (and even if asked); bools are rejected. `why`:
    the reason for the maximum, appended to its message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}{why}, got {value}")
    if even and value % 2:
        raise ValueError(f"{name} must be even (inputs are taken in pairs), got {value}")
    return int(value)


def check_choice(name, value, choices):
    """One of `choices`, of the same type as they are (8.0 is not the tile size 8; the
    string "False" is not False)."""
    if not any(value == c and type(value) is type(c) for c in choices):
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r} "
                         f"({type(value).__name__})")
    return value


# The dtypes a 2D layer's table may be rounded to (its table_dtype, the ops' table_dtype).
TABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_table_dtype(value):
    """None, torch.float32, torch.float16 or torch.bfloat16 (the layers' table_dtype)."""
    if value is None or value in TABLE_DTYPES:
        return value
    raise TypeError(f"table_dtype must be None, torch.float32, torch.float16 or torch.bfloat16, "
                    f"got {type(value).__name__} ({value!r})")


def check_bool(name, value, also=()):
    """A bool (numpy's too), or one of the values in `also` (e.g. None, "auto"). Strings such
    as "false" are refused: bool("false") is True."""
    if any(value is a or (isinstance(a, str) and value == a) for a in also):
        return value
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    allowed = ["True", "False"] + [repr(a) for a in also]
    raise TypeError(f"{name} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got "
                    f"{type(value).__name__} ({value!r})")


def check_real(name, value, minimum=None, exclusive=False):
    """A finite real number (not a bool), at least `minimum` (above it if `exclusive`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise ValueError(f"{name} must be {'>' if exclusive else '>='} {minimum:g}, got {value!r}")
    return float(value)


def check_positive_float(name, value):
    """A finite real number > 0."""
    return check_real(name, value, 0.0, exclusive=True)


def in_features(x, batch_last):
    """x's input features: [N_in, B], [B, N_in] or images [N, N_in, L]."""
    return x.shape[1] if x.dim() == 3 or not batch_last else x.shape[0]


def check_pair_features(op, x, n_pairs, batch_last):
    """A 2D op's x has 2 * n_pairs input features (the kernels' check, csrc/common/checks.h);
    torch._check, so that a fake raises it at trace time too."""
    in_dim = in_features(x, batch_last)
    torch._check_value(in_dim == 2 * n_pairs,
                       lambda: f"{op}: x has {in_dim} input features but params expects "
                               f"input_dim=2*{n_pairs}={2 * n_pairs} (x shape {list(x.shape)}, "
                               f"batch_last={batch_last})")


def check_input_features(x, n_in, batch_last):
    """A 1D op's x has n_in input features (csrc/lmkan1d/ops.cpp, check_args)."""
    torch._check_value(in_features(x, batch_last) == n_in,
                       lambda: f"x must have {n_in} input features (params.size(2)) along dim "
                               f"{1 if x.dim() == 3 or not batch_last else 0}, got shape "
                               f"{list(x.shape)}")


def check_input(x, weight, input_dim, batch_last, layer_name):
    """Validate a layer input; return it as a 2-D view plus the leading batch shape.

    batch_last: x must be [input_dim, B]. Otherwise x is [..., input_dim] and is flattened
    to [B, input_dim]; the caller restores the leading shape on the output.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer_name} input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{layer_name} input must be a floating-point tensor, got dtype {x.dtype}")
    low_precision_input = x.dtype in LOW_PRECISION_DTYPES and weight.dtype == torch.float32
    if x.dtype != weight.dtype and not low_precision_input:
        raise TypeError(f"{layer_name} input has dtype {x.dtype} but the layer's parameters are "
                        f"{weight.dtype}; convert the input or the layer (e.g. layer.to({x.dtype}))")
    if x.device != weight.device:
        raise ValueError(f"{layer_name} input is on {x.device} but the layer's parameters are on "
                         f"{weight.device}; move one of them (e.g. x.to('{weight.device}'))")
    if batch_last:
        if x.dim() != 2 or x.shape[0] != input_dim:
            raise ValueError(f"{layer_name} input must have shape [input_dim={input_dim}, batch] "
                             f"(batch_last=True), got {list(x.shape)}")
        return x, None
    if x.dim() < 1 or x.shape[-1] != input_dim:
        raise ValueError(f"{layer_name} input must have shape [..., input_dim={input_dim}] "
                         f"(batch_last=False), got {list(x.shape)}")
    return x.reshape(-1, input_dim), x.shape[:-1]
