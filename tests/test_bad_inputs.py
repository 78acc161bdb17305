"""Bad inputs to the Grad-CAM, saliency, multilabel and figure helpers: each gives a clear
error that names the problem, or the right result. Every test here failed on the earlier code,
which crashed obscurely (AttributeError, ZeroDivisionError), blamed the wrong cause, or
returned silent garbage (mixed batch-norm statistics, all-zero gradients, a loss of 30.5)."""
import math

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from utils import cam, multilabel, saliency, viz

matplotlib.use("Agg")


class BatchNormNet(nn.Module):
    """conv -> batch norm -> ReLU -> conv ("feat") -> ReLU -> GAP -> linear, with dropout."""

    def __init__(self, track_running_stats: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6, track_running_stats=track_running_stats)
        self.feat = nn.Conv2d(6, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = self.relu(self.feat(self.relu(self.bn(self.conv(x)))))
        return self.fc(self.drop(h.mean(dim=(2, 3))))


def buffers(model):
    return {name: b.clone() for name, b in model.named_buffers()}


def assert_buffers_identical(model, before):
    after = dict(model.named_buffers())
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name  # bit for bit


def images(n=3, seed=1):
    return torch.randn(n, 3, 10, 10, generator=torch.Generator().manual_seed(seed))


# --- train mode: evaluated in eval mode, the model left exactly as it was ----------------------

@pytest.mark.parametrize("method", ["grad_cam", "guided"])
def test_train_mode_maps_do_not_mix_images_and_buffers_are_untouched(method):
    model = BatchNormNet().train()
    model.bn.running_mean += 0.3  # statistics that differ from any batch's own
    model.bn.running_var *= 2.0
    model.drop.eval()  # one module in another mode than its parent: both flags restored
    before = buffers(model)
    x = images()

    def run(batch, targets):
        if method == "grad_cam":
            return cam.layer_grad_cam(model, batch, "feat", targets)[0]
        return saliency.guided_backprop(model, batch, targets)

    together = run(x, [0, 1, 2])
    one_by_one = torch.cat([run(x[i:i + 1], i) for i in range(3)])
    torch.testing.assert_close(together, one_by_one, rtol=0, atol=1e-6)
    assert_buffers_identical(model, before)
    assert model.training and model.bn.training and not model.drop.training
    reference = BatchNormNet().eval()
    reference.load_state_dict(model.state_dict())
    if method == "grad_cam":
        expected = cam.layer_grad_cam(reference, x, "feat", [0, 1, 2])[0]
    else:
        expected = saliency.guided_backprop(reference, x, [0, 1, 2])
    assert torch.equal(together, expected)


@pytest.mark.parametrize("method", ["grad_cam", "guided"])
def test_train_mode_restored_also_when_the_call_raises(method):
    model = BatchNormNet().train()
    before = buffers(model)
    with pytest.raises(ValueError, match="target classes must be in"):
        if method == "grad_cam":
            cam.layer_grad_cam(model, images(), "feat", 9)
        else:
            saliency.guided_backprop(model, images(), 9)
    assert_buffers_identical(model, before)
    assert all(m.training for m in model.modules())


def test_buffers_restored_even_if_the_model_writes_them_in_eval_mode():
    class Counter(BatchNormNet):
        def forward(self, x):
            self.bn.num_batches_tracked += 1  # a buffer written on every call
            return super().forward(x)

    model = Counter().train()
    before = buffers(model)
    cam.layer_grad_cam(model, images(), "feat", 1)
    assert_buffers_identical(model, before)


def test_batch_norm_without_running_statistics_is_refused():
    model = BatchNormNet(track_running_stats=False).eval()
    with pytest.raises(ValueError, match="without running statistics.*bn"):
        cam.layer_grad_cam(model, images(), "feat", 0)
    with pytest.raises(ValueError, match="without running statistics"):
        saliency.guided_backprop(model, images(), 0)


def test_evaluation_mode_needs_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        with cam.evaluation_mode(lambda x: x):
            pass


# --- models that return a tuple or a dict --------------------------------------------------------

class TupleNet(BatchNormNet):
    def forward(self, x):
        return super().forward(x), x.mean()


class DictNet(BatchNormNet):
    def forward(self, x):
        return {"logits": super().forward(x), "aux": x.mean()}


@pytest.mark.parametrize("make", [TupleNet, DictNet])
def test_tuple_or_dict_output_with_a_class_index_names_the_type_and_the_way_out(make):
    model = make().eval()
    kind = "tuple" if make is TupleNet else "dict"
    with pytest.raises(TypeError, match=f"returned a {kind}.*callable target"):
        cam.layer_grad_cam(model, images(), "feat", 1)
    with pytest.raises(TypeError, match=f"returned a {kind}.*callable target"):
        saliency.guided_backprop(model, images(), 1)


@pytest.mark.parametrize("make, pick", [(TupleNet, lambda out: out[0]), (DictNet, lambda out: out["logits"])])
def test_tuple_or_dict_output_with_a_callable_target_gives_the_plain_answer(make, pick):
    model, plain = make().eval(), BatchNormNet().eval()
    x = images()
    maps, output = cam.layer_grad_cam(model, x, "feat", lambda out: pick(out)[:, 2])
    expected_maps, logits = cam.layer_grad_cam(plain, x, "feat", 2)
    assert torch.equal(maps, expected_maps)
    assert torch.equal(pick(output), logits) and not pick(output).requires_grad
    guided = saliency.guided_backprop(model, x, lambda out: pick(out)[:, 2])
    assert torch.equal(guided, saliency.guided_backprop(plain, x, 2))


def test_target_scores_without_a_batch_size_needs_a_tensor():
    with pytest.raises(TypeError, match="expected \\(B, K\\) logits, got a tuple"):
        cam.target_scores((torch.zeros(2, 3),), 0)


@pytest.mark.parametrize("target, error, match", [
    (torch.tensor([0.7, 1.2]), TypeError, "integers, got torch.float32"),
    (1.5, TypeError, "integers, got torch.float32"),
    (torch.tensor([True, False]), TypeError, "integers, got torch.bool"),
    ([0, 1, 2], ValueError, "got 3 targets for a batch of 2"),
    (-1, ValueError, "must be in \\[0, 3\\)"),
    (3, ValueError, "must be in \\[0, 3\\)"),
    (lambda logits: logits, ValueError, "one score per image, shape \\(2,\\), got \\(2, 3\\)"),
    (lambda logits: 1.0, ValueError, "one score per image.*got float"),
])
def test_target_scores_bad_targets(target, error, match):
    with pytest.raises(error, match=match):
        cam.target_scores(torch.zeros(2, 3), target)


def test_target_scores_class_index_needs_two_dimensional_logits():
    with pytest.raises(ValueError, match="need \\(B, K\\) logits, got shape \\(2, 3, 1\\)"):
        cam.target_scores(torch.zeros(2, 3, 1), 0)


# --- inference mode, detached targets and bad images --------------------------------------------

@pytest.mark.parametrize("method", ["grad_cam", "guided"])
def test_inference_mode_is_a_clear_error_not_zeros(method):
    model = BatchNormNet().eval()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode.*outside"):
        if method == "grad_cam":
            cam.layer_grad_cam(model, images(), "feat", 1)
        else:
            saliency.guided_backprop(model, images(), 1)


def test_images_made_in_inference_mode_work_once_it_is_left():
    model = BatchNormNet().eval()
    with torch.inference_mode():
        x = images()
    assert x.is_inference()
    expected = saliency.guided_backprop(model, images(), 1)
    assert torch.equal(saliency.guided_backprop(model, x, 1), expected)
    assert torch.equal(cam.layer_grad_cam(model, x, "feat", 1)[0],
                       cam.layer_grad_cam(model, images(), "feat", 1)[0])


def test_no_grad_around_the_call_is_fine():
    model = BatchNormNet().eval()
    expected = saliency.guided_backprop(model, images(), 1)
    with torch.no_grad():
        assert torch.equal(saliency.guided_backprop(model, images(), 1), expected)


@pytest.mark.parametrize("target", [lambda out: out.detach()[:, 0],
                                    lambda out: torch.zeros(len(out)),
                                    ], ids=["detached", "constant"])
def test_guided_backprop_without_a_gradient_path_is_an_error_not_zeros(target):
    with pytest.raises(ValueError, match="do not depend on the images"):
        saliency.guided_backprop(BatchNormNet().eval(), images(), target)


def test_guided_backprop_target_from_parameters_only_is_an_error():
    model = BatchNormNet().eval()
    with pytest.raises(ValueError, match="do not depend on the images"):
        saliency.guided_backprop(model, images(), lambda out: model.fc.bias[:1].expand(len(out)))


@pytest.mark.parametrize("bad, error, match", [
    (torch.zeros(3, 10, 10), ValueError, "\\(B, C, H, W\\)"),
    (np.zeros((1, 3, 10, 10), dtype=np.float32), ValueError, "\\(B, C, H, W\\)"),
    (torch.zeros(0, 3, 10, 10), ValueError, "at least one non-empty image"),
    (torch.zeros(2, 3, 0, 10), ValueError, "at least one non-empty image"),
    (torch.zeros(1, 3, 10, 10, dtype=torch.uint8), TypeError, "float tensor.*uint8"),
    (torch.full((1, 3, 10, 10), float("nan")), ValueError, "images contains NaN"),
    (torch.full((1, 3, 10, 10), float("inf")), ValueError, "images contains NaN or infinite"),
])
@pytest.mark.parametrize("method", ["grad_cam", "guided"])
def test_bad_images_are_named(method, bad, error, match):
    model = BatchNormNet().eval()
    with pytest.raises(error, match=match):
        if method == "grad_cam":
            cam.layer_grad_cam(model, bad, "feat", 0)
        else:
            saliency.guided_backprop(model, bad, 0)
