"""Tests of utils.patch_svdd (Patch SVDD chapter) and the shared evaluation in utils.anomaly."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tests.references import knn_brute_force, spread_double_loop
from utils import anomaly
from utils import patch_svdd as ps


def lively_encoder(seed: int = 0) -> ps.Encoder64:
    """An Encoder64 with He-normal weights and small random biases: codes that vary a lot
    between patches (PyTorch's default init gives nearly constant codes, a weak test)."""
    torch.manual_seed(seed)
    encoder = ps.Encoder64()
    for module in encoder.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_in))
            nn.init.normal_(module.bias, std=0.1)
    return encoder.eval()


def test_parameter_count_and_shapes():
    encoder = ps.Encoder64()
    assert sum(p.numel() for p in encoder.parameters()) == ps.N_PARAMETERS == 401_984
    assert encoder.enc(torch.zeros(2, 3, 32, 32)).shape == (2, ps.D, 1, 1)
    assert encoder(torch.zeros(2, 3, 64, 64)).shape == (2, ps.D, 1, 1)
    classifier = ps.PositionClassifier()
    assert classifier(torch.zeros(5, ps.D), torch.zeros(5, ps.D)).shape == (5, 8)


def test_encoder64_combines_the_four_quadrant_codes():
    encoder = lively_encoder()
    x = torch.randn(3, 3, 64, 64)
    codes = [encoder.enc(x[:, :, r:r + 32, c:c + 32]) for r in (0, 32) for c in (0, 32)]
    tiled = torch.cat([torch.cat(codes[:2], dim=3), torch.cat(codes[2:], dim=3)], dim=2)
    torch.testing.assert_close(encoder(x), encoder.head(tiled))


@pytest.mark.parametrize("size", [(96, 128), (101, 133)])
@pytest.mark.parametrize("k,stride", [(32, 4), (32, 8), (64, 16), (64, 8)])
def test_dense_codes_equal_patch_by_patch(size, k, stride):
    encoder = lively_encoder()
    images = torch.randn(2, 3, *size)
    dense = ps.dense_codes(encoder, images, k, stride)
    slow = ps.patch_codes(encoder, images, k, stride)
    assert dense.shape == slow.shape == (2, ps.D, ps.grid_size(size[0], k, stride), ps.grid_size(size[1], k, stride))
    assert slow.std() > 0.1  # the codes really vary
    torch.testing.assert_close(dense, slow, rtol=0, atol=1e-5)


@pytest.mark.parametrize("k,stride,size", [(5, 3, (17, 20)), (32, 4, (100, 130)), (64, 16, (130, 129)),
                                           (4, 4, (12, 12))])
def test_spread_equals_the_double_loop(k, stride, size):
    torch.manual_seed(1)
    h, w = ps.grid_size(size[0], k, stride), ps.grid_size(size[1], k, stride)
    scores = torch.rand(3, h, w, dtype=torch.float64)
    np.testing.assert_allclose(ps.spread(scores, k, stride, size).numpy(),
                               spread_double_loop(scores, k, stride, size), rtol=0, atol=1e-12)


def test_spread_by_hand():
    # two 2x2 patches at stride 1 on a 2x3 image: the middle column is covered by both
    got = ps.spread(torch.tensor([[[1.0, 3.0]]]), 2, 1, (2, 3))
    torch.testing.assert_close(got, torch.tensor([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]]))


def test_knn_exact_matches_brute_force_even_for_near_duplicates():
    torch.manual_seed(2)
    train = torch.tanh(torch.randn(6, 16, 5, 7))
    test = torch.tanh(torch.randn(3, 16, 4, 4))
    test[0] = train[0, :, :4, :4] + 1e-4 * torch.randn(16, 4, 4)  # distances ~1e-3
    got = anomaly.knn_patch_scores(train, test, exact=True, chunk=7)
    memory = train.permute(0, 2, 3, 1).reshape(-1, 16)
    want = knn_brute_force(memory, test.permute(0, 2, 3, 1).reshape(-1, 16)).reshape(3, 4, 4)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=1e-6)
    approx = anomaly.knn_patch_scores(train, test, chunk=7)
    np.testing.assert_allclose(approx.double().numpy(), want, atol=1e-2)


