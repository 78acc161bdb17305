"""Errors that say what is wrong (issue 15, section 2).

Bad input to the utils functions raises an error naming the problem and what was expected,
not a bare library exception (ZeroDivisionError, torch's LinAlgError, numpy's reshape error,
FileExistsError from mkdir) and not silent NaN scores. Tests marked "already clear" pin down
messages that were already good; every other test failed on the code before this change.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from utils import anomaly, config, hooks, metrics
from utils.padim import PaDiM


def embeddings(n: int, c: int = 6, h: int = 3, w: int = 4, seed: int = 0) -> torch.Tensor:
    """``(n, c, h, w)`` random embeddings with correlated channels."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(c, c, generator=g)
    return torch.einsum("dc,nchw->ndhw", mixing, torch.randn(n, c, h, w, generator=g)) + 3.0


def with_bad_value(x: torch.Tensor, value: float) -> torch.Tensor:
    """A copy of ``x`` with one entry replaced by ``value`` (NaN or inf)."""
    x = x.clone()
    x[0, 1, 2, 3] = value
    return x


# --- PaDiM ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_padim_fit_names_nan_or_inf_and_stays_unfitted(value):
    model = PaDiM(6)
    with pytest.raises(ValueError, match="training embeddings contain NaN or inf"):
        model.fit(with_bad_value(embeddings(8), value))
    assert not model.fitted


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_padim_scoring_nan_or_inf_is_an_error_not_nan_scores(value):
    model = PaDiM(6).fit(embeddings(8))
    with pytest.raises(ValueError, match=r"embeddings contain NaN or inf values: 1 of 24 patch scores"):
        model(with_bad_value(embeddings(2, seed=1), value))


def test_padim_too_few_images_with_eps_zero_names_eps_and_the_rank():
    model = PaDiM(6, eps=0.0)
    with pytest.raises(ValueError, match=r"not positive-definite with eps=0: 3 training images give a "
                                         r"covariance of rank at most 2.*use a positive eps"):
        model.fit(embeddings(3))
    assert not model.fitted


def test_padim_constant_channel_with_eps_zero_names_the_position_and_eps():
    x = embeddings(20)
    x[:, 2, 1, 3] = 5.0  # zero variance at grid position (1, 3)
    with pytest.raises(ValueError, match=r"position \(1, 3\) is not positive-definite with eps=0: "
                                         r"some kept channels are constant.*use a positive eps"):
        PaDiM(6, eps=0.0).fit(x)
    PaDiM(6).fit(x)  # the default eps makes it positive-definite


@pytest.mark.parametrize("shape", [(0, 6, 3, 4), (4, 6, 0, 4)])
def test_padim_fit_on_an_empty_batch_needs_at_least_one(shape):
    with pytest.raises(ValueError, match="needs at least one image and one position"):
        PaDiM(6).fit(torch.zeros(shape))


def test_padim_scoring_an_empty_batch_needs_at_least_one():
    model = PaDiM(6).fit(embeddings(4))
    with pytest.raises(ValueError, match="needs at least one image and one position"):
        model(torch.zeros(0, 6, 3, 4))


def test_padim_no_training_batches_is_clear():  # already clear
    with pytest.raises(ValueError, match="at least 2 training images, got 0"):
        PaDiM(6).fit([])


def test_padim_scoring_other_channels_names_both_counts():  # already clear
    model = PaDiM(6).fit(embeddings(4))
    with pytest.raises(ValueError, match="embeddings have 5 channels, the model expects 6"):
        model(embeddings(2, c=5))


# --- utils.anomaly --------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda m: anomaly.gaussian_blur(m, 1.0),
    lambda m: anomaly.image_scores(m),
    lambda m: anomaly.anomaly_maps(m, 16),
], ids=["gaussian_blur", "image_scores", "anomaly_maps"])
def test_maps_without_pixels_need_at_least_one(call):
    with pytest.raises(ValueError, match=r"need at least one pixel each, got shape \(2, 0, 4\)"):
        call(torch.zeros(2, 0, 4))


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8])
def test_anomaly_maps_refuses_to_resample_integer_distances(dtype):
    with pytest.raises(TypeError, match="distances must be a float tensor.*convert with .float()"):
        anomaly.anomaly_maps(torch.ones(2, 3, 4, dtype=dtype), 16, sigma=None)


