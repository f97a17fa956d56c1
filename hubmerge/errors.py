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
    """The merge spec is invalid. ``path`` is the YAML path, e.g. ``models[1].parameters.density``;
    ``source`` the file (or document) the message already names."""

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None,
                 source: str | None = None):
        self.path = path
        self.source = source
        prefix = (f"{source}: " if source else "") + (f"{path}: " if path else "")
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
    """A Hub call failed in a way the user can fix (not found, auth, rate limit, repo moved).

    ``kind`` says which, for code to act on (never the wording of the message): one of the constants below.
    For ``NOT_FOUND``, ``missing`` says what is missing: "repo", "revision" or "file". ``reason`` is the
    message without the leading "<what was asked>: ", for short displays; ``subject`` what was asked (a repo
    id or model reference) where the raiser knows it."""

    NOT_FOUND = "not_found"  # the repo, revision or file does not exist (or is private without access)
    GATED = "gated"  # the repo needs its terms accepted
    CONFLICT = "conflict"  # the branch moved since it was read (a commit's parent guard failed)
    AUTH = "auth"  # the token is missing, rejected, or may not do this
    RATE_LIMITED = "rate_limited"
    UNREACHABLE = "unreachable"  # no connection to the Hub
    OTHER = "other"

    def __init__(self, message: str, *, hint: str | None = None, kind: str = OTHER, missing: str | None = None,
                 reason: str | None = None, subject: str | None = None):
        super().__init__(message, hint=hint)
        self.kind = kind
        self.missing = missing
        self.reason = reason if reason is not None else message
        self.subject = subject
