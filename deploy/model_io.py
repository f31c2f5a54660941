"""Loading the models ``fxprune deploy`` is given, and the input shape they run at.

A model file is a whole module pickled with ``torch.save(module, path)`` (a plain
``nn.Module`` or a ``torch.fx.GraphModule``; a pruned model's layers have new shapes, so a
``state_dict`` alone could not be loaded back into the original class).

How a file records its input shape: whoever saves the module may set the attribute
``module.fxprune_input_shape`` to the full input shape, batch first, e.g.
``model.fxprune_input_shape = (1, 3, 224, 224)``, before ``torch.save``. It is pickled with
the module (GraphModules keep it too). ``--input-shape`` / ``input_shape=`` overrides it,
``--batch`` / ``batch=`` replaces its first dim. With neither, deploy stops and says so.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn

from .common import DeployError, parse_shape

INPUT_SHAPE_ATTR = "fxprune_input_shape"


def load_model(model: nn.Module | str | os.PathLike) -> tuple[nn.Module, str]:
    """The module itself and a label for reports (its path, or its class name)."""
    if isinstance(model, nn.Module):
        return model, type(model).__name__
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise DeployError(f"model file {path!r} does not exist")
    try:
        # weights_only=False: these files are whole pickled modules (possibly fx GraphModules
        # with generated code), which the weights-only unpickler refuses by design. Only load
        # files you trust: unpickling can run code.
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise DeployError(f"could not load {path!r} with torch.load: "
                          f"{type(e).__name__}: {e}") from e
    if not isinstance(loaded, nn.Module):
        hint = (" (it looks like a state_dict: save the whole module with torch.save(model, path))"
                if isinstance(loaded, dict) else "")
        raise DeployError(f"{path!r} holds a {type(loaded).__name__}, not an nn.Module{hint}")
    return loaded, path


def resolve_input_shape(module: nn.Module, input_shape: str | Sequence[int] | None = None,
                        batch: int | None = None) -> tuple[int, ...]:
    """The full input shape (batch first) to export and time the model at."""
    if input_shape is not None:
        shape = parse_shape(input_shape)
    else:
        recorded = getattr(module, INPUT_SHAPE_ATTR, None)
        if recorded is None:
            raise DeployError(
                "the model's input shape is unknown: pass --input-shape (e.g. --input-shape "
                f"1,3,224,224; input_shape= in Python), or set model.{INPUT_SHAPE_ATTR} = "
                "(1, 3, 224, 224) before torch.save")
        shape = parse_shape(recorded)
    if batch is not None:
        if int(batch) <= 0:
            raise DeployError(f"--batch must be positive, got {batch}")
        shape = (int(batch),) + shape[1:]
    return shape


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
