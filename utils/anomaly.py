"""Shared anomaly-detection pieces: patch embeddings, maps at image size, one evaluation.

Explained in the PaDiM chapter (``notebooks/06_padim.ipynb``) and used again by the Patch SVDD
chapter (``notebooks/07_patch_svdd.ipynb``). The two methods' models live in
:mod:`utils.padim` and :mod:`utils.patch_svdd`.

Shapes: ``B`` images, ``F`` stacked feature channels, ``H x W`` patch positions.

1. :func:`concat_taps` stacks the feature maps of several CNN taps into one embedding per
   finest position, ``(B, F, H, W)``; :func:`embed` runs a backbone batch by batch;
   :func:`select_dims` draws PaDiM's random channels, :func:`fit_pca` / :func:`project` the
   PCA alternative.
2. :func:`knn_patch_scores` is the nearest-neighbour patch score (SPADE-like baseline and
   Patch SVDD's score): distance to the nearest training patch vector, any position.
3. :func:`anomaly_maps` brings patch scores ``(B, h, w)`` to the image size and smooths them
   with a Gaussian; :func:`image_scores` takes each map's maximum.
4. :func:`evaluate` is the one evaluation of any patch scorer: maps at image size, optional
   smoothing, image AUROC, pixel AUROC and PRO (:func:`scores_of`); :func:`score_batches`
   runs a scorer (a function of an image batch) over a test set batch by batch.
"""
from __future__ import annotations

import math

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import metrics
from .cam import upsample_maps
from .models import extract_features, normalize

__all__ = [
    "METRICS",
    "anomaly_maps",
    "concat_taps",
    "embed",
    "evaluate",
    "fit_pca",
    "gaussian_blur",
    "gaussian_kernel",
    "image_scores",
    "knn_patch_scores",
    "nearest_distances",
    "project",
    "score_batches",
    "scores_of",
    "search_method",
    "select_dims",
]


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


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> Tensor:
    """The normalised 1-D Gaussian of ``scipy.ndimage.gaussian_filter``: radius ``int(truncate sigma + 0.5)``."""
    if not 0 < sigma < math.inf:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    if not 0 < truncate < math.inf:
        raise ValueError(f"truncate must be a finite number > 0, got {truncate}")
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _reflect_index(n: int, radius: int) -> Tensor:
    """Indices padding a length-``n`` axis by ``radius`` with scipy's ``reflect`` (d c b a | a b c d)."""
    i = torch.arange(-radius, n + radius) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def _require_pixels(maps: Tensor, name: str) -> None:
    """Raise ``ValueError`` unless the ``(B, H, W)`` tensor ``maps`` has ``H, W >= 1``."""
    if maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"{name} need at least one pixel each, got shape {tuple(maps.shape)}")


def gaussian_blur(maps: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Smooth each ``(B, H, W)`` map with a Gaussian of std ``sigma`` pixels.

    Same result as ``scipy.ndimage.gaussian_filter(map, sigma)`` (same kernel, ``reflect``
    borders), done as two 1-D convolutions for the whole batch.
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W), got {tuple(maps.shape)}")
    _require_pixels(maps, "maps")
    if not maps.is_floating_point():
        raise TypeError(f"maps must be a float tensor, got {maps.dtype} (integer maps would round the "
                        "smoothed values to zero); convert with .float()")
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
    Scores already at the image size (e.g. Patch SVDD's spread maps) are not resampled.
    """
    if distances.ndim != 3:
        raise ValueError(f"distances must be (B, h, w), got {tuple(distances.shape)}")
    _require_pixels(distances, "distances")
    size = (size, size) if isinstance(size, int) else tuple(size)
    same = tuple(distances.shape[1:]) == size
    if not same and not distances.is_floating_point():
        raise TypeError(f"distances must be a float tensor to be resampled, got {distances.dtype}; "
                        "convert with .float()")
    maps = distances if same else upsample_maps(distances[:, None], size, mode)[:, 0]
    return maps if sigma is None else gaussian_blur(maps, sigma)


def image_scores(maps: Tensor) -> Tensor:
    """Image anomaly score = maximum of its map; ``(B, H, W)`` -> ``(B,)``."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W), got {tuple(maps.shape)}")
    _require_pixels(maps, "maps")
    return maps.flatten(1).amax(dim=1)


