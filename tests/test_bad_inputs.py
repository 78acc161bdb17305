"""Bad inputs to the Grad-CAM, saliency, multilabel and figure helpers: each gives a clear
error that names the problem, or the right result. Every test here failed on the earlier code,
which crashed obscurely (AttributeError, ZeroDivisionError), blamed the wrong cause, or
returned silent garbage (mixed batch-norm statistics, all-zero gradients, a loss of 30.5)."""
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
    with pytest.raises(TypeError, match="nn.Module"), cam.evaluation_mode(lambda x: x):
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


# --- multilabel: labels must be 0/1, logits finite -----------------------------------------------

def single_positive_batch():
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    return torch.randn(2, 4, generator=torch.Generator().manual_seed(0)), labels, labels.bool()


@pytest.mark.parametrize("scale, shift, example", [(255, 0, "255.0"), (2, -1, "-1.0")], ids=["0-255", "-1/1"])
def test_labels_other_than_zero_one_are_refused(scale, shift, example):
    logits, labels, observed = single_positive_batch()
    bad = labels * scale + shift
    with pytest.raises(ValueError, match=f"labels must be 0 or 1.*e.g. {example}"):
        multilabel.assume_negative_bce(logits, bad)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        multilabel.large_loss_bce(logits, bad, observed, 2, "LL-R")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_logits_are_refused(value):
    logits, labels, observed = single_positive_batch()
    logits[1, 3] = value
    with pytest.raises(ValueError, match="logits contain 1 NaN or infinite"):
        multilabel.assume_negative_bce(logits, labels)
    for mode in multilabel.LL_MODES:  # a NaN loss would have switched the selection off
        with pytest.raises(ValueError, match="logits contain 1 NaN or infinite"):
            multilabel.large_loss_bce(logits, labels, observed, 2, mode)


def test_large_loss_selection_is_unchanged_by_the_checks():
    logits, labels, observed = single_positive_batch()
    out = multilabel.large_loss_bce(logits, labels, observed, 2, "LL-R")
    losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    top2 = losses.masked_fill(observed, -1).flatten().topk(2).indices
    assert sorted(out.selected.flatten().nonzero().flatten().tolist()) == sorted(top2.tolist())


@pytest.mark.parametrize("call, error, match", [
    (lambda: multilabel.assume_negative_bce(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3)),
     TypeError, "logits must be a float tensor, got torch.int64"),
    (lambda: multilabel.large_loss_bce(torch.zeros(1, 3), torch.tensor([[1.0, 0, 0]]), [[True, False, False]],
                                       1, "LL-R"), ValueError, "observed must be a bool tensor"),
    (lambda: multilabel.large_loss_bce(torch.zeros(1, 3), torch.tensor([[1.0, 0, 0]]),
                                       torch.tensor([[True, False, False]]), 1.0, "LL-R"),
     ValueError, "k must be an integer >= 0, got 1.0"),
    (lambda: multilabel.large_loss_k(8.5, 5, 2, 0.005, "LL-R"), TypeError, "must be integers, got 8.5"),
    (lambda: multilabel.large_loss_k(8, 5, 2, "0.1", "LL-R"), ValueError, "delta_rel must be a number"),
    (lambda: multilabel.single_positive_labels(torch.ones(2, 2), 1.7), TypeError, "seed must be an int, got 1.7"),
])
def test_multilabel_argument_types(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- figures -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint16, np.int64, np.complex64])
def test_image_dtype_is_named_not_normalisation(dtype):
    with pytest.raises(TypeError, match=f"image dtype {np.dtype(dtype).name} is not shown"):
        viz.to_numpy_image(np.full((4, 4), 3, dtype=dtype))


def test_bool_image_is_shown_as_black_and_white():
    image = np.eye(3, dtype=bool)
    assert np.array_equal(viz.to_numpy_image(image), np.repeat(np.eye(3)[..., None], 3, axis=2))


