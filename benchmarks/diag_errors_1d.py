"""Which C++ errors reach Python on this machine: a torch-native one, then lmKAN's checks."""
import sys

import torch

case = sys.argv[1]
if case == "native":
    try:
        torch.mm(torch.ones(2, 3, device="cuda"), torch.ones(2, 3, device="cuda"))
    except RuntimeError as e:
        print("native RuntimeError ok:", str(e)[:80])
elif case == "import_then_native":
    import lmKAN  # noqa: F401
    try:
        torch.mm(torch.ones(2, 3, device="cuda"), torch.ones(2, 3, device="cuda"))
    except RuntimeError as e:
        print("native after lmKAN import ok:", str(e)[:80])
else:
    import lmKAN  # noqa: F401
    p = torch.randn(4, 4, 4, device="cuda")
    try:
        torch.ops.lmkan.lmkan1d_forward(torch.randn(5, 8, device="cuda"), p,
                                        torch.linspace(-2, 2, 4, device="cuda"), True, True)
    except Exception as e:
        print("lmkan1d check:", type(e).__name__, str(e)[:120])
