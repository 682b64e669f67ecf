"""lmKAN.molecules, the data of the main job and of examples/train_forces.py."""
import pytest
import torch

from lmKAN.molecules import _tetrahedron, energy, make_ch4_data


def test_forces_are_minus_the_energy_gradient():
    gen = torch.Generator().manual_seed(0)
    x, e, f = make_ch4_data(5, gen)
    assert x.shape == (5, 12) and e.shape == (5, 1) and f.shape == (5, 12)
    h = x.double().reshape(5, 4, 3)
    torch.testing.assert_close(energy(h)[:, None].float(), e)
    step = 1e-6
    for k in (0, 5, 11):  # central differences of a few coordinates
        dh = torch.zeros(5, 12, dtype=torch.float64)
        dh[:, k] = step
        slope = (energy(h + dh.reshape(5, 4, 3)) - energy(h - dh.reshape(5, 4, 3))) / (2 * step)
        torch.testing.assert_close(-slope.float(), f[:, k], rtol=1e-4, atol=1e-4)


def test_tetrahedron_is_symmetric_with_zero_net_force():
    h = _tetrahedron()[None].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(h).sum(), h)
    torch.testing.assert_close(grad.sum(1), torch.zeros(1, 3, dtype=torch.float64))
    radial = (grad[0] * h.detach()[0]).sum(-1)  # the same outward component on every H
    torch.testing.assert_close(radial, radial[0].expand(4))


def test_make_ch4_data_checks_its_size():
    with pytest.raises(ValueError, match="at least 1"):
        make_ch4_data(0, torch.Generator())
