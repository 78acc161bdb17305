"""Device discipline without a GPU: the ``meta`` device stands in for an accelerator.

A model rebuilt from a state dict must land on the device of the tensors it is compared with
(chapter 06 once rebuilt its PaDiM on the CPU while the fitted model and the embeddings were
on CUDA, and scored on the CPU with other roundings); a fitted PaDiM holds all its tensors on
one device; and scoring embeddings that live elsewhere is a clear error, not a silent copy.
"""
import io

import pytest
import torch
from torch import nn

from utils import models
from utils.padim import PaDiM

META = torch.device("meta")


def fitted_padim(n_features: int = 8, n_dims: int = 5, seed: int = 77) -> PaDiM:
    train = torch.randn(15, n_features, 3, 4, generator=torch.Generator().manual_seed(0))
    return PaDiM(n_features, n_dims, seed=seed).fit(train)


def saved(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    models.save_state(model, buffer)
    return buffer.getvalue()


def test_round_trip_lands_on_the_device_of_the_fitted_model():
    fitted = fitted_padim()
    blob = saved(fitted)
    fitted.to(META)  # the fitted model now lives on the "accelerator"
    # chapter 06's old pattern: a fresh model on the CPU and a plain load_state_dict stays on the CPU
    stale = PaDiM(8, 5, seed=0)
    stale.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
    assert models.model_device(stale) != models.model_device(fitted)
    # the packaged helper puts it where the fitted model is, with the saved shapes
    restored = models.load_state(PaDiM(8, 5, seed=0), blob, device=models.model_device(fitted))
    assert models.model_device(restored) == META
    assert restored.whitening.shape == fitted.whitening.shape == (12, 5, 5)
    assert all(t.device == META for t in (*restored.buffers(), *restored.parameters()))


def test_scoring_embeddings_on_another_device_is_a_clear_error():
    model = fitted_padim()
    model.to(META)
    with pytest.raises(ValueError, match="embeddings are on cpu, the fitted model on meta"):
        model(torch.randn(2, 8, 3, 4))


def test_load_state_defaults_to_the_models_device_and_gives_identical_maps():
    fitted = fitted_padim()
    test = torch.randn(4, 8, 3, 4, generator=torch.Generator().manual_seed(1))
    restored = models.load_state(PaDiM(8, 5, seed=0), saved(fitted))
    assert int(restored.seed) == 77 and torch.equal(restored(test), fitted(test))
    from_file = io.BytesIO(saved(fitted))
    assert torch.equal(models.load_state(PaDiM(8, 5), from_file, "cpu")(test), fitted(test))


def test_a_fitted_padim_lives_on_one_device():
    fitted = fitted_padim()
    assert {t.device for t in fitted.buffers()} == {torch.device("cpu")}
    assert models.model_device(fitted) == torch.device("cpu")


def test_model_device_names_a_split_model():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2, device=META))
    with pytest.raises(ValueError, match=r"spread over several devices: \['cpu', 'meta'\]"):
        models.model_device(model)
    assert models.model_device(nn.ReLU()) == torch.device("cpu")


def test_load_state_moves_an_ordinary_network_and_maps_its_tensors():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    restored = models.load_state(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), saved(net), META)
    assert models.model_device(restored) == META
    assert restored[1].running_mean.device == META


def test_padim_scores_in_full_float32_under_any_policy(monkeypatch):
    # under the fast policy (TF32 allowed) a GPU would score with ~1e-3 relative error; the
    # scoring products must see TF32 off, and the caller's setting must come back afterwards
    model, test = fitted_padim(), torch.randn(2, 8, 3, 4)
    seen = []
    bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a, **k: seen.append(
        (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32)) or bmm(*a, **k))
    previous = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("high")
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        model(test)
        assert seen and set(seen) == {("highest", False)}
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.set_float32_matmul_precision(previous[0])
        torch.backends.cuda.matmul.allow_tf32 = previous[1]
