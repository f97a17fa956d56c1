"""huggingface_hub's exceptions as HubErrors a user can act on, each with its kind (never echoing a token)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import requests

from hubmerge.errors import HubError

_CANNOT_REACH = "check the network or HF_ENDPOINT"


def _error(what: str, reason: str, kind: str, *, hint: str | None = None, missing: str | None = None) -> HubError:
    return HubError(f"{what}: {reason}", hint=hint, kind=kind, missing=missing, reason=reason)


@contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """Turn the Hub client's exceptions raised inside the block into HubErrors about ``what``."""
    from huggingface_hub import errors as hf

    try:
        yield
    except HubError:
        raise
    except hf.GatedRepoError:
        raise _error(what, "the repo is gated and this token has no access", HubError.GATED,
                     hint="accept the model's terms on its Hub page, then pass a token with access") from None
    except hf.RepositoryNotFoundError:
        raise _error(what, "repo not found (or private without access)", HubError.NOT_FOUND, missing="repo",
                     hint="check the repo id; for a private repo pass a token (HF_TOKEN)") from None
    except hf.RevisionNotFoundError:
        raise _error(what, "revision not found", HubError.NOT_FOUND, missing="revision",
                     hint="check the branch, tag or commit after '@'") from None
    except hf.RemoteEntryNotFoundError:
        raise _error(what, "file not found in the repo", HubError.NOT_FOUND, missing="file") from None
    except hf.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise _error(what, "the token was rejected (HTTP 401)", HubError.AUTH,
                         hint="create a new token at huggingface.co/settings/tokens and set HF_TOKEN") from None
        if status == 403:
            raise _error(what, "permission denied (HTTP 403)", HubError.AUTH,
                         hint="the token needs write access to this repo") from None
        if status == 412:
            raise changed_since_start(what) from None
        if status == 429:
            wait = exc.response.headers.get("Retry-After", "a few") if exc.response is not None else "a few"
            raise _error(what, f"rate limited by the Hub; retry in {wait} seconds", HubError.RATE_LIMITED,
                         hint="pass a token: anonymous limits are shared per IP") from None
        raise _error(what, f"Hub error HTTP {status}: {_first_line(str(exc))}", HubError.OTHER) from None
    except (requests.ConnectionError, OSError) as exc:
        if type(exc).__name__ in ("FileNotFoundError", "IsADirectoryError", "PermissionError"):
            raise
        raise _error(what, f"cannot reach the Hub ({type(exc).__name__})", HubError.UNREACHABLE,
                     hint=_CANNOT_REACH + "; behind a proxy try HF_HUB_DISABLE_XET=1") from None
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx", "httpx2", "httpcore")):
            raise _error(what, f"cannot reach the Hub ({type(exc).__name__})", HubError.UNREACHABLE,
                         hint=_CANNOT_REACH) from None
        raise


def changed_since_start(what: str) -> HubError:
    """The branch moved under a commit guarded by the head it was decided from."""
    return _error(what, "the repo changed since the merge started (another commit landed)", HubError.CONFLICT,
                  hint="run again to merge on top of the new head, or use --create-pr")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else ""
