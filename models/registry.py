"""Model registry: a config or the CLI names a model, ``create_model`` builds it (after timm's _registry)."""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

from torch import nn

from models.errors import ModelsError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class UnknownModelError(ModelsError, KeyError):
    """Raised for a model name nobody registered; the message lists the known names."""

    def __str__(self) -> str:
        return str(self.args[0])


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model builder under ``name`` (lower case, e.g. ``"mmoe"`` or ``"mmoe+dml"``)."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return wrap


def list_models() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, **config: Any) -> nn.Module:
    """Build the model registered as ``name`` with ``config`` overriding its defaults."""
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None
    return builder(**config)


def model_kind(name: str) -> str:
    """``"ranking"`` or ``"retrieval"``: the ``kind`` class attribute of the class the builder is annotated to
    return (ranking when there is none), so contract tests can pick the models of one kind without building."""
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None
    try:
        returned = typing.get_type_hints(builder).get("return")
    except (NameError, TypeError):
        returned = None
    return str(getattr(returned, "kind", "ranking"))