@pytest.mark.parametrize("k,size", [(32, (128, 128)), (64, (128, 128)), (64, (130, 200)), (16, (40, 33))])
def test_position_pairs_stay_inside_and_are_labelled_correctly(k, size):
    generator = torch.Generator().manual_seed(3)
    p1, p2, labels = ps.sample_position_pairs(4000, size, k, generator)
    limit = torch.tensor(size) - k
    for p in (p1, p2):
        assert (p >= 0).all() and (p <= limit).all()
    shift = p2 - p1
    assert torch.equal(shift.sign(), torch.tensor(ps.DIRECTIONS)[labels])
    magnitude = shift.abs().amax(dim=1)
    assert (magnitude >= 3 * k // 4).all() and (magnitude < k).all()
    moving = shift != 0
    assert (shift.abs()[moving] == magnitude[:, None].expand_as(shift)[moving]).all()  # same offset on both axes
    assert set(labels.tolist()) == set(range(8))


def test_position_pairs_reach_the_border_without_clipping():
    generator = torch.Generator().manual_seed(4)
    p1, p2, _ = ps.sample_position_pairs(4000, (128, 128), 32, generator)
    corners = torch.cat([p1, p2])
    assert corners.min() == 0 and corners.max() == 128 - 32


@pytest.mark.parametrize("k", [32, 64])
def test_svdd_pairs_are_small_nonzero_jitters_inside(k):
    generator = torch.Generator().manual_seed(5)
    p1, p2 = ps.sample_svdd_pairs(3000, (100, 90), k, generator)
    jitter = p2 - p1
    assert (jitter.abs() <= k // 32).all() and (jitter != 0).any(dim=1).all()
    for p in (p1, p2):
        assert (p >= 0).all() and (p[:, 0] <= 100 - k).all() and (p[:, 1] <= 90 - k).all()


def test_crop_patches_equals_slicing():
    images = torch.randn(3, 3, 20, 24)
    index = torch.tensor([2, 0, 2])
    corners = torch.tensor([[0, 0], [5, 9], [12, 16]])
    got = ps.crop_patches(images, index, corners, 8)
    for n, (i, (y, x)) in enumerate(zip(index.tolist(), corners.tolist())):
        assert torch.equal(got[n], images[i, :, y:y + 8, x:x + 8])


def test_losses_by_hand():
    h1 = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    h2 = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert float(ps.svdd_loss(h1, h2)) == pytest.approx(2.5)  # (5 + 0) / 2, not squared
    classifier = ps.PositionClassifier(d=2)
    logits = classifier(h1, h2)
    want = torch.nn.functional.cross_entropy(logits, torch.tensor([3, 7]))
    torch.testing.assert_close(ps.ssl_loss(classifier, h1, h2, torch.tensor([3, 7])), want)


def test_training_steps_run_and_record_every_term():
    torch.manual_seed(6)
    encoder = ps.Encoder64()
    classifiers = nn.ModuleDict({"64": ps.PositionClassifier(), "32": ps.PositionClassifier()})
    before = [p.clone() for p in encoder.parameters()]
    epochs = []
    history = ps.train(encoder, classifiers, torch.rand(3, 3, 128, 128), epochs=2, steps=1, batch=2,
                       on_epoch=epochs.append)
    assert epochs == [1, 2] and all(len(v) == 2 for v in history.terms.values())
    assert all(math.isfinite(x) for v in history.terms.values() for x in v)
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder.parameters()))
    assert not encoder.training


