"""Errors of the search and evaluation commands (all HubmergeError, so the CLI prints them and exits 2)."""

from __future__ import annotations

from hubmerge.errors import HubmergeError


class EvalError(HubmergeError):
    """An evaluation cannot run: a bad --eval, an unreadable data file, a model that does not load."""


class EvolveError(HubmergeError):
    """The search cannot run or continue (no search ranges, a study made for another search, ...)."""


class GateError(HubmergeError):
    """The pre-push evaluation refused the merge (nothing was committed)."""
