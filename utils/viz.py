"""Figures: heatmap overlays, image grids and anomaly panels (matplotlib, PNG).

Used by every chapter; one colormap (:data:`CMAP`) for every heatmap in the book.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

CMAP = "magma"
#: Width figures are created at, in inches at the book's dpi: 760 px at 100 dpi, plus the ~10 px
#: of padding the inline backend's tight bounding box adds, stays under the ~790 px content
#: column, so figures are shown at their natural size (tests/test_built_html.py checks it).
COLUMN_INCHES = 7.6
DPI = 100


def to_numpy_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """An RGB or grey image as an (H, W, 3) float array in [0, 1].

    Accepts (H, W), (H, W, 3), (3, H, W) / (1, H, W) tensors or arrays, floats in [0, 1],
    uint8 or bool. Raises on other shapes, on empty images, on other dtypes (uint16, int64:
    scale them yourself, e.g. ``image / 65535``) and on float values outside [0, 1] (e.g. a
    normalised image, which would display with wrong colours: un-normalise it first).
    """
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an image of shape (H, W), (H, W, 3) or (3, H, W), got {array.shape}")
    if array.size == 0:
        raise ValueError(f"image is empty: shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype != bool and not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"image dtype {array.dtype} is not shown: pass uint8 (0..255), bool or floats in "
                        "[0, 1] (scale other integer images yourself, e.g. a 16-bit one by / 65535)")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"image has {int((~np.isfinite(array)).sum())} NaN or infinite values")
    if (array.min() < -1e-3 or array.max() > 1 + 1e-3):
        raise ValueError(f"float image values must lie in [0, 1], got [{array.min():.3g}, {array.max():.3g}]; "
                         "is it still normalised?")
    return np.clip(array, 0.0, 1.0)


def overlay(image: np.ndarray | torch.Tensor, heatmap: np.ndarray | torch.Tensor,
            alpha: float = 0.5, cmap: str = CMAP) -> np.ndarray:
    """Blend a heatmap (H, W), min-max scaled to [0, 1], over an image of the same H, W.

    Returns an (H, W, 3) float array in [0, 1]. A constant heatmap is shown as zeros.
    """
    base = to_numpy_image(image)
    heat = heatmap.detach().cpu().numpy() if isinstance(heatmap, torch.Tensor) else np.asarray(heatmap)
    heat = heat.astype(np.float32)
    if not np.isfinite(heat).all():
        raise ValueError(f"heatmap has {int((~np.isfinite(heat)).sum())} NaN or infinite values; "
                         "a min-max scaling would make the whole overlay blank")
    if heat.shape != base.shape[:2]:
        raise ValueError(f"heatmap shape {heat.shape} does not match image size {base.shape[:2]}; upsample it first")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    span = float(heat.max() - heat.min())
    scaled = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    colours = matplotlib.colormaps[cmap](scaled)[..., :3]
    return (1 - alpha) * base + alpha * colours


def show_grid(images: Sequence, titles: Sequence[str] | None = None, ncols: int = 5,
              size: float = 2.2, suptitle: str | None = None, cmap: str | None = None) -> plt.Figure:
    """Show images in a grid with optional per-image titles; returns the figure.

    ``size`` is the side of one panel in inches, reduced so the grid is at most
    :data:`COLUMN_INCHES` wide. Images may be anything :func:`to_numpy_image` accepts; with ``cmap`` given, 2-D arrays
    are drawn as heatmaps with that colormap instead.
    """
    images = list(images)
    if len(images) == 0:
        raise ValueError("show_grid needs at least one image")
    if not isinstance(ncols, (int, np.integer)) or isinstance(ncols, bool) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    if not 0 < size < float("inf"):
        raise ValueError(f"size (inches per panel) must be positive and finite, got {size}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    nrows = -(-len(images) // ncols)
    ncols = min(ncols, len(images))
    size = min(size, COLUMN_INCHES / ncols)  # never wider than the book's content column
    title_room = 0.3 if titles is not None else 0.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + title_room) * nrows + (0.4 if suptitle else 0)),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        if cmap is not None and np.ndim(image) == 2:
            ax.imshow(_heatmap(image, i), cmap=cmap)
        else:
            ax.imshow(to_numpy_image(image))
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def _heatmap(image: np.ndarray | torch.Tensor, index: int) -> np.ndarray:
    heat = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if heat.size == 0 or not np.isfinite(heat).all():
        raise ValueError(f"heatmap {index} is empty or has NaN or infinite values (it would be drawn blank)")
    return heat


def draw_box(ax: plt.Axes, box: Sequence[float], color: str = "lime", label: str | None = None) -> None:
    """Draw an (xmin, ymin, xmax, ymax) pixel box on ``ax``."""
    values = np.asarray(box.detach().cpu() if isinstance(box, torch.Tensor) else box, dtype=np.float64)
    if values.shape != (4,) or not np.isfinite(values).all():
        raise ValueError(f"box must be 4 finite numbers (xmin, ymin, xmax, ymax), got {box!r}")
    xmin, ymin, xmax, ymax = values.tolist()
    ax.add_patch(plt.Rectangle((xmin, ymin), xmax - xmin, ymax - ymin, fill=False, edgecolor=color, linewidth=2))
    if label:
        ax.text(xmin, ymin, label, color="black", fontsize=8, va="bottom",
                bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "edgecolor": "none"})


def use_book_style() -> None:
    """Book-wide figure defaults: the book's colormap, :data:`DPI` and font sizes that stay
    legible in the ~790 px content column when a figure is at most :data:`COLUMN_INCHES` wide."""
    matplotlib.rcParams.update({"figure.dpi": DPI, "image.cmap": CMAP, "font.size": 10,
                                "axes.titlesize": 10, "figure.titlesize": 11, "legend.fontsize": 9})


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 3):
    """A table for a notebook's output: ``display(viz.markdown_table(...))``.

    The book renders notebook Markdown output with MyST, so this becomes a real ``<table>``
    (a ``print``ed pipe table would be a run-on paragraph). Floats are shown with ``digits``
    decimals, ``None`` as an en dash, and ``|`` inside a cell is escaped.
    """
    from IPython.display import Markdown

    def cell(value: object) -> str:
        if value is None:
            return "–"
        if isinstance(value, (float, np.floating)):
            return f"{value:.{digits}f}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    if not isinstance(digits, (int, np.integer)) or isinstance(digits, bool) or digits < 0:
        raise ValueError(f"digits must be an int >= 0, got {digits!r}")
    if any(isinstance(row, str) for row in rows):
        raise ValueError("each row must be a sequence of cells, not a string")
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} cells (one per header column)")
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return Markdown("\n".join(lines))
