"""Patch-distribution anomaly detection: PaDiM and a patch nearest-neighbour baseline.

Explained in the PaDiM chapter (``notebooks/06_padim.ipynb``).

The pipeline, with shapes (``B`` images, ``F`` stacked feature channels, ``C`` kept
channels, ``H x W`` = ``P`` patch positions of the finest tap):

1. :func:`concat_taps` stacks the feature maps of several CNN taps into one embedding
   per finest position, ``(B, F, H, W)``; :func:`embed` runs a backbone batch by batch.
2. :class:`PaDiM` keeps ``C`` of the ``F`` channels (random, seeded), fits one Gaussian
   per position (mean ``(P, C)`` and the inverse Cholesky factor of ``Sigma + eps I``,
   ``(P, C, C)``) while streaming over training batches, and turns test embeddings into
   Mahalanobis distance maps ``(B, H, W)``.
3. :func:`anomaly_maps` upsamples the distances to the image size and smooths them with a
   Gaussian; :func:`image_scores` takes each map's maximum.

:func:`knn_patch_scores` is the SPADE-like baseline (distance to the nearest training
patch vector, any position), and :func:`fit_pca` / :func:`project` give the PCA
alternative to random channel selection used in the chapter's ablation.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cam import upsample_maps
from .models import extract_features, normalize

#: Values per piece of positions in PaDiM's fit and scoring (4 MB of float32 on a CPU: cache-sized).
CHUNK_VALUES_CPU = 2**20
CHUNK_VALUES_GPU = 2**26

__all__ = ["concat_taps", "embed", "select_dims", "PaDiM", "gaussian_kernel", "gaussian_blur",
           "anomaly_maps", "image_scores", "knn_patch_scores", "fit_pca", "project"]


def concat_taps(maps: Sequence[Tensor]) -> Tensor:
    """Stack feature maps of different strides into one embedding per finest position.

    ``maps``: tensors ``(B, C_i, H_i, W_i)`` sharing ``B``; the largest ``H x W`` must be an
    integer multiple of every other map's size. Each coarser map is nearest-upsampled (every
    coarse vector is copied into the ``s x s`` block of finest positions it covers) and the
    maps are concatenated along channels in the given order. Returns ``(B, sum C_i, H, W)``.
    """
    if len(maps) == 0:
        raise ValueError("concat_taps needs at least one feature map")
    for i, m in enumerate(maps):
        if not isinstance(m, Tensor) or m.ndim != 4:
            raise ValueError(f"feature map {i} must be a (B, C, H, W) tensor, got "
                             f"{tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__}")
    batch = maps[0].shape[0]
    height = max(m.shape[2] for m in maps)
    width = max(m.shape[3] for m in maps)
    out = []
    for i, m in enumerate(maps):
        b, _, h, w = m.shape
        if b != batch:
            raise ValueError(f"feature map {i} has batch size {b}, map 0 has {batch}")
        if height % h or width % w or height // h != width // w:
            raise ValueError(f"feature map {i} is {h}x{w}; the finest map ({height}x{width}) must be "
                             "the same integer multiple of it in both directions")
        out.append(m if h == height else F.interpolate(m, size=(height, width), mode="nearest"))
    return torch.cat(out, dim=1)


@torch.no_grad()
def embed(model: nn.Module, images: Tensor, taps: Mapping[str, str], backbone: str,
          batch_size: int = 16, device: torch.device | str | None = None) -> Iterator[Tensor]:
    """Yield patch embeddings ``(b, F, H, W)`` of ``images`` batch by batch.

    ``images``: float ``(N, 3, S, S)`` RGB in [0, 1]; ``taps``: ``{name: module path}`` of
    ``model`` (finest first), e.g. ``utils.models.LITE0_TAPS`` restricted to three strides;
    ``backbone`` names the input normalisation (see :func:`utils.models.normalize`). Each
    batch is moved to ``device`` (default: the model's device); the embeddings stay there.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, S, S), got {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is None:
        device = next(model.parameters()).device
    for start in range(0, images.shape[0], batch_size):
        x = normalize(images[start:start + batch_size], backbone).to(device)
        features = extract_features(model, x, dict(taps))
        yield concat_taps([features[name] for name in taps])


def select_dims(n_features: int, n_dims: int, seed: int) -> Tensor:
    """``n_dims`` distinct channel indices out of ``n_features``, sorted, reproducible from ``seed``.

    Uses its own ``torch.Generator``, so the global random state is neither read nor changed.
    """
    if not 1 <= n_dims <= n_features:
        raise ValueError(f"n_dims must be in [1, {n_features}], got {n_dims}")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_features, generator=generator)[:n_dims].sort().values


