"""Evolutionary merging: search a spec's ``{search: [low, high]}`` values with Optuna, score candidates
cheaply on anchor items with confidence intervals, and evaluate models (``hubmerge eval``, push gates)."""

from hubmerge.evolve.errors import EvalError, EvolveError, GateError
from hubmerge.evolve.estimators import Estimate, anchor_indices, ratio_estimate

__all__ = ["EvalError", "EvolveError", "Estimate", "GateError", "anchor_indices", "ratio_estimate"]