@torch.no_grad()
def knn_patch_scores(train: Tensor, test: Tensor, k: int = 1, chunk: int | None = None,
                     exact: bool = False) -> Tensor:
    """SPADE-like patch scores: mean distance to the ``k`` nearest training patch vectors.

    ``train``: ``(N, C, H, W)`` embeddings of normal images, all ``N H W`` patch vectors form
    the memory (any position); ``test``: ``(B, C, H', W')``. Returns ``(B, H', W')``. Unlike
    :class:`utils.padim.PaDiM`, time and memory grow with ``N``.

    ``exact=False`` uses ``torch.cdist``'s distances, built from matrix products
    (``||a||^2 + ||b||^2 - 2 a.b``): in float32 a distance near 0 can be off by ~1e-3. Test
    patches go ``chunk`` at a time (default: a ``chunk x N H W`` block of about 2^22 values).
    ``exact=True`` returns the brute-force result to float rounding, and is faster on large memories
    (:func:`nearest_distances`; ``chunk`` test patches at a time, default 1024).
    """
    if train.ndim != 4 or test.ndim != 4:
        raise ValueError(f"train and test must be (N, C, H, W), got {tuple(train.shape)} and {tuple(test.shape)}")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train has {train.shape[1]} channels, test has {test.shape[1]}")
    memory = train.permute(0, 2, 3, 1).reshape(-1, train.shape[1])
    if memory.shape[0] == 0:
        raise ValueError(f"knn_patch_scores needs at least one training patch, got train of shape "
                         f"{tuple(train.shape)}")
    if not 1 <= k <= memory.shape[0]:
        raise ValueError(f"k must be in [1, {memory.shape[0]}], got {k}")
    b, c, h, w = test.shape
    queries = test.permute(0, 2, 3, 1).reshape(-1, c).to(memory.dtype)
    if exact:
        return nearest_distances(memory, queries, k, chunk or 1024).mean(dim=1).reshape(b, h, w)
    chunk = chunk or max(1, 2**22 // memory.shape[0])
    scores = torch.cat([torch.cdist(q, memory).topk(k, dim=1, largest=False).values.mean(dim=1)
                        for q in queries.split(chunk)])
    return scores.reshape(b, h, w)


TILE = 64    # memory vectors per tile: the screen keeps each tile's smallest product only
BLOCK = 512  # memory vectors per matrix product: a chunk x BLOCK block stays in the CPU's cache
#: The brute-force search (GPU): memory vectors per matrix product, values per product block,
#: and candidates kept per query beyond k for the exact recheck.
BRUTE_BLOCK = 2**16
BRUTE_VALUES = 2**26
BRUTE_EXTRA = 7
SEARCH_METHODS = ("auto", "screen", "brute")


def search_method(method: str, device: torch.device | str) -> str:
    """The exact nearest-neighbour algorithm :func:`nearest_distances` runs on ``device``:
    ``"auto"`` -> ``"screen"`` on a CPU (a proven screen of tile minima, then exact distances in
    the surviving tiles: 32x faster than brute force on 2 cores) and ``"brute"`` elsewhere (on a
    GPU the screen's gathers and host round trips lost 12x to blocked matrix products);
    ``"screen"`` and ``"brute"`` are returned as they are."""
    if method not in SEARCH_METHODS:
        raise ValueError(f"unknown search method {method!r}; choose one of {SEARCH_METHODS}")
    if method != "auto":
        return method
    return "screen" if torch.device(device).type == "cpu" else "brute"


@torch.no_grad()
def nearest_distances(memory: Tensor, queries: Tensor, k: int = 1, chunk: int = 1024,
                      method: str = "auto") -> Tensor:
    """Exact Euclidean distances from each query to its ``k`` nearest memory vectors, ascending.

    ``memory``: ``(N, C)``; ``queries``: ``(Q, C)``, same dtype and device. Returns ``(Q, k)``,
    equal to a brute-force search up to float rounding (ties may pick a different but equally
    near vector). ``method`` picks the algorithm (:func:`search_method`): ``"auto"`` (the
    default) is ``"screen"`` on a CPU and ``"brute"`` on any other device; both are exact.

    ``"screen"`` (fastest on a few CPU cores, where the exact pass stays small and in cache):
    a screen, then an exact pass. The screen computes ``s(q, m) = ||m||^2 - 2 q.m`` (the squared
    distance minus ``||q||^2``, which does not change the order) for all pairs with one matrix
    product per ``chunk x BLOCK`` block and keeps only the minimum of each tile of ``TILE``
    consecutive memory vectors (the last tile may be shorter).
    Rounding moves each ``s`` by at most ``tau(q) = gamma_{C+1} (2 ||q|| R + 2 S)`` (``R``, ``S``:
    the largest ``||m||`` and ``||m||^2``; ``gamma_n = n u / (1 - n u)``, ``u`` the unit
    roundoff of the product, larger when TF32 or bfloat16 products are allowed; the standard bound
    for a dot product summed in any order), doubled here for safety.
    If ``v`` is the ``k``-th smallest tile minimum, ``k`` distinct vectors have screened values
    ``<= v``, so the ``k`` true nearest have true ``s <= v + tau`` and screened ``s <= v + 2 tau``:
    every tile whose minimum is above ``v + 2 tau`` is provably out. The remaining tiles (usually
    one per query) are measured exactly as ``||q - m||``.

    ``"brute"`` (fastest on a GPU, where large matrix products and ``topk`` are cheap and
    gathers and host round trips are not): for blocks of ``chunk_q x BRUTE_BLOCK`` pairs (about
    :data:`BRUTE_VALUES` values each) the same ``s`` by one matrix product, and the
    ``k + BRUTE_EXTRA`` smallest per query kept (``topk``, merged over blocks); those are
    measured exactly as ``||q - m||`` and the ``k`` smallest returned. The same bound proves it
    exact: if the largest kept screened value is above ``v + 2 tau`` (``v`` the ``k``-th
    smallest), every vector left out is out; a query without that proof (many near-ties) is
    searched again by the screen.
    """
    if memory.ndim != 2 or queries.ndim != 2 or memory.shape[1] != queries.shape[1]:
        raise ValueError(f"memory and queries must be (N, C) and (Q, C), got {tuple(memory.shape)} "
                         f"and {tuple(queries.shape)}")
    if memory.dtype != queries.dtype or memory.device != queries.device:
        raise ValueError(f"memory and queries must share dtype and device, got {memory.dtype} on "
                         f"{memory.device} and {queries.dtype} on {queries.device}")
    if not 1 <= k <= memory.shape[0]:
        raise ValueError(f"k must be in [1, {memory.shape[0]}], got {k}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    method = search_method(method, memory.device)
    if len(queries) == 0:
        return memory.new_empty(0, k)
    squared = torch.einsum("nc,nc->n", memory, memory)
    _require_finite(squared, "memory")
    slack = _screen_slack(memory, squared)
    if method == "brute":
        return _brute_force(memory, queries, k, squared, slack)
    return _screen(memory, queries, k, chunk, squared, slack)


def _screen_slack(memory: Tensor, squared: Tensor) -> tuple[float, Tensor, Tensor]:
    """``(g, R, S)`` such that ``2 tau(q) = g (2 ||q|| R + 2 S)`` bounds twice the rounding of every
    screened value ``||m||^2 - 2 q.m`` (doubled again for safety: ``g = 4 gamma_{C+1}``)."""
    eps = _product_roundoff(memory.dtype)
    c = memory.shape[1]
    gamma = (c + 1) * eps / (1 - (c + 1) * eps)
    top = squared.max()
    return 4 * gamma, top.sqrt() * (1 + eps), top


def _screen(memory: Tensor, queries: Tensor, k: int, chunk: int, squared: Tensor,
            slack: tuple[float, Tensor, Tensor]) -> Tensor:
    """The ``"screen"`` method of :func:`nearest_distances` (tile minima, then exact tiles)."""
    g, radius, top = slack
    n = memory.shape[0]
    n_tiles = -(-n // TILE)
    block = min(BLOCK, n)
    buffer = memory.new_empty(min(chunk, len(queries)) * block)      # reused by every product
    out = []
    for q in queries.split(chunk):
        norms = q.norm(dim=1)
        _require_finite(norms, "queries")
        minima = memory.new_empty(len(q), n_tiles)
        for start in range(0, n, block):
            part = memory[start:start + block]
            products = torch.addmm(squared[start:start + block], q, part.T, alpha=-2,
                                   out=buffer[:len(q) * len(part)].view(len(q), -1))
            whole = len(part) // TILE * TILE                  # only the last block has a partial tile
            minima[:, start // TILE:(start + whole) // TILE] = products[:, :whole].view(len(q), -1, TILE).amin(dim=2)
            if whole < len(part):
                minima[:, -1] = products[:, whole:].amin(dim=1)
        limit = (minima.topk(k, dim=1, largest=False).values[:, -1] if k <= n_tiles
                 else minima.new_full((len(q),), float("inf")))
        limit = limit + g * (2 * norms * radius + 2 * top)   # + 2 tau, doubled
        out.append(_smallest_in_tiles(q, memory, minima <= limit[:, None], k))
    return torch.cat(out)


def _brute_force(memory: Tensor, queries: Tensor, k: int, squared: Tensor,
                 slack: tuple[float, Tensor, Tensor]) -> Tensor:
    """The ``"brute"`` method of :func:`nearest_distances`: blocked products, ``topk`` of
    ``k + BRUTE_EXTRA`` candidates, exact recheck, proof per query (else the screen)."""
    g, radius, top = slack
    n = memory.shape[0]
    keep = min(n, k + BRUTE_EXTRA)
    block = min(n, BRUTE_BLOCK)
    step = max(1, BRUTE_VALUES // block)
    out = []
    for q in queries.split(step):
        norms = q.norm(dim=1)
        _require_finite(norms, "queries")
        values, index = None, None
        for start in range(0, n, block):
            products = torch.addmm(squared[start:start + block], q, memory[start:start + block].T, alpha=-2)
            v, i = products.topk(min(keep, products.shape[1]), dim=1, largest=False)
            if values is not None:
                merged = torch.cat([values, v], dim=1)
                v, picked = merged.topk(min(keep, merged.shape[1]), dim=1, largest=False)
                i = torch.cat([index, i + start], dim=1).gather(1, picked)
            values, index = v, i
        limit = values[:, k - 1] + g * (2 * norms * radius + 2 * top)
        proven = values[:, -1] > limit if keep < n else torch.ones_like(limit, dtype=torch.bool)
        exact = (q[:, None, :] - memory[index]).norm(dim=2).topk(k, dim=1, largest=False).values
        if not bool(proven.all()):
            unproven = (~proven).nonzero().squeeze(1)
            exact[unproven] = _screen(memory, q[unproven], k, len(unproven), squared, slack)
        out.append(exact)
    return torch.cat(out)


def _product_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff of a matrix product in ``dtype``. float32 products may run in TF32 (GPU) or
    bfloat16 when ``torch.set_float32_matmul_precision`` (or ``allow_tf32``) permits it, and the
    screen's bound must then use their precision (a wider screen, still exact)."""
    u = torch.finfo(dtype).eps / 2
    if dtype == torch.float32:
        reduced = {"highest": 0.0, "high": 2.0**-11, "medium": 2.0**-8}[torch.get_float32_matmul_precision()]
        u = max(u, reduced, 2.0**-11 if torch.backends.cuda.matmul.allow_tf32 else 0.0)
    return u


def _require_finite(norms: Tensor, name: str) -> None:
    """Raise unless every (squared) norm is finite: no inf or nan, and no overflow in squares."""
    if not torch.isfinite(norms).all():
        raise ValueError(f"{name} must be finite, with squared norms below the dtype's maximum "
                         f"(found inf or nan)")


def _smallest_in_tiles(queries: Tensor, memory: Tensor, keep: Tensor, k: int) -> Tensor:
    """The ``k`` smallest exact distances from each query ``(Q, C)`` to the memory vectors
    ``(N, C)`` in the tiles (``TILE`` consecutive vectors each) that ``keep`` ``(Q, T)`` marks."""
    rows, picked = keep.nonzero(as_tuple=True)          # row-major: each query's tiles together
    per_tile = min(k, TILE)
    offsets = torch.arange(TILE, device=memory.device)
    group = max(1, 2**20 // (TILE * memory.shape[1]))  # pairs per step: 4 MB of float32 differences
    best = []
    for r, t in zip(rows.split(group), picked.split(group)):
        index = t[:, None] * TILE + offsets                            # (pairs, TILE)
        members = memory.index_select(0, index.clamp(max=len(memory) - 1).flatten()).view(*index.shape, -1)
        d = (queries[r, None, :] - members).norm(dim=2)
        best.append(d.masked_fill(index >= len(memory), float("inf")).topk(per_tile, dim=1, largest=False).values)
    counts = torch.bincount(rows, minlength=len(queries))
    slot = torch.arange(len(rows), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    table = queries.new_full((len(queries), int(counts.max()), per_tile), float("inf"))
    table[rows, slot] = torch.cat(best)
    return table.flatten(1).topk(k, dim=1, largest=False).values


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
    if count == 0:
        raise ValueError("fit_pca needs at least one training patch vector, got no embeddings")
    if not 1 <= n_dims <= total.numel():
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


# --- One evaluation for every patch scorer -----------------------------------------------------

#: The three numbers :func:`scores_of` and :func:`evaluate` return, in this order.
METRICS = ("image AUROC", "pixel AUROC", "PRO")


def scores_of(maps: Tensor, masks: Tensor, labels: Tensor) -> dict[str, float]:
    """Image AUROC (image score = map maximum), pixel AUROC and PRO (FPR <= 0.3) of one test set.

    ``maps``: ``(B, H, W)`` anomaly maps at the masks' size; ``masks``: ``(B, H, W)`` booleans;
    ``labels``: ``(B,)`` 1 = defective.
    """
    return {"image AUROC": metrics.image_auroc(image_scores(maps), labels),
            "pixel AUROC": metrics.pixel_auroc(maps, masks), "PRO": metrics.pro_score(maps, masks)}


@torch.no_grad()
def score_batches(scorer: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 16) -> Tensor:
    """Run ``scorer`` (image batch ``(b, 3, S, S)`` -> patch scores ``(b, h, w)``) over ``images``
    ``batch_size`` at a time; returns all scores ``(N, h, w)`` on the CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return torch.cat([scorer(x).cpu() for x in images.split(batch_size)])


def evaluate(scores: Tensor | Callable[[Tensor], Tensor], masks: Tensor, labels: Tensor,
             images: Tensor | None = None, sigma: float | None = 4.0, mode: str = "bilinear",
             batch_size: int = 16) -> dict[str, float]:
    """Evaluate any patch scorer on one test set: maps at image size, smoothing, the metrics.

    ``scores``: patch scores ``(B, h, w)`` (higher = more anomalous; any grid, or already at
    the image size), or a scorer function of an image batch, then applied to ``images``
    ``batch_size`` at a time (:func:`score_batches`). The scores are brought to the masks'
    size with :func:`anomaly_maps` (``mode``, then a Gaussian of std ``sigma`` pixels; ``None``
    does not smooth) and measured with :func:`scores_of`. ``masks``: ``(B, H, W)`` booleans;
    ``labels``: ``(B,)``. Returns ``{"image AUROC", "pixel AUROC", "PRO"}``.
    """
    if callable(scores) and not isinstance(scores, Tensor):
        if images is None:
            raise ValueError("a scorer function needs the test images")
        scores = score_batches(scores, images, batch_size)
    if masks.ndim != 3 or len(masks) != len(scores):
        raise ValueError(f"masks must be (B, H, W) with one mask per score map, got {tuple(masks.shape)} "
                         f"for {len(scores)} maps")
    return scores_of(anomaly_maps(scores, tuple(masks.shape[1:]), mode, sigma), masks, labels)
