"""Randomly displaced CH4-like molecules with an analytic potential: the data of the main job
(`python -m lmKAN.demo`) and of `examples/train_forces.py`. Nothing is downloaded.

A configuration is a carbon at the origin and four hydrogens at the tetrahedral positions
(C-H 1.09 A) displaced by N(0, sigma^2) per coordinate. Its energy (eV) is a sum of Morse
C-H bonds, harmonic H-C-H angles around 109.47 deg and an exponential H-H repulsion; forces
are -dE/dr by autograd. The inputs are the 12 Cartesian coordinates of the hydrogens
relative to the carbon (the lmKAN paper's Cartesian-components representation of its
methane task).
"""
import math

import torch

__all__ = ["energy", "make_ch4_data"]

BOND, MORSE_D, MORSE_A = 1.09, 4.5, 1.8          # A, eV, 1/A
ANGLE0, ANGLE_K = math.acos(-1.0 / 3.0), 3.0      # rad, eV/rad^2
REPULSION_A, REPULSION_RHO = 40.0, 0.35           # eV, A


def _tetrahedron():
    v = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]],
                     dtype=torch.float64)
    return BOND * v / v.norm(dim=1, keepdim=True)


def energy(h):
    """Potential energy (eV) of configurations h [N, 4, 3] (the hydrogens; carbon at 0)."""
    r = h.norm(dim=-1)                                                     # [N, 4]
    bonds = MORSE_D * (1 - torch.exp(-MORSE_A * (r - BOND))).square()
    u = h / r[..., None]
    i, j = torch.triu_indices(4, 4, offset=1)
    cos = (u[:, i] * u[:, j]).sum(-1).clamp(-1 + 1e-12, 1 - 1e-12)
    angles = 0.5 * ANGLE_K * (torch.acos(cos) - ANGLE0).square()
    hh = (h[:, i] - h[:, j]).norm(dim=-1)
    repulsion = REPULSION_A * torch.exp(-hh / REPULSION_RHO)
    return bonds.sum(-1) + angles.sum(-1) + repulsion.sum(-1)


def make_ch4_data(n, generator, sigma=0.12):
    """n configurations: coordinates x [n, 12], energies e [n, 1] (eV) and forces f [n, 12]
    = -dE/dx (eV/A), float32 (computed in float64)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    h = _tetrahedron() + sigma * torch.randn(n, 4, 3, generator=generator, dtype=torch.float64)
    h.requires_grad_(True)
    e = energy(h)
    (grad,) = torch.autograd.grad(e.sum(), h)
    return (h.detach().reshape(n, 12).float(), e.detach()[:, None].float(),
            (-grad).reshape(n, 12).float())