@pytest.mark.parametrize("call, match", [
    (lambda: viz.to_numpy_image(np.zeros((0, 5))), "image is empty"),
    (lambda: viz.overlay(np.zeros((0, 0)), np.zeros((0, 0))), "image is empty"),
    (lambda: viz.show_grid([np.zeros((4, 4))], ncols=0), "ncols must be a positive int, got 0"),
    (lambda: viz.show_grid([np.zeros((4, 4))], ncols=-1), "ncols must be a positive int, got -1"),
    (lambda: viz.show_grid([np.zeros((4, 4))], ncols=2.5), "ncols must be a positive int, got 2.5"),
    (lambda: viz.show_grid([np.zeros((4, 4))], size=0), "size .* positive and finite, got 0"),
    (lambda: viz.show_grid([np.zeros((4, 4))], size=float("nan")), "positive and finite, got nan"),
    (lambda: viz.show_grid([np.full((4, 4), np.nan)], cmap="magma"), "heatmap 0 .* NaN"),
    (lambda: viz.draw_box(None, (1, 2, 3)), "box must be 4 finite numbers"),
    (lambda: viz.draw_box(None, (1, 2, 3, float("nan"))), "box must be 4 finite numbers"),
    (lambda: viz.markdown_table(["a"], [[1.0]], digits=-1), "digits must be an int >= 0, got -1"),
    (lambda: viz.markdown_table(["a", "b"], ["ab"]), "not a string"),
])
def test_figure_helpers_name_the_bad_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_show_grid_takes_any_iterable_of_images():
    fig = viz.show_grid(np.zeros((k, 4, 4)) for k in (1, 3))
    assert len([ax for ax in fig.axes if ax.images]) == 2
    matplotlib.pyplot.close(fig)


# --- CAM helpers, metrics, cost, hooks, images ---------------------------------------------------

@pytest.mark.parametrize("call, error, match", [
    (lambda: cam.upsample_maps(torch.zeros(1, 1, 2, 2), (float("nan"), 3)), ValueError, "size must be"),
    (lambda: cam.upsample_maps(torch.zeros(1, 1, 2, 2), 3.5), ValueError, "size must be .* got 3.5"),
    (lambda: cam.upsample_maps(torch.zeros(1, 1, 2, 2, dtype=torch.long), 4), TypeError, "float tensor.*int64"),
    (lambda: cam.cam_to_boxes(np.ones((3, 3)), "0.2"), ValueError, "rel_threshold must be a number"),
    (lambda: cam.boostlu(torch.ones(2), "5"), ValueError, "alpha must be a number >= 1.*'5'"),
    (lambda: cam.grad_cam(torch.zeros(0, 2, 2, 2), torch.zeros(0, 2, 2, 2)), ValueError, "empty batch"),
    (lambda: cam.grad_cam(torch.zeros(1, 2, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, 2, dtype=torch.long)),
     TypeError, "float tensors"),
    (lambda: cam.grad_cam(torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2, 2), float("nan"))),
     ValueError, "gradients contains NaN"),
])
def test_cam_helpers_name_the_bad_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_upsample_accepts_numpy_integer_sizes():
    out = cam.upsample_maps(torch.zeros(1, 1, 2, 2), (np.int64(4), np.int32(6)))
    assert out.shape == (1, 1, 4, 6)


def test_pointing_game_nan_tolerance_is_an_error_not_all_misses():
    from utils import metrics

    with pytest.raises(ValueError, match="tolerance_px must be finite"):
        metrics.pointing_game(np.zeros((1, 5, 5)), [(0, 0, 1, 1)], tolerance_px=float("nan"))


@pytest.mark.parametrize("call, error, match", [
    ("conv_output_size(8, 3, padding=1.5)", ValueError, "padding must be an int >= 0, got 1.5"),
    ("conv_output_size(8, 3, padding=float('nan'))", ValueError, "padding must be an int"),
    ("conv2d_madds(3, 3, 3, (4, 4))", ValueError, "kernel must be a pair"),
    ("conv2d_madds(3, 3, (3,), (4, 4))", ValueError, "kernel must be a pair"),
    ("conv2d_madds(3, 3, (3, 3), 4)", ValueError, "out_size must be a pair"),
    ("count(nn.Linear(3, 2), torch.zeros(0, 3))", ValueError, "at least one input"),
    ("count(lambda x: x, torch.zeros(2, 3))", TypeError, "nn.Module, got function"),
    ("latency(lambda: None, threads=0)", ValueError, "threads must be a positive int"),
    ("latency(3)", TypeError, "fn must be a callable"),
    ("peak_memory(3)", TypeError, "fn must be a callable"),
])
def test_cost_helpers_name_the_bad_argument(call, error, match):
    from utils import cost

    with pytest.raises(error, match=match):
        eval(f"cost.{call}", {"cost": cost, "nn": nn, "torch": torch})