def test_anomaly_maps_product_and_sum():
    encoder = lively_encoder()
    train = torch.randn(2, 3, 96, 96)
    codes = {"64": ps.dense_codes(encoder, train, 64, 16), "32": ps.dense_codes(encoder, train, 32, 4)}
    maps = ps.anomaly_maps(encoder, codes, train[:1])
    assert set(maps) == set(ps.MAP_NAMES) and maps["64"].shape == (1, 96, 96)
    assert maps["32"].abs().max() < 1e-5  # a training image is its own nearest neighbour
    torch.testing.assert_close(maps["product"], maps["64"] * maps["32"])
    torch.testing.assert_close(maps["sum"], maps["64"] + maps["32"])


def test_evaluate_takes_scores_or_a_scorer():
    torch.manual_seed(7)
    images = torch.rand(6, 3, 16, 16)
    masks = torch.zeros(6, 16, 16, dtype=torch.bool)
    masks[3:, 4:8, 4:8] = True
    labels = torch.tensor([0, 0, 0, 1, 1, 1])

    def scorer(x):
        return x.mean(dim=1)[:, ::4, ::4]  # (b, 4, 4)

    direct = anomaly.evaluate(scorer(images), masks, labels, sigma=2.0)
    batched = anomaly.evaluate(scorer, masks, labels, images=images, sigma=2.0, batch_size=4)
    assert direct == batched and set(direct) == set(anomaly.METRICS)
    perfect = anomaly.evaluate(masks.float(), masks, labels, sigma=None)  # already image-sized
    assert perfect == {"image AUROC": 1.0, "pixel AUROC": 1.0, "PRO": pytest.approx(1.0)}


def test_bad_inputs():
    encoder = ps.Encoder64()
    with pytest.raises(ValueError, match="64, 64"):
        encoder(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="H, W >= 32"):
        encoder.enc(torch.zeros(1, 3, 20, 40))
    with pytest.raises(ValueError, match="even stride"):
        ps.dense_codes(encoder, torch.zeros(1, 3, 64, 64), 32, 3)
    with pytest.raises(ValueError, match="32 or 64"):
        ps.patch_codes(encoder, torch.zeros(1, 3, 64, 64), 16, 4)
    with pytest.raises(ValueError, match="grid"):
        ps.spread(torch.zeros(1, 3, 3), 32, 4, (64, 64))
    with pytest.raises(ValueError, match="at least 128"):
        ps.sample_position_pairs(4, (100, 200), 64)
    with pytest.raises(ValueError, match="leaves"):
        ps.crop_patches(torch.zeros(1, 3, 10, 10), torch.tensor([0]), torch.tensor([[5, 0]]), 8)
    with pytest.raises(ValueError, match="needs the test images"):
        anomaly.evaluate(lambda x: x, torch.zeros(1, 4, 4, dtype=torch.bool), torch.tensor([0]))


def _classifiers() -> nn.ModuleDict:
    return nn.ModuleDict({"64": ps.PositionClassifier(), "32": ps.PositionClassifier()})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_train_refuses_non_finite_images_before_touching_the_weights(bad):
    torch.manual_seed(8)
    encoder = ps.Encoder64()
    before = [p.clone() for p in encoder.parameters()]
    images = torch.rand(3, 3, 128, 128)
    images[1, 0, 5, 5] = bad
    with pytest.raises(ValueError, match="NaN or inf.*1 of 3 images"):
        ps.train(encoder, _classifiers(), images, epochs=1, steps=1, batch=2)
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters()))


def test_train_stops_on_a_non_finite_loss_before_the_step():
    torch.manual_seed(9)
    encoder = ps.Encoder64()
    classifiers = _classifiers()
    with torch.no_grad():
        classifiers["32"].net[-1].bias.fill_(float("inf"))  # logits inf -> loss nan
    before = [p.clone() for p in encoder.parameters()]
    with pytest.raises(FloatingPointError, match="epoch 1, step 1"):
        ps.train(encoder, classifiers, torch.rand(2, 3, 128, 128), epochs=1, steps=1, batch=2)
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters()))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(epochs=0), "epochs must be an integer >= 1"),
        (dict(steps=0), "steps must be an integer >= 1"),
        (dict(batch=0), "batch must be an integer >= 1"),
        (dict(lam=-1.0), "lam must be a finite number >= 0"),
        (dict(lam=float("nan")), "lam must be a finite number >= 0"),
        (dict(lr=0.0), "lr must be a finite number > 0"),
    ],
)
def test_train_bad_settings(kwargs, match):
    settings = dict(epochs=1, steps=1, batch=2) | kwargs
    with pytest.raises(ValueError, match=match):
        ps.train(ps.Encoder64(), _classifiers(), torch.rand(2, 3, 128, 128), **settings)


