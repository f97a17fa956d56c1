"""The one place merge methods are registered.

A merge method is a pure function on tensors plus a declaration of its inputs and parameters. The
executor resolves parameters (scalars, gradients, filters) per output tensor and calls the function as

    func(base, others, **params)                 # deterministic methods
    func(base, others, generator=g, **params)    # methods with ``random=True``

- ``base``: the base model's tensor, or ``None`` when the method ignores the base or none is given.
- ``others``: the remaining input tensors, in spec order (for ``base="ignored"`` methods the base
  model, when it is an input, is one of them: last if it was added implicitly, as mergekit does).
- per-model parameters (scope ``"model"``) arrive as lists aligned with ``others``; shared ones as scalars.
- all tensors share one dtype and device (the executor casts them first); the result has the same
  shape. Methods may compute in a wider dtype but must return the dtype mergekit returns.
- ``generator`` is a ``torch.Generator`` seeded from (seed, output tensor name), so random results do not
  depend on execution order, threads or how the work is split.
- the executor passes ``others`` as :class:`ReleasableInputs`, a list nothing else refers to: a method may
  ``release`` an input it is done with, so its memory (a mapped file range) is freed while the method still
  works on the rest. Any other sequence (a caller's own list) is never modified.

No I/O, no config objects, no global state in a method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from hubmerge.spec import methods as table
from hubmerge.spec.methods import REQUIRED, BasePolicy, Param

__all__ = ["REQUIRED", "MergeMethod", "Param", "ReleasableInputs", "all_methods", "get_method", "register", "release"]


class ReleasableInputs(list):
    """The executor's ``others``: it keeps no other reference to them (see ``release``)."""


def release(inputs: Any, index: int) -> None:
    """Drop ``inputs[index]`` if the caller allowed it (``ReleasableInputs``); otherwise do nothing."""
    if isinstance(inputs, ReleasableInputs):
        inputs[index] = None


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: the function, its contract and its documentation."""

    name: str
    func: Callable[..., Any]
    params: tuple[Param, ...] = ()
    base: BasePolicy = "ignored"
    min_inputs: int = 1  # counting the base when it is an input
    max_inputs: int | None = None
    random: bool = False
    # Its math costs far more than reading and writing the tensor (sorting, sampling, iterating): the executor
    # gives it every core. Otherwise one core is left to the reads, writes and hashing that run beside it.
    compute_bound: bool = False
    # Its costly part is one independent task per input model (TIES' top-k selection, Breadcrumbs' window),
    # which it spreads over the span workers itself (``_chunks.run_spans``): the executor then gives it one
    # torch thread and every core as a span worker. torch splitting each of the selection's many small
    # operations over its threads waits for the slowest at every one: on a loaded machine that made a TIES
    # merge several times slower than with one thread.
    parallel_models: bool = False
    # Row i of the output depends on row i of the inputs only (elementwise math with per-tensor scalars):
    # the executor may merge a large tensor a block of rows at a time, bit for bit the same.
    rowwise: bool = False
    summary: str = ""
    paper: str = ""  # URL
    # Extra validation of resolved scalar parameters, before any tensor is read: raises ValueError.
    check: Callable[[dict[str, Any]], None] | None = None
    aliases: tuple[str, ...] = field(default=())
    # False for methods mergekit 0.1.5 does not have: their recipes are not mergekit-compatible.
    in_mergekit: bool = True
    # A dtype the result is promoted to (with the compute dtype) when the spec sets no out_dtype, as mergekit
    # 0.1.5 writes it: arcee_fusion's float32 mask makes its result float32 even from bf16 inputs.
    result_promotes_to: Any = None  # a torch.dtype

    def param(self, name: str) -> Param | None:
        for p in self.params:
            if p.name == name:
                return p
        return None

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


def register(method: MergeMethod) -> MergeMethod:
    """Enter a method in the one table of methods (``hubmerge.spec.methods``, which spec checks read)."""
    table.add(method)
    return method


def get_method(name: str) -> MergeMethod:
    """Look a method up by name; raises KeyError (callers turn it into a SpecError with a hint)."""
    return table.lookup(name)


def all_methods() -> dict[str, MergeMethod]:
    return table.entries()