@pytest.mark.parametrize("call, match", [
    (lambda h: h.record(lambda x: x, ["a"]).__enter__(), "nn.Module, got function"),
    (lambda h: h.record(nn.Linear(2, 2), [None]).__enter__(), "strings.*got None"),
    (lambda h: h.find_module(nn.Linear(2, 2), 3), "strings.*got 3"),
    (lambda h: h.count_hooks(3), "nn.Module, got int"),
])
def test_hooks_name_the_bad_argument(call, match):
    from utils import hooks

    with pytest.raises(TypeError, match=match):
        call(hooks)


@pytest.mark.parametrize("images, match", [
    ([np.zeros((2, 2)), np.zeros((3, 3))], "same shape"),
    (np.full((2, 2), np.nan), "floats in \\[0, 1\\].*nan"),
    (np.zeros((0, 0), np.float32), "images are empty"),
])
def test_rgb_batch_names_the_problem(images, match):
    with pytest.raises(ValueError, match=match):
        saliency.rgb_batch(images)


# --- generators of the offline data -----------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda s: s.mask_box(np.ones((2, 2, 2))), "must be 2-D \\(H, W\\), got shape \\(2, 2, 2\\)"),
    (lambda s: s.mask_box(np.ones(3)), "must be 2-D"),
    (lambda s: s.raw_intensity_baseline(np.full((2, 1, 4, 4), np.nan), np.zeros((1, 1, 4, 4))), "NaN"),
    (lambda s: s.raw_intensity_baseline(np.random.rand(2, 1, 4, 4), np.full((1, 1, 4, 4), np.inf)), "NaN"),
    (lambda s: s.raw_intensity_baseline(np.random.rand(2, 1, 4, 4), np.zeros((1, 1, 4, 4)), sigma=np.nan),
     "sigma must be finite and >= 0"),
    (lambda s: s.raw_intensity_baseline(np.random.rand(2, 1, 4, 4), np.zeros((1, 1, 4, 4)), sigma=-1),
     "sigma must be finite and >= 0"),
    (lambda s: s.raw_intensity_baseline(np.random.rand(2, 1, 4, 4), np.zeros((0, 1, 4, 4))),
     "at least one test image"),
    (lambda s: s.raw_intensity_baseline(np.random.rand(2, 1, 0, 4), np.zeros((1, 1, 0, 4))),
     "at least one test image with pixels"),
    (lambda s: s.render_localization_image(0, -1), "indices must be non-negative.*-1"),
    (lambda s: s.render_multilabel_image(0, -1), "indices must be non-negative.*-1"),
])
def test_generators_name_the_bad_argument(call, match):
    from utils import synthetic

    with pytest.raises(ValueError, match=match):
        call(synthetic)


def test_raw_baseline_sigma_zero_is_the_plain_z_score():
    from utils import synthetic

    train = np.stack([np.zeros((1, 2, 2)), np.full((1, 2, 2), 2.0)])
    scores, maps = synthetic.raw_intensity_baseline(train, np.full((1, 1, 2, 2), 3.0), sigma=0)
    np.testing.assert_allclose(maps, np.full((1, 2, 2), 2 / (1 + 1e-6)))
    np.testing.assert_allclose(scores, [2 / (1 + 1e-6)])


@pytest.mark.parametrize("sigma", [float("nan"), float("inf"), 0.0, -1.0])
def test_gaussian_blur_names_a_sigma_that_is_not_a_finite_positive_number(sigma):
    from utils import anomaly

    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        anomaly.gaussian_blur(torch.zeros(1, 8, 8), sigma)


def test_gaussian_kernel_names_a_truncate_that_is_not_finite():
    from utils import anomaly

    with pytest.raises(ValueError, match="truncate must be a finite number > 0"):
        anomaly.gaussian_kernel(1.0, truncate=float("nan"))