def test_train_bad_images_and_classifiers():
    encoder = ps.Encoder64()
    with pytest.raises(ValueError, match="holds no image"):
        ps.train(encoder, _classifiers(), torch.rand(0, 3, 128, 128), 1, 1, 2)
    with pytest.raises(ValueError, match="floating point"):
        ps.train(encoder, _classifiers(), torch.zeros(2, 3, 128, 128, dtype=torch.uint8), 1, 1)
    one = nn.ModuleDict({"64": ps.PositionClassifier()})
    with pytest.raises(ValueError, match=r"keys \[.32., .64.\]; got \[.64.\]"):
        ps.train(encoder, one, torch.rand(2, 3, 128, 128), 1, 1, 2)


@pytest.fixture(scope="module")
def memory_setup():
    encoder = lively_encoder()
    train = torch.randn(2, 3, 96, 96)
    codes = {"64": ps.dense_codes(encoder, train, 64, 16), "32": ps.dense_codes(encoder, train, 32, 4)}
    return encoder, train, codes


def test_anomaly_maps_swapped_keys_are_an_error_not_a_constant_map(memory_setup):
    encoder, train, codes = memory_setup
    swapped = {"64": codes["32"], "32": codes["64"]}
    with pytest.raises(ValueError, match="keys swapped"):
        ps.anomaly_maps(encoder, swapped, train[:1])


def test_anomaly_maps_missing_key_names_the_expected_keys(memory_setup):
    encoder, train, codes = memory_setup
    with pytest.raises(ValueError, match=r"keys \['32', '64'\].*got \['64'\]"):
        ps.anomaly_maps(encoder, {"64": codes["64"]}, train[:1])
    with pytest.raises(ValueError, match=r"strides must be a dict with the keys \['32', '64'\]"):
        ps.anomaly_maps(encoder, codes, train[:1], strides={"64": 16})


def test_anomaly_maps_other_bad_memories(memory_setup):
    encoder, train, codes = memory_setup
    with pytest.raises(ValueError, match="same training images"):
        ps.anomaly_maps(encoder, {"64": codes["64"][:1], "32": codes["32"]}, train[:1])
    with pytest.raises(ValueError, match=r"must be \(N, 64, h, w\)"):
        ps.anomaly_maps(encoder, {"64": codes["64"][0], "32": codes["32"]}, train[:1])
    with pytest.raises(ValueError, match="other strides"):
        ps.anomaly_maps(encoder, codes, train[:1], strides={"64": 16, "32": 8})
    with pytest.raises(ValueError, match=r"strides\['32'\] must be an integer >= 1"):
        ps.anomaly_maps(encoder, codes, train[:1], strides={"64": 16, "32": 0})
    with pytest.raises(ValueError, match="float64 on cpu but the encoder is torch.float32"):
        ps.anomaly_maps(encoder, codes, train[:1].double())


@pytest.mark.parametrize(
    "args,match",
    [
        ((64, 32, 0), "stride must be an integer >= 1"),
        ((64, 32, -4), "stride must be an integer >= 1"),
        ((64, 0, 4), r"k \(the patch size\) must be an integer >= 1"),
        ((64.5, 32, 4), "size must be an integer"),
    ],
)
def test_grid_size_bad_values(args, match):
    with pytest.raises(ValueError, match=match):
        ps.grid_size(*args)


