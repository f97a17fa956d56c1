"""Evaluating a model on its own (``hubmerge eval``) and as a pre-push gate (``push --gate-eval``).

The gate is a callable handed to ``hubmerge.pipeline.push.push``: push calls it with the finished merge folder
before its one commit (with a gate, shards are kept until then instead of being pre-uploaded), and a gate
that raises leaves the repo untouched. The perplexity gate refuses a merge whose metric is worse than
``max_ratio`` times the best of its parents' (for a metric to maximise: lower than the best divided by it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from hubmerge.evolve.errors import EvalError, GateError
from hubmerge.evolve.estimators import Estimate, anchor_indices
from hubmerge.evolve.evaluate import Evaluation, load_model, parse_eval
from hubmerge.spec.model import MergeSpec

logger = logging.getLogger(__name__)


def evaluate_target(target: str | Path | Any, evals: Sequence[Evaluation], *, hub: Any = None,
                    base_dir: Path | None = None, anchors: int | None = None, seed: int = 0, device: str = "cpu",
                    dtype: str = "float32", batch_size: int = 32, confidence: float = 0.95) -> list[Estimate]:
    """Each evaluation of one model (a folder, a Hub repo or a model reference); with ``anchors``, on that
    many fixed random items (the same subset ``hubmerge evolve`` uses for the same seed)."""
    holder = load_model(target, hub=hub, base_dir=base_dir, dtype=dtype, device=device)
    out = []
    for ev in evals:
        indices = anchor_indices(len(ev), anchors, seed) if ev.has_items else None
        out.append(ev.evaluate(holder, indices, batch_size=batch_size, confidence=confidence))
    return out


def ratio_gate(eval_spec: str, spec: MergeSpec, *, max_ratio: float = 1.5, hub: Any = None,
               base_dir: Path | None = None, device: str = "cpu", dtype: str = "float32",
               batch_size: int = 32) -> Callable[[Path], None]:
    """A push gate: the merge's metric against the best of its parents' (every model the spec names)."""
    if not max_ratio >= 1.0:
        raise EvalError(f"--max-ppl-ratio must be at least 1, got {max_ratio}")
    evaluation = parse_eval(eval_spec, base_dir=base_dir)  # a bad --gate-eval fails before any merging
    if not evaluation.has_items:
        raise EvalError(f"--gate-eval {eval_spec}: the gate needs a ppl: or jsonl: evaluation",
                        hint="a user callable has no natural scale to compare a ratio on")

    def gate(folder: Path) -> None:
        kwargs = dict(device=device, dtype=dtype, batch_size=batch_size)
        merged = evaluate_target(Path(folder), [evaluation], **kwargs)[0].value
        parents = {str(ref): evaluate_target(ref, [evaluation], hub=hub, base_dir=base_dir, **kwargs)[0].value
                   for ref in spec.referenced_models()}
        minimize = evaluation.direction == "minimize"
        name, best = (min if minimize else max)(parents.items(), key=lambda kv: kv[1])
        ratio = merged / best if minimize else (best / merged if merged > 0 else float("inf"))
        table = ", ".join(f"{n}: {v:.4g}" for n, v in parents.items())
        logger.info("gate %s: merge %.4g, parents %s (ratio %.3g, allowed %.3g)", evaluation.label, merged, table,
                    ratio, max_ratio)
        if ratio > max_ratio:
            raise GateError(f"refusing to push: the merge's {evaluation.metric} on {evaluation.spec} is {merged:.4g}, "
                            f"{ratio:.2f}x worse than its best parent's ({name}: {best:.4g}); "
                            f"--max-ppl-ratio allows {max_ratio:g}x",
                            hint="nothing was committed; fix the recipe (or raise --max-ppl-ratio)")

    return gate
