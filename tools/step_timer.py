"""Time per training step and per image inside a notebook run (used by the GPU check's smoke run).

When ``$CVBOOK_STEP_TIMES`` names a file, :func:`utils.config.start_run` calls :func:`install`,
which registers two global PyTorch hooks in the notebook's kernel:

* after every optimiser step (``register_optimizer_step_post_hook``): the interval since the
  previous step is one training step (forward, backward, update and the data loading between);
* before every forward call of a leaf module whose input is an image batch ``(B, 3, H, W)``
  (a network's first layer) outside autograd: the interval since the previous such call,
  divided by the previous batch size, is the time per image of inference.

Medians are kept (evaluation between epochs, or a chapter's other cells, make a few intervals
long). On CUDA the hooks synchronise first, so the intervals are the GPU's work, not the launch
queue's. The summary is rewritten at most every second and at exit::

    {"steps": int, "seconds_per_step": float | null, "images": int,
     "seconds_per_image": float | null}

A chapter that trains nothing reports ``steps = 0``; one that runs no image network ``images = 0``.
"""
from __future__ import annotations

import atexit
import json
import statistics
import time
from pathlib import Path

import torch

STEP_TIMES_ENV = "CVBOOK_STEP_TIMES"


class StepTimer:
    """Counts optimiser steps and images through first layers; medians of their intervals."""

    def __init__(self, path: Path, flush_every: float = 1.0) -> None:
        self.path, self.flush_every = Path(path), flush_every
        self.steps, self.images = 0, 0
        self.step_intervals: list[float] = []
        self.image_intervals: list[float] = []
        self._last_step: float | None = None
        self._last_batch: tuple[float, int] | None = None
        self._last_flush = time.perf_counter()

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_step(self, *_: object) -> None:
        """Optimiser step post-hook: one training step ended."""
        now = self._now()
        if self._last_step is not None:
            self.step_intervals.append(now - self._last_step)
        self._last_step = now
        self.steps += 1
        self._maybe_flush(now)

    def on_forward(self, module: torch.nn.Module, args: tuple) -> None:
        """Module forward pre-hook: count image batches entering a first layer."""
        if module._modules or not args or not isinstance(args[0], torch.Tensor):
            return
        x = args[0]
        if x.ndim != 4 or x.shape[1] != 3:
            return
        self.images += x.shape[0]
        if torch.is_grad_enabled():
            return
        now = self._now()
        if self._last_batch is not None:
            start, size = self._last_batch
            self.image_intervals.append((now - start) / size)
        self._last_batch = (now, x.shape[0])
        self._maybe_flush(now)

    def summary(self) -> dict[str, float | int | None]:
        """The numbers written to the file (see the module docstring)."""
        def median(values: list[float]) -> float | None:
            return statistics.median(values) if values else None

        return {"steps": self.steps, "seconds_per_step": median(self.step_intervals),
                "images": self.images, "seconds_per_image": median(self.image_intervals)}

    def _maybe_flush(self, now: float) -> None:
        if now - self._last_flush >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write :meth:`summary` to the file (atomically: a reader never sees half of it)."""
        self._last_flush = time.perf_counter()
        part = self.path.with_suffix(".part")
        part.write_text(json.dumps(self.summary()))
        part.replace(self.path)


def install(path: str | Path) -> StepTimer:
    """Register the global hooks of a :class:`StepTimer` writing to ``path``; flush at exit."""
    from torch.nn.modules.module import register_module_forward_pre_hook
    from torch.optim.optimizer import register_optimizer_step_post_hook

    timer = StepTimer(Path(path))
    register_optimizer_step_post_hook(timer.on_step)
    register_module_forward_pre_hook(timer.on_forward)
    atexit.register(timer.flush)
    timer.flush()
    return timer
