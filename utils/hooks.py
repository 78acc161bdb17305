"""Record activations and gradients of named modules, and always remove the hooks.

Explained in the *Getting started* chapter; used by every CAM-family chapter and by the
feature taps of :mod:`utils.models`.

>>> with record(model, ["layer4"], gradients=True) as rec:
...     model(x)[0, 281].backward()
>>> rec.activations["layer4"].shape, rec.gradients["layer4"].shape
"""
from __future__ import annotations

import difflib
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
    """The sub-module called ``name`` (as in ``model.named_modules()``); an unknown name raises
    ``KeyError`` listing the closest names and the top-level modules."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"module names are strings (as in model.named_modules()), got {name!r}")
    modules = dict(model.named_modules())
    if name not in modules:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=6, cutoff=0.5)
        top = [n for n in modules if n and "." not in n]
        raise KeyError(f"model has no module called {name!r}; similar names: {close}; "
                       f"top-level modules: {top[:20]}")
    return modules[name]


@contextmanager
def record(model: nn.Module, names: Sequence[str], gradients: bool = False,
           detach: bool = True) -> Iterator[Recording]:
    """Hook the modules called ``names`` for the duration of the ``with`` block.

    Forward hooks store each module's output: with ``detach=True`` (default) a detached
    *copy*, so a later in-place operation (``ReLU(inplace=True)`` after a BatchNorm, ``out +=
    identity`` in a ResNet block) cannot change what was recorded; with ``detach=False`` the
    tensor itself, still in the graph (e.g. for a loss on the feature map). With
    ``gradients=True`` the forward hook also registers a *tensor* hook on that output, which
    stores the gradient of the backward pass's loss with respect to it (the value before any
    later in-place change). Full module backward hooks are not used: they wrap outputs in a
    view that in-place operations downstream are not allowed to modify. A module called
    several times in one forward pass (a shared activation module) keeps its last call, and
    the gradient with respect to that call's output. Every hook is removed on exit, also
    when the block raises.

    Raises ``TypeError`` when a hooked module returns something other than one tensor (a
    tuple, e.g. ``nn.MultiheadAttention``: hook the sub-module that makes the tensor), and
    ``RuntimeError`` when ``gradients=True`` but the output does not require grad (the forward
    ran under ``torch.no_grad()``, or nothing before the module requires grad).
    """
    if isinstance(names, str):
        names = [names]
    targets = {name: find_module(model, name) for name in names}
    rec = Recording()
    handles = []
    calls = dict.fromkeys(targets, 0)
    try:
        for name, module in targets.items():
            def save_output(_module, _inputs, output, name=name):
                if not isinstance(output, torch.Tensor):
                    raise TypeError(f"module {name!r} returned a {type(output).__name__}, not one tensor; "
                                    "record a sub-module whose output is a tensor")
                calls[name] += 1
                rec.activations[name] = output.detach().clone() if detach else output
                if gradients:
                    if not output.requires_grad:
                        raise RuntimeError(f"gradients=True but the output of {name!r} does not require grad: "
                                           "run the forward pass outside torch.no_grad(), with trainable "
                                           "parameters before the module or an input with requires_grad=True")

                    def save_grad(grad: torch.Tensor, name: str = name, call: int = calls[name]) -> None:
                        if call == calls[name]:  # the gradient of the recorded (last) call only
                            rec.gradients[name] = grad.detach()

                    handles.append(output.register_hook(save_grad))

            handles.append(module.register_forward_hook(save_output))
        yield rec
    finally:
        for handle in handles:
            handle.remove()


def count_hooks(model: nn.Module) -> int:
    """Number of forward, forward-pre and backward hooks still registered anywhere in ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())
