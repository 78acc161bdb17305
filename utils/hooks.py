"""Record activations and gradients of named modules, and always remove the hooks.

Explained in the *Getting started* chapter; used by every CAM-family chapter and by the
feature taps of :mod:`utils.models`.

>>> with record(model, ["layer4"], gradients=True) as rec:
...     model(x)[0, 281].backward()
>>> rec.activations["layer4"].shape, rec.gradients["layer4"].shape
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Recording:
    """What :func:`record` captured: the output of each named module (``activations``) and,
    with ``gradients=True``, the gradient of the loss w.r.t. that output (``gradients``)."""

    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name`` (as in ``model.named_modules()``); unknown names raise
    with a few close suggestions."""
    modules = dict(model.named_modules())
    if name not in modules:
        hints = [n for n in modules if n and (name in n or n.split(".")[0] == name.split(".")[0])][:8]
        raise KeyError(f"model has no module called {name!r}; similar names: {hints or list(modules)[1:9]}")
    return modules[name]


@contextmanager
def record(model: nn.Module, names: Sequence[str], gradients: bool = False,
           detach: bool = True) -> Iterator[Recording]:
    """Hook the modules called ``names`` for the duration of the ``with`` block.

    Forward hooks store each module's output (detached unless ``detach=False``, which
    keeps it in the graph, e.g. for a loss on the feature map). Full backward hooks
    (:meth:`~torch.nn.Module.register_full_backward_hook`) store the gradient with respect to
    that output. Every hook is removed on exit, also when the block raises.
    """
    if isinstance(names, str):
        names = [names]
    targets = {name: find_module(model, name) for name in names}
    rec = Recording()
    handles = []
    try:
        for name, module in targets.items():
            def save_output(_module, _inputs, output, name=name):
                rec.activations[name] = output.detach() if detach else output

            handles.append(module.register_forward_hook(save_output))
            if gradients:
                def save_grad(_module, _grad_in, grad_out, name=name):
                    rec.gradients[name] = grad_out[0].detach()

                handles.append(module.register_full_backward_hook(save_grad))
        yield rec
    finally:
        for handle in handles:
            handle.remove()


def count_hooks(model: nn.Module) -> int:
    """Number of forward, forward-pre and backward hooks still registered anywhere in ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())
