"""Do errors raised by the extension's argument checks reach Python as exceptions?

Each case runs in its own interpreter (a crash shows as a return code, not a lost
session). Cases: a torch-native error; an lmKAN op's check with the library loaded alone
(no Python fake registrations); the same through lmKAN (with them); and the same under
torch.no_grad / inference_mode.
"""
import subprocess
import sys

PRELUDE = "import glob, torch, os\n"
BAD_CALL = ("torch.ops.lmkan.hessian2d(torch.randn(9, 8, 2, 2, device='cuda'), "
            "torch.linspace(-2, 2, 9, device='cuda'))")
CASES = {
    "torch-native": "torch.mm(torch.ones(2, 3, device='cuda'), torch.ones(2, 3, device='cuda'))",
    "library-only": "so = glob.glob(os.path.join(os.getcwd(), 'lmKAN', '_C*.so'))[0]\n"
                    "torch.ops.load_library(so)\n" + BAD_CALL,
    "with-autograd-registration": "import lmKAN\n" + BAD_CALL,
    "no_grad": "import lmKAN\nwith torch.no_grad():\n    " + BAD_CALL,
    "layer-bad-num-grids": ("import lmKAN\nl = lmKAN.LMKAN1DLayer(400, 4, 4).cuda()\n"
                            "l(torch.randn(4, 8, device='cuda'))"),
}


def main():
    for name, body in CASES.items():
        code = PRELUDE + "try:\n" + "".join("    " + line + "\n" for line in body.splitlines()) + \
            "except Exception as e:\n    print(type(e).__name__, str(e).splitlines()[0][:100])\n"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        out = (proc.stdout.strip() or proc.stderr.strip()[-200:]).replace("\n", " | ")
        print(f"{name:<28} rc={proc.returncode:<4} {out}")


if __name__ == "__main__":
    main()