def test_embed_refuses_integer_images():  # already clear (utils.models.normalize)
    net = nn.Sequential(nn.Conv2d(3, 4, 1))
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"expected float images in \[0, 1\].*divide uint8 by 255"):
        next(anomaly.embed(net, images, {"a": "0"}, "efficientnet_lite0"))


def test_knn_patch_scores_without_training_patches():
    with pytest.raises(ValueError, match="needs at least one training patch"):
        anomaly.knn_patch_scores(torch.zeros(0, 6, 3, 4), embeddings(2))


@pytest.mark.parametrize("train", [[], torch.zeros(0, 6, 3, 4)], ids=["no batches", "empty batch"])
def test_fit_pca_without_training_vectors(train):
    with pytest.raises(ValueError, match="fit_pca needs at least one training patch vector"):
        anomaly.fit_pca(train, 2)


def test_evaluate_on_an_empty_test_set():
    with pytest.raises(ValueError, match="needs at least one image score"):
        anomaly.evaluate(torch.zeros(0, 3, 4), torch.zeros(0, 16, 16, dtype=torch.bool), torch.zeros(0))


# --- utils.metrics --------------------------------------------------------------------------------
# AUROC with a single class present is already tested in tests/test_metrics_anomaly.py.

def test_image_auroc_without_scores():
    with pytest.raises(ValueError, match="image_auroc needs at least one image score"):
        metrics.image_auroc([], [])


@pytest.mark.parametrize("shape", [(0, 4, 4), (2, 0, 0)])
@pytest.mark.parametrize("metric", [metrics.pixel_auroc, metrics.pro_score, metrics.pro_curve])
def test_pixel_metrics_without_pixels(metric, shape):
    with pytest.raises(ValueError, match="need at least one map with at least one pixel"):
        metric(np.zeros(shape), np.zeros(shape, dtype=bool))


@pytest.mark.parametrize("maps, boxes", [(np.zeros((0, 4, 4)), np.zeros((0, 4))),
                                         (np.zeros((1, 0, 4)), np.array([[0, 0, 1, 1]]))])
def test_pointing_game_without_pixels(maps, boxes):
    with pytest.raises(ValueError, match="pointing_game needs at least one map with at least one pixel"):
        metrics.pointing_game(maps, boxes)


# --- utils.config ---------------------------------------------------------------------------------

def test_cache_dir_that_is_a_file_names_path_and_variable(tmp_path, monkeypatch):
    target = tmp_path / "cache"
    target.write_text("")
    monkeypatch.setenv(config.CACHE_ENV, str(target))
    expected = rf"{re.escape(str(target))}.*from \$CVBOOK_CACHE.*is an existing file, not a folder"
    with pytest.raises(FileExistsError, match=expected):
        config.cache_dir()


def test_cache_dir_below_a_file_cannot_be_created(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "cache"
    monkeypatch.setenv(config.CACHE_ENV, str(target))
    with pytest.raises(OSError, match=rf"{re.escape(str(target))}.*from \$CVBOOK_CACHE.*cannot be created"):
        config.cache_dir()


# --- utils.hooks ----------------------------------------------------------------------------------

class Outputs(nn.Module):
    """A module returning ``kind`` of tensors instead of one tensor."""

    def __init__(self, kind: type) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> object:
        return {"x": x} if self.kind is dict else self.kind([x, x])


@pytest.mark.parametrize("kind", [list, dict])
def test_hooked_module_with_non_tensor_output_names_module_and_type(kind):  # already clear
    net = nn.Sequential(Outputs(kind))
    with pytest.raises(TypeError, match=rf"module '0' returned a {kind.__name__}, not one tensor"):
        with hooks.record(net, ["0"]):
            net(torch.zeros(1, 2))
    assert hooks.count_hooks(net) == 0