class PaDiM(nn.Module):
    """One multivariate Gaussian per patch position; scores are Mahalanobis distances.

    ``n_features``: channels ``F`` of the stacked embeddings; ``n_dims``: channels ``C`` kept
    by random selection (``None`` keeps all); ``seed``: seed of that selection; ``eps``: the
    ``eps * I`` added to every covariance.

    Everything needed to score is a buffer, so ``state_dict()`` / ``load_state_dict()``
    round-trip a fitted model exactly: ``seed``, ``index`` ``(C,)`` (kept channels),
    ``eps``, ``grid`` ``(2,)`` (``H, W``), ``mean`` ``(P, C)`` and ``whitening`` ``(P, C, C)``:
    ``W = L^{-1}``, the inverse of the Cholesky factor ``L L^T = Sigma + eps I`` (``P = H W``),
    lower-triangular, so that ``(Sigma + eps I)^{-1} = W^T W`` and the Mahalanobis distance is
    ``||W (x - mu)||``. Storing ``W`` instead of ``L`` does the triangular solves once, at
    fitting time, and leaves one batched matrix product per test batch.
    """

    def __init__(self, n_features: int, n_dims: int | None = None, seed: int = 1024,
                 eps: float = 0.01) -> None:
        super().__init__()
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.n_features = n_features
        index = torch.arange(n_features) if n_dims is None else select_dims(n_features, n_dims, seed)
        self.register_buffer("seed", torch.tensor(int(seed)))
        self.register_buffer("index", index)
        self.register_buffer("eps", torch.tensor(float(eps), dtype=torch.float64))
        self.register_buffer("grid", torch.zeros(2, dtype=torch.long))
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("whitening", torch.empty(0))

    @property
    def n_dims(self) -> int:
        return self.index.numel()

    @property
    def fitted(self) -> bool:
        return self.whitening.numel() > 0

    def extra_repr(self) -> str:
        h, w = self.grid.tolist()
        state = f"fitted on a {h}x{w} grid" if self.fitted else "not fitted"
        return (f"n_features={self.n_features}, n_dims={self.n_dims}, seed={int(self.seed)}, "
                f"eps={float(self.eps)}, {state}")

    def _check_embeddings(self, embeddings: Tensor) -> None:
        if not isinstance(embeddings, Tensor) or embeddings.ndim != 4:
            raise ValueError("embeddings must be a (B, F, H, W) tensor, got "
                             f"{tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__}")
        if embeddings.shape[1] != self.n_features:
            raise ValueError(f"embeddings have {embeddings.shape[1]} channels, the model expects {self.n_features}")

    def _chunks(self, embeddings: Tensor, dtype: torch.dtype,
                device: torch.device | None = None) -> Iterator[tuple[slice, Tensor]]:
        """Kept channels of consecutive ranges of positions, each a contiguous ``(p, B, C)`` tensor.

        ``(B, C, P) -> (P, B, C)`` is a transpose; done a few megabytes at a time, each piece is
        still in the CPU cache when the matrix products use it.
        """
        b, _, h, w = embeddings.shape
        flat = embeddings.reshape(b, self.n_features, h * w)
        index = self.index.to(flat.device)
        budget = CHUNK_VALUES_CPU if flat.device.type == "cpu" else CHUNK_VALUES_GPU
        step = max(1, budget // (b * self.n_dims))
        for start in range(0, h * w, step):
            part = slice(start, min(start + step, h * w))
            piece = flat[:, :, part]
            if self.n_dims < self.n_features:
                piece = piece.index_select(1, index)
            moved = piece.reshape(b * self.n_dims, -1).t().to(device or flat.device).contiguous()
            yield part, moved.to(dtype).view(-1, b, self.n_dims)

    @torch.no_grad()
    def fit(self, embeddings: Tensor | Iterable[Tensor], dtype: torch.dtype = torch.float64,
            store_dtype: torch.dtype = torch.float32) -> "PaDiM":
        """Estimate each position's mean and covariance from normal training embeddings.

        ``embeddings``: one ``(N, F, H, W)`` tensor or an iterable of such batches (e.g.
        :func:`embed`), consumed once; memory is ``O(P C^2)`` whatever the number of images.
        Sums are accumulated in ``dtype`` around the first batch's mean (which keeps the
        one-pass covariance accurate); the covariance is the unbiased one (``N - 1``, like
        ``np.cov``) plus ``eps I``; its Cholesky factor ``L`` and ``W = L^{-1}`` (triangular
        solves against the identity) are computed in ``dtype`` too. Mean and ``W`` are stored
        in ``store_dtype`` on the embeddings' device. Returns ``self``.
        """
        batches = [embeddings] if isinstance(embeddings, Tensor) else embeddings
        count, grid, shift, total, outer = 0, None, None, None, None
        for batch in batches:
            self._check_embeddings(batch)
            if grid is None:
                grid = tuple(batch.shape[2:])
                positions = grid[0] * grid[1]
                shift = batch.new_zeros(positions, 1, self.n_dims, dtype=dtype)
                total = torch.zeros_like(shift)
                outer = batch.new_zeros(positions, self.n_dims, self.n_dims, dtype=dtype)
            elif tuple(batch.shape[2:]) != grid:
                raise ValueError(f"training batches disagree on the grid: {grid} then {tuple(batch.shape[2:])}")
            for part, x in self._chunks(batch, dtype):
                if count == 0:
                    shift[part] = x.mean(dim=1, keepdim=True)
                x -= shift[part]
                total[part] += x.sum(dim=1, keepdim=True)
                outer[part].baddbmm_(x.transpose(1, 2), x)
            count += batch.shape[0]
        if count < 2:
            raise ValueError(f"fitting needs at least 2 training images, got {count}")
        offset = total / count
        covariance = outer.baddbmm_(offset.transpose(1, 2), offset, alpha=-count).div_(count - 1)
        covariance.diagonal(dim1=1, dim2=2).add_(float(self.eps))
        self.mean = (shift + offset).squeeze(1).to(store_dtype)
        self.whitening = torch.empty(covariance.shape, dtype=store_dtype, device=covariance.device)
        identity = torch.eye(self.n_dims, dtype=dtype, device=covariance.device)
        chunk = max(1, 2**23 // self.n_dims**2)  # positions per step: ~64 MB of float64 temporaries
        for start in range(0, covariance.shape[0], chunk):
            cholesky = torch.linalg.cholesky(covariance[start:start + chunk])
            self.whitening[start:start + chunk] = torch.linalg.solve_triangular(
                cholesky, identity.expand_as(cholesky), upper=False)
        self.grid = torch.tensor(grid, dtype=torch.long, device=self.mean.device)
        return self

    @property
    def precision(self) -> Tensor:
        """``(Sigma + eps I)^{-1} = W^T W`` per position, ``(P, C, C)``."""
        self._check_fitted()
        return self.whitening.transpose(1, 2) @ self.whitening

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("PaDiM is not fitted: call fit() or load_state_dict() first")

    @torch.no_grad()
    def forward(self, embeddings: Tensor) -> Tensor:
        """Mahalanobis distance of every test patch to its position's Gaussian, ``(B, H, W)``.

        ``d = ||W x - W mu||``: batched matrix products over positions and images (with the
        subtraction fused into them), in the stored dtype, on the model's device (the
        embeddings are moved there).
        """
        self._check_fitted()
        self._check_embeddings(embeddings)
        b, _, h, w = embeddings.shape
        if [h, w] != self.grid.tolist():
            raise ValueError(f"embeddings are on a {h}x{w} grid, the model was fitted on "
                             f"{'x'.join(map(str, self.grid.tolist()))}")
        out = self.whitening.new_empty(h * w, b)
        for part, x in self._chunks(embeddings, self.whitening.dtype, self.whitening.device):
            w_t = self.whitening[part].transpose(1, 2)
            w_mu = torch.bmm(self.mean[part, None, :], w_t)                        # (p, 1, C)
            z = torch.baddbmm(w_mu, x, w_t, beta=-1)                               # (p, B, C)
            out[part] = torch.linalg.vector_norm(z, dim=2)
        return out.T.reshape(b, h, w)

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # mean and whitening are empty until fitted: take the saved shapes before copying.
        for name in ("mean", "whitening"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> Tensor:
    """The normalised 1-D Gaussian of ``scipy.ndimage.gaussian_filter``: radius ``int(truncate sigma + 0.5)``."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _reflect_index(n: int, radius: int) -> Tensor:
    """Indices padding a length-``n`` axis by ``radius`` with scipy's ``reflect`` (d c b a | a b c d)."""
    i = torch.arange(-radius, n + radius) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def gaussian_blur(maps: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Smooth each ``(B, H, W)`` map with a Gaussian of std ``sigma`` pixels.

    Same result as ``scipy.ndimage.gaussian_filter(map, sigma)`` (same kernel, ``reflect``
    borders), done as two 1-D convolutions for the whole batch.
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W), got {tuple(maps.shape)}")
    kernel = gaussian_kernel(sigma, truncate).to(maps.device, maps.dtype)
    radius = (kernel.numel() - 1) // 2
    _, h, w = maps.shape
    x = maps[:, None]
    x = x.index_select(2, _reflect_index(h, radius).to(maps.device))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    x = x.index_select(3, _reflect_index(w, radius).to(maps.device))
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return x[:, 0]


def anomaly_maps(distances: Tensor, size: int | tuple[int, int], mode: str = "bilinear",
                 sigma: float | None = 4.0) -> Tensor:
    """Distance maps ``(B, h, w)`` -> anomaly maps ``(B, S, S)`` at image resolution.

    Upsampled with ``mode`` (``"bilinear"``, as the reference code, or ``"bicubic"``, as the
    paper; ``align_corners=False``), then smoothed with a Gaussian of std ``sigma`` pixels
    (``None`` skips the smoothing). Bicubic can overshoot, so its maps may dip below zero.
    """
    if distances.ndim != 3:
        raise ValueError(f"distances must be (B, h, w), got {tuple(distances.shape)}")
    maps = upsample_maps(distances[:, None], size, mode)[:, 0]
    return maps if sigma is None else gaussian_blur(maps, sigma)


def image_scores(maps: Tensor) -> Tensor:
    """Image anomaly score = maximum of its map; ``(B, H, W)`` -> ``(B,)``."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W), got {tuple(maps.shape)}")
    return maps.flatten(1).amax(dim=1)


@torch.no_grad()
def knn_patch_scores(train: Tensor, test: Tensor, k: int = 1, chunk: int | None = None) -> Tensor:
    """SPADE-like patch scores: mean distance to the ``k`` nearest training patch vectors.

    ``train``: ``(N, C, H, W)`` embeddings of normal images, all ``N H W`` patch vectors form
    the memory (any position); ``test``: ``(B, C, H', W')``. Test patches are processed
    ``chunk`` at a time with ``torch.cdist`` (default: as many as keep the ``chunk x N H W``
    distance block near 2^24 values).
    Returns ``(B, H', W')``. Unlike :class:`PaDiM`, time and memory grow with ``N``.
    """
    if train.ndim != 4 or test.ndim != 4:
        raise ValueError(f"train and test must be (N, C, H, W), got {tuple(train.shape)} and {tuple(test.shape)}")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train has {train.shape[1]} channels, test has {test.shape[1]}")
    memory = train.permute(0, 2, 3, 1).reshape(-1, train.shape[1])
    if not 1 <= k <= memory.shape[0]:
        raise ValueError(f"k must be in [1, {memory.shape[0]}], got {k}")
    b, c, h, w = test.shape
    queries = test.permute(0, 2, 3, 1).reshape(-1, c)
    chunk = chunk or max(1, 2**24 // memory.shape[0])
    scores = torch.cat([torch.cdist(q, memory).topk(k, dim=1, largest=False).values.mean(dim=1)
                        for q in queries.split(chunk)])
    return scores.reshape(b, h, w)


@torch.no_grad()
def fit_pca(embeddings: Tensor | Iterable[Tensor], n_dims: int) -> tuple[Tensor, Tensor]:
    """Principal axes of all training patch vectors (every position pooled).

    ``embeddings``: ``(N, F, H, W)`` or an iterable of such batches. Returns ``mean (F,)``
    and ``components (F, n_dims)``, the eigenvectors of the pooled covariance with the
    largest eigenvalues (first column = largest), computed in float64.
    """
    batches = [embeddings] if isinstance(embeddings, Tensor) else embeddings
    count, total, outer = 0, None, None
    for batch in batches:
        if batch.ndim != 4:
            raise ValueError(f"embeddings must be (N, F, H, W), got {tuple(batch.shape)}")
        x = batch.permute(0, 2, 3, 1).reshape(-1, batch.shape[1]).double()
        if total is None:
            total, outer = x.sum(0), x.T @ x
        else:
            total, outer = total + x.sum(0), outer + x.T @ x
        count += x.shape[0]
    if total is None or not 1 <= n_dims <= total.numel():
        raise ValueError(f"n_dims must be in [1, number of channels], got {n_dims}")
    mean = total / count
    covariance = outer / count - torch.outer(mean, mean)
    _, vectors = torch.linalg.eigh(covariance)
    return mean.float(), vectors[:, -n_dims:].flip(1).float()


def project(embeddings: Tensor, mean: Tensor, components: Tensor) -> Tensor:
    """Project ``(B, F, H, W)`` embeddings on PCA ``components`` ``(F, d)`` -> ``(B, d, H, W)``."""
    if embeddings.ndim != 4 or embeddings.shape[1] != components.shape[0]:
        raise ValueError(f"embeddings {tuple(embeddings.shape)} do not match components {tuple(components.shape)}")
    centred = embeddings - mean.to(embeddings)[None, :, None, None]
    return torch.einsum("bfhw,fd->bdhw", centred, components.to(embeddings))
