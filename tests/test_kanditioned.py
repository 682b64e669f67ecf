"""KANLayer as a drop-in for KANditioned's KANLayer (issue 18, item 4): its arguments in its
positions, its checkpoints loading with the same outputs."""
import pytest
import torch
import torch.nn.functional as F

from lmKAN import KANLayer


def kanditioned_forward(x, kan_weight, spline_width):
    """KANditioned's B-spline forward (its embedding-bag form), written from its documented
    math: node k of input i sits at -w/2 + k w / (K-1) with value kan_weight[i, k, :];
    linear interpolation inside, the end segments extended outside."""
    n_in, k, n_out = kan_weight.shape
    u = (x + spline_width / 2) * (k - 1) / spline_width
    lower = u.floor().clamp(0, k - 2)
    t = u - lower
    rows = lower.long() + torch.arange(n_in) * k
    return F.embedding_bag(torch.stack((rows, rows + 1), 2).reshape(x.shape[0], -1),
                           kan_weight.reshape(-1, n_out),
                           per_sample_weights=torch.stack((1 - t, t), 2).reshape(x.shape[0], -1),
                           mode="sum")


def _kanditioned_state(n_in, k, n_out, weight=None):
    return {"kan_weight": torch.randn(n_in, k, n_out) if weight is None else weight,
            "local_bias": torch.arange(k).view(1, -1, 1),
            "feature_offset": torch.arange(n_in).view(1, -1) * k}


def test_kanditioned_positional_arguments():
    layer = KANLayer(8, 6, "random_normal", 32, 4.0, "B-spline")
    assert (layer.variant, layer.deterministic, layer.num_control_points) == ("B-spline", None, 32)
    assert KANLayer(8, 6, "random_normal", 32, 4.0, "B-spline", "sparse_matmul_csr").impl == \
        "sparse_matmul_csr"
    with pytest.raises(TypeError):  # deterministic is keyword-only
        KANLayer(8, 6, "random_normal", 32, 4.0, "B-spline", "embedding_bag", True)
    with pytest.raises(ValueError, match="variant must be 'B-spline'.*'parallel_scan'"):
        KANLayer(8, 6, "random_normal", variant="parallel_scan")
    with pytest.raises(ValueError, match="impl must be one of.*'dense'"):
        KANLayer(8, 6, "random_normal", impl="dense")


@pytest.mark.parametrize("k,width", [(32, 4.0), (9, 2.5)])
def test_kanditioned_checkpoint_gives_the_same_outputs(k, width):
    torch.manual_seed(0)
    state = _kanditioned_state(5, k, 3)
    layer = KANLayer(5, 3, "zero", k, width)
    layer.load_state_dict(state)
    x = torch.randn(200, 5) * width  # inside and well outside the grid
    torch.testing.assert_close(layer(x), kanditioned_forward(x, state["kan_weight"], width),
                               rtol=1e-5, atol=1e-5)


def test_kanditioned_identity_init_is_a_scaled_identity():
    """Its "identity" puts node k at k - (K-1)/2: y = x (K-1) / spline_width."""
    k, width = 17, 4.0
    centred = (torch.arange(k) - (k - 1) / 2).view(1, -1, 1)
    layer = KANLayer(3, 3, "zero", k, width)
    layer.load_state_dict(_kanditioned_state(3, k, 3, weight=centred * torch.eye(3).unsqueeze(1)))
    x = torch.randn(50, 3)
    torch.testing.assert_close(layer(x), x * (k - 1) / width, rtol=1e-5, atol=1e-5)


def test_kanditioned_checkpoint_of_other_sizes_is_refused():
    layer = KANLayer(5, 3, "zero", 16, 4.0)
    with pytest.raises(RuntimeError, match=r"kan_weight.*\[5, 16, 3\].*\[5, 32, 3\]"):
        layer.load_state_dict(_kanditioned_state(5, 32, 3))
