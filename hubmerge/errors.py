"""One exception hierarchy. Every error carries what a user needs to act: where, what, and a hint.

The CLI prints ``error: <message>`` (plus the hint) and exits 2; the library raises.
"""

from __future__ import annotations


class HubmergeError(Exception):
    """Base of every error hubmerge raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class SpecError(HubmergeError):
    """The merge spec is invalid. ``path`` is the YAML path, e.g. ``models[1].parameters.density``."""

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None):
        self.path = path
        prefix = f"{path}: " if path else ""
        super().__init__(prefix + message, hint=hint)


class SourceError(HubmergeError):
    """An input model cannot be found or read (missing files, malformed safetensors, bad index)."""


class PlanError(HubmergeError):
    """The inputs are incompatible (shapes, dtypes, layer counts, vocabularies)."""


class MergeError(HubmergeError):
    """A merge method failed on a tensor."""


class OutputError(HubmergeError):
    """The output folder cannot be written or resumed."""


class HubError(HubmergeError):
    """A Hub call failed in a way the user can fix (not found, auth, rate limit, repo moved)."""
