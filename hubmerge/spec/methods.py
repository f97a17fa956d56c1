"""The merge methods a spec may name, as the spec checks see them: one plain table.

Each entry is a registered method (``hubmerge.merge.methods.registry.MergeMethod``); spec/ reads only its
contract: the parameters (:class:`Param`: name, type, scope, default), the base-model policy and how many
inputs it takes. spec/ imports nothing above itself: the method registry fills this table as the method
families register, and ``hubmerge.merge.methods`` installs the loader that imports the built-in families on
the first lookup (they import torch, so not before). The package root imports ``hubmerge.merge.methods``, so
the table is complete whichever module a program imports first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol

REQUIRED: Any = object()

ParamScope = Literal["shared", "model"]
BasePolicy = Literal["required", "optional", "ignored"]


@dataclass(frozen=True)
class Param:
    """A parameter a method takes from the spec."""

    name: str
    type: type  # float, int, bool or str
    scope: ParamScope = "shared"
    default: Any = REQUIRED
    # The keyword the function receives (``lambda`` is a Python keyword, per-model lists are plural).
    kwarg: str | None = None
    # Per-model parameters: does the base model get one too (mergekit's INPUT vs NON_BASE scope)?
    includes_base: bool = False
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def keyword(self) -> str:
        return self.kwarg or self.name


class MethodContract(Protocol):
    """What the spec checks read of a table entry."""

    name: str
    params: tuple[Param, ...]
    base: BasePolicy
    min_inputs: int
    max_inputs: int | None

    def param(self, name: str) -> Param | None: ...

    @property
    def param_names(self) -> tuple[str, ...]: ...


_TABLE: dict[str, Any] = {}
_LOADERS: list[Callable[[], None]] = []


def add(method: Any) -> None:
    """Enter a method under its name (the registry's ``register`` calls this)."""
    if method.name in _TABLE:
        raise ValueError(f"merge method {method.name!r} is registered twice")
    _TABLE[method.name] = method


def add_loader(loader: Callable[[], None]) -> None:
    """A function that registers more methods, run once before the next lookup."""
    _LOADERS.append(loader)


def _complete() -> None:
    while _LOADERS:
        _LOADERS.pop(0)()


def lookup(name: str) -> Any:
    """The method registered as ``name``; KeyError when there is none (callers add a hint)."""
    _complete()
    return _TABLE[name]


def entries() -> dict[str, Any]:
    """Every registered method, by name."""
    _complete()
    return dict(_TABLE)
