"""IRT fitness estimates inside a search (``--estimator irt|gpirt``, ``--anchor-selection stratified``).

The parents (every model the spec names) are evaluated on every item of each accuracy evaluation once per
study; the first ``warmup`` candidates too. A 2PL model (``irt``) is fitted on all those full response rows
— refitted whenever another candidate has been fully evaluated, by this worker or another, since rows are
kept in the study — and every later candidate, scored on the anchors only, gets the p-IRT or gp-IRT
estimate of its accuracy on every item, with an interval. Stratified anchors are drawn once from the fit on
the parents (so every worker of a study draws the same ones).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from hubmerge.evolve.errors import EvolveError
from hubmerge.evolve.estimators import Estimate
from hubmerge.evolve.evaluate import Evaluation, JsonlEval, load_model
from hubmerge.evolve.irt import IrtModel, estimate, fit_2pl, pirt_squared_error, stratified_anchors

logger = logging.getLogger(__name__)

ESTIMATORS = ("mean", "irt", "gpirt")
ANCHOR_SELECTIONS = ("random", "stratified")
PARENTS_ATTR = "hubmerge:irt:parents"
RESPONSES = "responses"  # key of a fully evaluated trial's rows in its hubmerge user attribute


def encode_rows(scores: Sequence[float]) -> str:
    return "".join("1" if s >= 0.5 else "0" for s in scores)


def decode_rows(text: str) -> list[float]:
    return [1.0 if c == "1" else 0.0 for c in text]


def check_irt_options(spec, evals: Sequence[Evaluation], *, estimator: str, selection: str,
                      anchors: int | None) -> list[int]:
    """The indices of the evaluations IRT applies to; one-line errors naming the option otherwise."""
    if estimator not in ESTIMATORS:
        raise EvolveError(f"--estimator {estimator!r} is not one of {', '.join(ESTIMATORS)}")
    if selection not in ANCHOR_SELECTIONS:
        raise EvolveError(f"--anchor-selection {selection!r} is not one of {', '.join(ANCHOR_SELECTIONS)}")
    if estimator == "mean" and selection == "random":
        return []
    option = f"--estimator {estimator}" if estimator != "mean" else "--anchor-selection stratified"
    if anchors is None:
        raise EvolveError(f"{option} needs --anchors K (the items each candidate is scored on)")
    which = [i for i, e in enumerate(evals) if isinstance(e, JsonlEval)]
    if not which:
        raise EvolveError(f"{option} needs a jsonl: evaluation (items answered right or wrong)",
                          hint="IRT models per-item correctness; perplexity and callables keep the mean")
    parents = spec.referenced_models()
    if len(parents) < 2:
        raise EvolveError(f"{option} needs at least 2 parents to fit item parameters on; the spec names "
                          f"{len(parents)}")
    for i in which:
        if len(evals[i]) < anchors:
            raise EvolveError(f"--anchors {anchors}: {evals[i].label} has only {len(evals[i])} items "
                              f"({option} needs fewer anchors than items)")
    return which


@dataclass
class IrtFitness:
    evals: Sequence[Evaluation]
    which: list[int]
    estimator: str
    warmup: int
    confidence: float = 0.95
    rows: dict[int, list[list[float]]] = field(default_factory=dict)  # eval index -> full response rows
    _fits: dict[int, tuple[int, IrtModel, float]] = field(default_factory=dict)

    def parents(self, study, spec, options, *, hub: Any = None) -> None:
        """Every parent's full responses, from the study or evaluated now (and stored there)."""
        stored = study.user_attrs.get(PARENTS_ATTR)
        if not (isinstance(stored, dict) and all(str(i) in stored for i in self.which)):
            stored = {str(i): [] for i in self.which}
            for ref in spec.referenced_models():
                holder = load_model(ref, hub=hub, base_dir=options.base_dir, dtype=options.eval_dtype,
                                    device=options.device)
                for i in self.which:
                    stored[str(i)].append(encode_rows(self.evals[i].item_scores(holder, batch_size=options.batch_size)))
                logger.info("parent %s evaluated on every item for the IRT model", ref)
            study.set_user_attr(PARENTS_ATTR, stored)
        self.parent_rows = {i: [decode_rows(r) for r in stored[str(i)]] for i in self.which}

    def stratified(self, seed: int, k: int) -> dict[int, list[int]]:
        return {i: stratified_anchors(fit_2pl(self.parent_rows[i], seed=seed), k, seed) for i in self.which}

    def refresh(self, trials) -> int:
        """Collect the full rows of fully evaluated trials (any worker's); returns how many there are."""
        count = 0
        self.rows = {i: list(self.parent_rows[i]) for i in self.which}
        for t in trials:
            stored = (t.user_attrs.get("hubmerge") or {}).get(RESPONSES)
            if isinstance(stored, dict) and t.state.name == "COMPLETE":
                count += 1
                for i in self.which:
                    if str(i) in stored:
                        self.rows[i].append(decode_rows(stored[str(i)]))
        return count

    def model(self, i: int, anchors: list[int]) -> tuple[IrtModel, float]:
        rows = self.rows[i]
        cached = self._fits.get(i)
        if cached is None or cached[0] != len(rows):
            fitted = fit_2pl(rows)
            beta2 = pirt_squared_error(fitted, anchors, rows) if self.estimator == "gpirt" else 0.0
            cached = (len(rows), fitted, beta2)
            self._fits[i] = cached
        return cached[1], cached[2]

    def estimate(self, i: int, anchors: list[int], answers: list[float]) -> Estimate:
        fitted, beta2 = self.model(i, anchors)
        est = estimate(fitted, anchors, answers, kind=self.estimator, beta2=beta2, confidence=self.confidence)
        return Estimate(est.value, est.low, est.high, len(anchors), fitted.items, self.confidence)
