"""Whether two builds compute the same numbers: the 2D ops' outputs, bit for bit.

    python tools/bitwise_outputs.py dump OUT.pt      # in each build's tree (GPU)
    python tools/bitwise_outputs.py compare A.pt B.pt

`dump` runs lmkan2d_forward and the deterministic lmkan2d_backward (grad_x and
grad_params) over shapes that reach every branch of the table packing and unpacking:
num_grids 3 / 8 / 26; output counts 1, 2, 5, 8 (the few-outputs kernels' widths 1 to 8),
40, 96, 129 (partial output tiles); pair counts 3, 4, 5, 8, 32, 65, 128 (vector and
scalar pair loads, partial pair groups); tiles 4 / 8 / 16; float32, bfloat16 and
float16 parameters and tables; both layouts. Fixed seeds, so two builds see the same
inputs. `compare` prints how many cases differ in any bit (exit status 1 if one does).

A change that only moves data (packing, layouts, launch shapes) must leave every case
equal; one that changes arithmetic (summation order, FMA contraction) shows here as
differences, to be checked against the float64 reference by the tests instead. The
non-deterministic backward (float atomics) is left out: its sums vary from run to run.
"""
import sys

import torch

SHAPES = ((6, 5), (8, 1), (10, 2), (16, 8), (64, 40), (130, 129), (256, 96))
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def cases():
    """(num_grids, n_in, n_out, tile, params dtype, table dtype or None) of every call."""
    for g in (3, 8, 26):
        for n_in, n_out in SHAPES:
            for tile in (4, 8, 16):
                for params_dtype in DTYPES:
                    for table in (None, torch.bfloat16, torch.float16):
                        # 16-bit parameters: a table of their own dtype, named or None (the
                        # ops then resolve it from the parameters: both spellings are called)
                        if params_dtype != torch.float32 and table not in (None, params_dtype):
                            continue
                        yield g, n_in, n_out, tile, params_dtype, table


def dump(path):
    import lmKAN  # noqa: F401 (registers the ops)
    from lmKAN.grids import cdf_borders

    torch.manual_seed(0)
    out = {}
    batch = 777
    for g, n_in, n_out, tile, params_dtype, table in cases():
        for batch_last in (True, False):
            x = torch.randn((n_in, batch) if batch_last else (batch, n_in), device="cuda") * 1.3
            params = torch.randn(g + 1, g + 1, n_out, n_in // 2, device="cuda").to(params_dtype)
            borders = cdf_borders(g, device="cuda")
            y = torch.ops.lmkan.lmkan2d_forward(x, params, borders, batch_last, tile, 512,
                                                table)
            gy = torch.randn_like(y)
            gx, gp = torch.ops.lmkan.lmkan2d_backward(gy, x, params, borders, batch_last, tile,
                                                      512, False, True, table, True)
            key = (g, n_in, n_out, tile, str(params_dtype), str(table), batch_last)
            out[str(key)] = (y.cpu(), gx.cpu(), gp.cpu())
    torch.save(out, path)
    print(f"{len(out)} cases -> {path}")


def compare(path_a, path_b):
    a, b = torch.load(path_a), torch.load(path_b)
    if a.keys() != b.keys():
        print(f"the dumps hold different cases ({len(a)} and {len(b)})")
        return 1
    differ = [k for k in a if not all(torch.equal(u, v) for u, v in zip(a[k], b[k]))]
    print(f"bitwise: {len(a)} cases, {len(differ)} differ" + (f": {differ[:5]}" if differ else ""))
    return 1 if differ else 0


def main(argv):
    if len(argv) == 2 and argv[0] == "dump":
        dump(argv[1])
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        return compare(argv[1], argv[2])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
