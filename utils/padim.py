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

#: Values per piece of positions in PaDiM's fit and scoring (4 MB of float32 on a CPU: cache-sized).
CHUNK_VALUES_CPU = 2**20
CHUNK_VALUES_GPU = 2**26

__all__ = ["PaDiM", "CHUNK_VALUES_CPU", "CHUNK_VALUES_GPU"]


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

        Raises ``ValueError`` for an empty batch, NaN or inf in the kept channels, and a
        covariance that is not positive-definite (``eps=0`` with no more images than kept
        dimensions, or constant channels); the model is then left as it was.
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
        if not torch.isfinite(covariance).all():
            raise ValueError("training embeddings contain NaN or inf values (the covariance is not finite); "
                             "check the backbone's input images and features")
        whitening = torch.empty(covariance.shape, dtype=store_dtype, device=covariance.device)
        identity = torch.eye(self.n_dims, dtype=dtype, device=covariance.device)
        chunk = max(1, 2**23 // self.n_dims**2)  # positions per step: ~64 MB of float64 temporaries
        for start in range(0, covariance.shape[0], chunk):
            cholesky, info = torch.linalg.cholesky_ex(covariance[start:start + chunk])
            if info.any():
                raise self._singular_covariance_error(start + int(info.nonzero()[0, 0]), grid, count)
            whitening[start:start + chunk] = torch.linalg.solve_triangular(
                cholesky, identity.expand_as(cholesky), upper=False)
        self.mean = (shift + offset).squeeze(1).to(store_dtype)
        self.whitening = whitening
        self.grid = torch.tensor(grid, dtype=torch.long, device=self.mean.device)
        return self

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

        ``d = ||W x - W mu||``: batched matrix products over positions and images (with the
        subtraction fused into them), in the stored dtype, on the model's device (the
        embeddings are moved there). NaN or inf in the kept channels raise ``ValueError``.
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
