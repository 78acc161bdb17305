"""Tests that kill mutants of utils.saliency which the behaviour tests let survive
(``python -m tools.mutation saliency``; results/mutation.md lists what is left)."""
import numpy as np
import pytest
import torch
from torch import nn

from utils import saliency


def test_rgb_batch_uint8_is_divided_by_255_into_float32():
    image = np.array([[0, 51], [255, 102]], dtype=np.uint8)
    x = saliency.rgb_batch(image)
    assert x.dtype == torch.float32 and x.shape == (1, 3, 2, 2)
    expected = torch.tensor([[0.0, 0.2], [1.0, 0.4]])
    for channel in x[0]:
        torch.testing.assert_close(channel, expected, rtol=0, atol=1e-7)


def test_rgb_batch_floats_at_both_ends_of_the_range_are_accepted():
    image = np.array([[0.0, 1.0], [0.5, 0.25]], dtype=np.float64)
    x = saliency.rgb_batch(image)
    assert x.dtype == torch.float32
    assert torch.equal(x[0, 0], torch.from_numpy(image).float())


@pytest.mark.parametrize("values", [np.array([[0, 1], [1, 0]], dtype=np.int64),
                                    np.array([[0.0, 1.5], [0.2, 0.3]]),
                                    np.array([[-0.1, 1.0], [0.2, 0.3]])], ids=["int64", "above 1", "below 0"])
def test_rgb_batch_rejects_other_dtypes_and_ranges_naming_them(values):
    with pytest.raises(ValueError, match=f"expected uint8 images or floats in \\[0, 1\\], got {values.dtype}"):
        saliency.rgb_batch(values)


def test_rgb_batch_shape_error_names_the_shape_and_the_rgba_remedy():
    with pytest.raises(ValueError) as error:
        saliency.rgb_batch(np.zeros((8, 8, 4), dtype=np.uint8))
    assert str(error.value) == ("expected (H, W), (H, W, 3) or a batch of them; got shape (8, 8, 4) "
                                "(RGBA: convert to RGB first, e.g. PIL .convert('RGB'))")


def test_rgb_batch_colour_images_keep_their_channels():
    image = np.random.default_rng(0).random((2, 4, 5, 3))
    x = saliency.rgb_batch(image)
    assert x.shape == (2, 3, 4, 5)
    assert torch.equal(x, torch.from_numpy(image).float().permute(0, 3, 1, 2))


def test_guided_clamp_forward_is_the_clamp_and_keeps_no_upper_bound_for_relu():
    x = torch.tensor([-2.0, 0.0, 3.0, 7.0])
    assert torch.equal(saliency._GuidedClamp.apply(x, None), torch.tensor([0.0, 0.0, 3.0, 7.0]))
    assert torch.equal(saliency._GuidedClamp.apply(x, 6.0), torch.tensor([0.0, 0.0, 3.0, 6.0]))


def test_guided_clamp_backward_at_the_edges():
    x = torch.tensor([-1.0, 0.0, 1.0, 6.0, 7.0, 2.0], requires_grad=True)
    grad = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, -1.0])
    (relu6,) = torch.autograd.grad(saliency._GuidedClamp.apply(x, 6.0), x, grad)
    assert relu6.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]  # x = 0 and x = 6 pass nothing
    (relu,) = torch.autograd.grad(saliency._GuidedClamp.apply(x, None), x, grad)
    assert relu.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0]


def test_guided_relus_counts_and_patches_relu_and_relu6_only():
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(), nn.Sigmoid())
    with saliency.guided_relus(model) as patched:
        assert patched == 2
        assert "forward" in model[1].__dict__ and "forward" in model[2].__dict__
        assert "forward" not in model[3].__dict__
        assert model[2](torch.tensor([7.0])).item() == 6.0  # ReLU6 keeps its upper bound
    assert all("forward" not in m.__dict__ for m in model)


def test_nested_patch_error_counts_the_patched_modules():
    model = nn.Sequential(nn.ReLU(), nn.ReLU6())
    with (saliency.guided_relus(model), pytest.raises(RuntimeError, match="^2 ReLU modules already"),
          saliency.guided_relus(model)):
        pass


def test_rgb_batch_a_list_of_equal_images_is_a_batch_and_float32_is_accepted():
    images = [np.full((2, 5), 0.5, dtype=np.float32), np.zeros((2, 5), dtype=np.float32)]
    x = saliency.rgb_batch(images)
    assert x.shape == (2, 3, 2, 5)
    assert x[0].unique().tolist() == [0.5] and x[1].unique().tolist() == [0.0]


def test_rgb_batch_messages_name_the_shapes():
    with pytest.raises(ValueError) as raised:
        saliency.rgb_batch([np.zeros((2, 2)), np.zeros((3, 3))])
    assert str(raised.value) == "images must all have the same shape, got [(2, 2), (3, 3)]"
    with pytest.raises(ValueError) as raised:
        saliency.rgb_batch(np.zeros((0, 5), dtype=np.float32))
    assert str(raised.value) == "images are empty: shape (0, 5)"


def test_no_gradient_path_message_in_full():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError) as raised:
        saliency.guided_backprop(model, torch.ones(1, 3, 2, 2), lambda out: out.detach()[:, 0])
    assert str(raised.value) == (
        "the target scores do not depend on the images (no gradient path): a target callable that "
        "detaches the logits, or a forward pass under torch.no_grad() inside the model; guided "
        "backprop would be all zeros")
