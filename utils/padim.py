"""PaDiM: one multivariate Gaussian per patch position, Mahalanobis distances as patch scores.

Explained in the PaDiM chapter (``notebooks/06_padim.ipynb``). The shared anomaly pieces it
works with (patch embeddings from CNN taps, random channel selection, maps at image size, the
evaluation of any patch scorer) are in :mod:`utils.anomaly`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .anomaly import select_dims
from .config import full_float32

#: Values per piece of positions in PaDiM's fit and scoring: a piece's float64 temporaries (its
#: embeddings and its C x C matrices) are a few megabytes on a CPU (cache-sized, and small next
#: to the stored Gaussians), hundreds of megabytes on a GPU.
CHUNK_VALUES_CPU = 2**19
CHUNK_VALUES_GPU = 2**26
#: Matrices up to this size are factorised by LAPACK (``cholesky_ex`` + a triangular solve); larger
#: ones are split in two halves whose coupling is done by batched matrix products.
WHITEN_BLOCK = 64

#: The fit's memory beyond its inputs and the stored Gaussians is kept under this fraction of
#: the stored Gaussians (pieces of positions are cut small enough), so it peaks at no more than
#: 1.5x the Gaussians on any device (not for fewer than 4 kept dimensions, where a piece of
#: one position is already larger).
FIT_MEMORY_SHARE = 0.45

__all__ = [
    "CHUNK_VALUES_CPU",
    "CHUNK_VALUES_GPU",
    "FIT_MEMORY_SHARE",
    "WHITEN_BLOCK",
    "PaDiM",
    "whiten",
    "whiten_",
]


def whiten(covariance: Tensor) -> tuple[Tensor, Tensor]:
    """``W = L^{-1}`` for the Cholesky factor ``L L^T = S`` of each matrix ``S`` of ``(p, C, C)``.

    Returns ``W`` (lower-triangular, ``(p, C, C)``, dtype of ``covariance``, a new tensor) and a
    ``(p,)`` bool mask of the matrices that are not positive-definite (their ``W`` is
    meaningless). :func:`whiten_` does the same in place.
    """
    out = covariance.clone()
    return out, whiten_(out)


def whiten_(covariance: Tensor) -> Tensor:
    """Overwrite each ``(C, C)`` matrix ``S`` of ``covariance`` ``(p, C, C)`` with ``W = L^{-1}``
    (``L L^T = S``); return the ``(p,)`` bool mask of the matrices without Cholesky factor.

    Blocked recursion: with ``S = [[S11, .], [S21, S22]]``, ``W11`` comes from ``S11`` (in its
    place), then ``L21 = S21 W11^T``, the Schur complement ``S22 - L21 L21^T`` (in the place of
    ``S22``) gives ``W22`` and ``W21 = -W22 L21 W11`` replaces ``S21``. Most of the work is
    batched matrix products over the ``p`` matrices; only blocks of at most
    :data:`WHITEN_BLOCK` go through LAPACK, which on small matrices runs far below the matmul
    rate. Memory beyond ``covariance``: at most about ``1.5 p C^2`` values at any time (at the
    top level ``L21`` and two products, each a quarter of the matrices; in a leaf, the factor
    and the solution).
    """
    failed = torch.zeros(covariance.shape[0], dtype=torch.bool, device=covariance.device)
    _whiten_in_place(covariance, failed)
    return failed


def _whiten_in_place(s: Tensor, failed: Tensor) -> None:
    """Overwrite each ``(n, n)`` matrix of the view ``s`` ``(p, n, n)`` with its ``L^{-1}``; OR the
    ``(p,)`` mask ``failed`` with the matrices whose Cholesky factorisation broke down."""
    n = s.shape[-1]
    if n <= WHITEN_BLOCK:
        factor, info = torch.linalg.cholesky_ex(s)
        failed |= info != 0
        s.zero_().diagonal(dim1=1, dim2=2).fill_(1)                # the identity, in place
        s.copy_(torch.linalg.solve_triangular(factor, s, upper=False))
        return
    k = n // 2
    _whiten_in_place(s[:, :k, :k], failed)
    w11 = s[:, :k, :k]
    l21 = s[:, k:, :k] @ w11.mT                                    # S21 L11^{-T}, (p, n - k, k)
    s22 = s[:, k:, k:]
    s22.baddbmm_(l21, l21.mT, alpha=-1)                            # S22 - L21 L21^T
    _whiten_in_place(s22, failed)
    s[:, k:, :k] = torch.bmm(s22 @ l21, w11).neg_()                # W21 = -W22 L21 W11
    s[:, :k, k:] = 0


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
        if not math.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be a finite number >= 0 (the eps * I added to each covariance), got {eps}")
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
        if embeddings.numel() == 0:
            raise ValueError("PaDiM needs at least one image and one position per batch, got embeddings "
                             f"of shape {tuple(embeddings.shape)}")
        if embeddings.shape[1] != self.n_features:
            raise ValueError(f"embeddings have {embeddings.shape[1]} channels, the model expects {self.n_features}")

    def _step(self, images: int, device: torch.device, positions: int | None = None,
              store_dtype: torch.dtype = torch.float32, dtype: torch.dtype = torch.float64,
              reserved: int = 0) -> int:
        """Positions per piece, so that a piece's ``(p, images, C)`` embeddings and ``(p, C, C)``
        matrices hold about :data:`CHUNK_VALUES_CPU` (or ``_GPU``) values each.

        With ``positions`` (a fit): also few enough that a piece's temporaries (the embeddings
        in the input dtype and in ``dtype``, the ``(p, C, C)`` covariances in ``dtype`` and the
        whitening's work space, 1.5 times theirs), plus ``reserved`` bytes held for the whole
        fit, stay under :data:`FIT_MEMORY_SHARE` of the stored Gaussians (``positions`` means
        and ``W`` in ``store_dtype``).
        """
        budget = CHUNK_VALUES_CPU if device.type == "cpu" else CHUNK_VALUES_GPU
        step = max(1, budget // (self.n_dims * max(images, self.n_dims)))
        if positions is None:
            return step
        c, wide = self.n_dims, torch.finfo(dtype).bits // 8
        stored = positions * c * (c + 1) * (torch.finfo(store_dtype).bits // 8)
        per_position = wide * (images * c + 2.5 * c * c) + 4 * images * c
        return max(1, min(step, int((FIT_MEMORY_SHARE * stored - reserved) // per_position)))

    def _chunks(self, embeddings: Tensor, dtype: torch.dtype, device: torch.device | None = None,
                step: int | None = None) -> Iterator[tuple[slice, Tensor]]:
        """Kept channels of consecutive ranges of ``step`` positions (default: :meth:`_step`),
        each a new contiguous ``(p, B, C)`` tensor of ``dtype`` on ``device`` (the caller may
        overwrite it).

        ``(B, C, P) -> (P, B, C)`` is a transpose; done a few megabytes at a time (one copy that
        also converts and moves), each piece is still in the CPU cache when the matrix products
        use it.
        """
        b, _, h, w = embeddings.shape
        flat = embeddings.reshape(b, self.n_features, h * w)
        index = self.index.to(flat.device)
        step = self._step(b, flat.device) if step is None else step
        for start in range(0, h * w, step):
            part = slice(start, min(start + step, h * w))
            piece = flat[:, :, part]
            if self.n_dims < self.n_features:
                piece = piece.index_select(1, index)
            piece = piece.reshape(b * self.n_dims, -1).t()
            moved = torch.empty(piece.shape, dtype=dtype, device=device or flat.device).copy_(piece)
            yield part, moved.view(-1, b, self.n_dims)

    @torch.no_grad()
    def fit(self, embeddings: Tensor | Iterable[Tensor], dtype: torch.dtype = torch.float64,
            store_dtype: torch.dtype = torch.float32) -> PaDiM:
        """Estimate each position's mean and covariance from normal training embeddings.

        ``embeddings``: one ``(N, F, H, W)`` tensor or an iterable of such batches (e.g.
        :func:`embed`), consumed once. The covariance is the unbiased one (``N - 1``, like
        ``np.cov``) plus ``eps I``; ``W = L^{-1}`` of its Cholesky factor comes from
        :func:`whiten_` in ``dtype``. Mean and ``W`` are stored in ``store_dtype`` on the
        embeddings' device, and the whole model moves there. Memory beyond the inputs and the
        stored Gaussians: pieces of positions cut so that it stays under
        :data:`FIT_MEMORY_SHARE` of the Gaussians on every device (each piece's covariances are
        whitened in place), so the fit peaks at no more than 1.5x the Gaussians.

        Precision. One tensor: position piece by piece, the mean and the centred covariance
        (two passes, exact) and ``W`` are computed in ``dtype``. Iterable: sums are taken
        around the first batch's per-position mean; each batch's Gram matrices are computed in
        ``dtype`` and added into the ``(P, C, C)`` buffer that will hold ``W``, i.e. accumulated
        in ``store_dtype`` (one rounding per batch and entry: relative ``6e-8`` per batch in
        float32, don't stream into a 16-bit store), the per-position sums in float64 (the
        first batch's means, the centring constants, wait in the store of the mean); then piece
        by piece the Gram matrices are promoted to ``dtype``, turned into covariances,
        factorised and overwritten with ``W`` in place. Returns ``self``.

        Raises ``ValueError`` for an empty batch, NaN or inf in the kept channels, and a
        covariance that is not positive-definite (``eps=0`` with no more images than kept
        dimensions, or constant channels); the model is then left as it was.
        """
        if isinstance(embeddings, Tensor):
            self._check_embeddings(embeddings)
            mean, whitening = self._fit_tensor(embeddings, dtype, store_dtype)
            grid = tuple(embeddings.shape[2:])
        else:
            mean, whitening, grid = self._fit_stream(embeddings, dtype, store_dtype)
        self.mean, self.whitening = mean, whitening
        self.grid = torch.tensor(grid, dtype=torch.long, device=mean.device)
        return self.to(mean.device)

    def _fit_tensor(self, embeddings: Tensor, dtype: torch.dtype,
                    store_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Mean ``(P, C)`` and ``W`` ``(P, C, C)`` in ``store_dtype`` from one ``(N, F, H, W)``
        tensor, piece by piece of positions, every temporary in ``dtype`` and piece-sized."""
        n, _, h, w = embeddings.shape
        self._check_count(n)
        mean = embeddings.new_empty(h * w, self.n_dims, dtype=store_dtype)
        whitening = embeddings.new_empty(h * w, self.n_dims, self.n_dims, dtype=store_dtype)
        step = self._step(n, embeddings.device, h * w, store_dtype, dtype)
        for part, x in self._chunks(embeddings, dtype, step=step):
            centre = x.mean(dim=1, keepdim=True)
            x -= centre
            covariance = torch.bmm(x.mT, x).div_(n - 1)
            self._factorise_into(whitening, part, covariance, (h, w), n)
            mean[part] = centre.squeeze(1)
        return mean, whitening

    def _fit_stream(self, batches: Iterable[Tensor], dtype: torch.dtype,
                    store_dtype: torch.dtype) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Mean ``(P, C)``, ``W`` ``(P, C, C)`` (both ``store_dtype``) and the grid ``(H, W)``
        from batches consumed once; the Gram matrices are summed in the buffer that ends up
        holding ``W``."""
        count, grid, shift, total, gram = 0, None, None, None, None
        for batch in batches:
            self._check_embeddings(batch)
            if grid is None:
                grid = tuple(batch.shape[2:])
                positions = grid[0] * grid[1]
                shift = batch.new_zeros(positions, 1, self.n_dims, dtype=store_dtype)  # then the mean
                total = batch.new_zeros(positions, 1, self.n_dims, dtype=torch.float64)
                gram = batch.new_zeros(positions, self.n_dims, self.n_dims, dtype=store_dtype)
                reserved = total.numel() * total.element_size()
            elif tuple(batch.shape[2:]) != grid:
                raise ValueError(f"training batches disagree on the grid: {grid} then {tuple(batch.shape[2:])}")
            step = self._step(batch.shape[0], batch.device, positions, store_dtype, dtype, reserved)
            for part, x in self._chunks(batch, dtype, step=step):
                if count == 0:
                    shift[part] = x.mean(dim=1, keepdim=True)
                x -= shift[part].to(dtype)
                total[part] += x.sum(dim=1, keepdim=True)
                # in dtype, then one rounding into the store (`gram[part] += ...` across dtypes
                # would hold two more temporaries of the piece's size)
                gram[part] = gram[part].to(dtype).baddbmm_(x.mT, x)
            count += batch.shape[0]
        self._check_count(count)
        step = self._step(0, gram.device, positions, store_dtype, dtype, reserved)
        for start in range(0, positions, step):
            part = slice(start, start + step)
            offset = total[part].div_(count)                               # (p, 1, C), float64
            centre = offset.to(dtype)
            covariance = gram[part].to(dtype).baddbmm_(centre.mT, centre, alpha=-count).div_(count - 1)
            self._factorise_into(gram, part, covariance, grid, count)
            shift[part] = offset.add_(shift[part])                         # the mean
        return shift.squeeze(1), gram, grid

    @staticmethod
    def _check_count(count: int) -> None:
        if count < 2:
            raise ValueError(f"fitting needs at least 2 training images, got {count}")

    def _factorise_into(self, whitening: Tensor, part: slice, covariance: Tensor,
                        grid: tuple[int, int], count: int) -> None:
        """Add ``eps I`` to the ``(p, C, C)`` covariances of the positions ``part``, check them,
        overwrite them with their ``W`` and copy that into ``whitening[part]`` (any dtype)."""
        covariance.diagonal(dim1=1, dim2=2).add_(float(self.eps))
        if not torch.isfinite(covariance).all():
            raise ValueError("training embeddings contain NaN or inf values (the covariance is not finite); "
                             "check the backbone's input images and features")
        failed = whiten_(covariance)
        if failed.any():
            raise self._singular_covariance_error(part.start + int(failed.nonzero()[0, 0]), grid, count)
        whitening[part] = covariance

    def _singular_covariance_error(self, position: int, grid: tuple[int, int], count: int) -> ValueError:
        """The error for a ``Sigma + eps I`` without Cholesky factor at flat ``position`` of ``grid``,
        estimated from ``count`` images."""
        row, column = divmod(position, grid[1])
        if count <= self.n_dims:
            reason = (f"{count} training images give a covariance of rank at most {count - 1}, "
                      f"below its {self.n_dims} dimensions")
        else:
            reason = "some kept channels are constant or linearly dependent there"
        return ValueError(f"the covariance at grid position ({row}, {column}) is not positive-definite with "
                          f"eps={float(self.eps):g}: {reason}; use a positive eps (the default is 0.01)")

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

        ``d = ||W (x - mu)||``: the subtraction first (exact for nearby floats, so means far
        larger than the spread lose no digits), then batched matrix products over positions and
        images, in the stored dtype (TF32 off, whatever the numerics policy: the products are
        a small part of the work), on the model's device. Embeddings on another device raise
        ``ValueError`` (a model rebuilt on the CPU and fed GPU embeddings would otherwise score
        on the CPU, with other roundings: load it with :func:`utils.models.load_state`).
        NaN or inf in the kept channels raise ``ValueError``.
        """
        self._check_fitted()
        self._check_embeddings(embeddings)
        if embeddings.device != self.whitening.device:
            raise ValueError(f"embeddings are on {embeddings.device}, the fitted model on "
                             f"{self.whitening.device}: move one of them so both are on one device")
        b, _, h, w = embeddings.shape
        if [h, w] != self.grid.tolist():
            raise ValueError(f"embeddings are on a {h}x{w} grid, the model was fitted on "
                             f"{'x'.join(map(str, self.grid.tolist()))}")
        out = self.whitening.new_empty(h * w, b)
        with full_float32():  # no TF32: distances agree with a CPU's to float32 rounding
            for part, x in self._chunks(embeddings, self.whitening.dtype, self.whitening.device):
                x -= self.mean[part, None, :]
                z = torch.bmm(x, self.whitening[part].mT)                          # (p, B, C)
                out[part] = torch.linalg.vector_norm(z, dim=2)
        not_finite = ~torch.isfinite(out)
        if not_finite.any():
            raise ValueError(f"embeddings contain NaN or inf values: {int(not_finite.sum())} of {out.numel()} "
                             "patch scores are not finite")
        return out.T.reshape(b, h, w)

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # mean and whitening are empty until fitted: take the saved shapes before copying.
        for name in ("mean", "whitening"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