def test_codes_and_spread_bad_strides_and_images():
    encoder = ps.Encoder64()
    images = torch.zeros(1, 3, 64, 64)
    for stride in (0, -4):
        with pytest.raises(ValueError, match="stride must be an integer >= 1"):
            ps.dense_codes(encoder, images, 32, stride)
        with pytest.raises(ValueError, match="stride must be an integer >= 1"):
            ps.patch_codes(encoder, images, 32, stride)
        with pytest.raises(ValueError, match="stride must be an integer >= 1"):
            ps.spread(torch.zeros(1, 3, 3), 32, stride, (40, 40))
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        ps.patch_codes(encoder, images, 32, 4, batch=0)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\) tensor, got \(3, 64, 64\)"):
        ps.patch_codes(encoder, images[0], 32, 4)
    with pytest.raises(ValueError, match="NaN or inf"):
        ps.dense_codes(encoder, torch.full((1, 3, 64, 64), float("nan")), 32, 4)
    with pytest.raises(ValueError, match=r"size must be \(H, W\)"):
        ps.spread(torch.zeros(1, 3, 3), 32, 4, (40,))


def test_pairs_crops_and_losses_bad_inputs():
    with pytest.raises(ValueError, match="n must be an integer >= 0"):
        ps.sample_position_pairs(-1, (128, 128), 32)
    with pytest.raises(ValueError, match="at least 4"):
        ps.sample_position_pairs(4, (128, 128), 2)
    with pytest.raises(ValueError, match=r"size must be \(H, W\)"):
        ps.sample_position_pairs(4, (128,), 32)
    with pytest.raises(ValueError, match="n must be an integer >= 0"):
        ps.sample_svdd_pairs(-2, (128, 128), 32)
    with pytest.raises(ValueError, match=r"k \(the patch size\) must be an integer >= 1"):
        ps.sample_svdd_pairs(2, (128, 128), 0)
    images = torch.randn(2, 3, 20, 20)
    with pytest.raises(ValueError, match="integer tensors"):
        ps.crop_patches(images, torch.tensor([0]), torch.tensor([[1.5, 2.0]]), 8)
    with pytest.raises(ValueError, match=r"index must lie in \[0, 1\]"):
        ps.crop_patches(images, torch.tensor([5]), torch.tensor([[1, 2]]), 8)
    with pytest.raises(ValueError, match=r"index must lie in \[0, 1\]"):
        ps.crop_patches(images, torch.tensor([-1]), torch.tensor([[1, 2]]), 8)
    with pytest.raises(ValueError, match=r"images must be \(N, C, H, W\)"):
        ps.crop_patches(images[0], torch.tensor([0]), torch.tensor([[1, 2]]), 8)
    with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
        ps.perturb(images, noise=float("nan"))
    with pytest.raises(ValueError, match="shift must be a finite number >= 0"):
        ps.perturb(images, shift=-1.0)
    with pytest.raises(ValueError, match="floating"):
        ps.perturb(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    classifier = ps.PositionClassifier()
    h = torch.zeros(2, ps.D)
    with pytest.raises(ValueError, match=r"direction indices in \[0, 7\]"):
        ps.ssl_loss(classifier, h, h, torch.tensor([8, 0]))
    with pytest.raises(ValueError, match=r"labels must be \(B,\) integers"):
        ps.ssl_loss(classifier, h, h, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="h1 and h2 must both be"):
        classifier(h, torch.zeros(3, ps.D))
    with pytest.raises(ValueError, match="h1 and h2 must both be"):
        classifier(torch.zeros(2, 32), torch.zeros(2, 32))
    with pytest.raises(ValueError, match="codes of one shape"):
        ps.svdd_loss(h, torch.zeros(3, ps.D))
    with pytest.raises(ValueError, match="codes of one shape"):
        ps.svdd_loss(torch.zeros(0, ps.D), torch.zeros(0, ps.D))


@pytest.mark.parametrize("k,stride", [(32, 4), (64, 16)])
def test_dense_codes_equal_patch_by_patch_in_float64(k, stride):
    """The identity is exact arithmetic: in float64 (out of reach of TF32 kernels on a GPU)
    the two ways agree to 1e-12, not just to float32's 1e-5."""
    encoder = lively_encoder().double()
    images = torch.randn(1, 3, 100, 96, dtype=torch.float64)
    dense = ps.dense_codes(encoder, images, k, stride)
    slow = ps.patch_codes(encoder, images, k, stride)
    assert dense.dtype == torch.float64
    torch.testing.assert_close(dense, slow, rtol=0, atol=1e-12)


def test_training_one_level_and_position_accuracy():
    torch.manual_seed(10)
    encoder = ps.Encoder64()
    head = [p.clone() for p in encoder.head.parameters()]
    classifiers = nn.ModuleDict({"32": ps.PositionClassifier()})
    images = torch.rand(3, 3, 96, 96)
    history = ps.train(encoder, classifiers, images, 2, 1, 2, levels=("32",))
    assert set(history.terms) == {"ssl32", "svdd32", "total"}
    assert all(len(v) == 2 for v in history.terms.values())
    assert all(torch.equal(a, b) for a, b in zip(head, encoder.head.parameters()))
    with pytest.raises(ValueError, match="levels must be distinct names"):
        ps.train(encoder, classifiers, images, 1, 1, 2, levels=("16",))
    with pytest.raises(ValueError, match="not those of levels"):
        ps.train(encoder, classifiers, images, 1, 1, 2, history=ps.History(), levels=("32",))
    both = _classifiers()
    acc = ps.position_accuracy(encoder, both, torch.rand(2, 3, 128, 128), n=64, seed=1)
    again = ps.position_accuracy(encoder, both, torch.rand(2, 3, 128, 128), n=64, seed=1)
    assert acc == again and set(acc) == {"64", "32"} and all(0 <= v <= 1 for v in acc.values())
    assert not encoder.training


def test_position_accuracy_of_a_perfect_and_a_constant_classifier():
    """A classifier that reads the direction off the codes scores 1; a constant one 1/8-ish."""

    class Oracle(nn.Module):
        def forward(self, h1, h2):  # codes are the patches' corners: h1 - h2 = -shift
            shift = (h2 - h1).flatten(1)[:, :2].sign().long()
            table = torch.tensor(ps.DIRECTIONS)
            return (shift[:, None, :] == table[None]).all(dim=2).float()

    class Corner(nn.Module):  # "encoder" whose code is the patch's own pixel (0, 0)
        K = 32

        def forward(self, x):
            return x[:, :2, 0, 0]

    class Fake(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = Corner()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x[:, :2, 0, 0]

    ramp = torch.arange(128.0)
    images = torch.stack([ramp[:, None].expand(128, 128), ramp[None].expand(128, 128),
                          torch.zeros(128, 128)])[None]
    oracle = nn.ModuleDict({"64": Oracle(), "32": Oracle()})
    acc = ps.position_accuracy(Fake(), oracle, images, n=200, shift=0.0, noise=0.0)
    assert acc == {"64": 1.0, "32": 1.0}


def test_perturbed_position_pairs_compose_the_three_steps_in_order():
    images = torch.rand(3, 3, 40, 40)
    a, b, labels = ps.perturbed_position_pairs(images, 5, 16, 0.1, 0.02, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    index = torch.randint(3, (5,), generator=g)
    p1, p2, expected_labels = ps.sample_position_pairs(5, (40, 40), 16, g)
    expected_a = ps.perturb(ps.crop_patches(images, index, p1, 16), 0.1, 0.02, g)
    expected_b = ps.perturb(ps.crop_patches(images, index, p2, 16), 0.1, 0.02, g)
    assert torch.equal(a, expected_a) and torch.equal(b, expected_b) and torch.equal(labels, expected_labels)
    assert a.shape == b.shape == (5, 3, 16, 16) and labels.shape == (5,)
