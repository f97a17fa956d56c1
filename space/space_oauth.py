"""Sign in with Hugging Face when the app does not run on a Space: a local OAuth stand-in.

On a Space (``SYSTEM=spaces``) nothing here is used: ``hf_oauth: true`` in README.md makes the Hub inject
the OAuth client settings and Gradio runs the real login flow.

Off a Space, Gradio 6.31 replaces the login routes with a mock that (a) calls ``whoami`` against
HF_ENDPOINT at start-up, expecting huggingface.co's exact reply, and (b) hands every handler the literal
token ``mock-oauth-token-for-local-dev``, which cannot create a repo anywhere. This module swaps that mock
for routes that behave the same in the browser (the same ``/login/huggingface`` -> ``/login/callback`` ->
back redirects, the same session cookie that ``gr.LoginButton`` and ``gr.OAuthToken`` read) but put a
real token in the session:

- ``HUBMERGE_LOCAL_OAUTH_TOKEN``, if set (the tests set it to a test-Hub token), else
- the machine's Hugging Face login (``huggingface_hub.get_token()``: ``HF_TOKEN`` or ``hf auth login``).

The user shown on the button comes from ``whoami`` at HF_ENDPOINT with that token, at sign-in time (not
at start-up, so the app starts without network). The token is never logged.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse

import fastapi
from fastapi.responses import RedirectResponse

logger = logging.getLogger("hubmerge.space")

ENV_TOKEN = "HUBMERGE_LOCAL_OAUTH_TOKEN"
SCOPES = "openid profile read-repos write-repos manage-repos"


def on_spaces() -> bool:
    return os.environ.get("SYSTEM") == "spaces"


def local_token() -> str | None:
    from huggingface_hub import get_token

    return os.environ.get(ENV_TOKEN) or get_token()


def install() -> bool:
    """Use the stand-in for the mocked login routes (off Spaces only). Call before ``launch()``."""
    if on_spaces():
        return False
    import gradio.oauth as gradio_oauth

    if getattr(gradio_oauth._add_mocked_oauth_routes, "_hubmerge_local", False):
        return True
    gradio_oauth._add_mocked_oauth_routes = _add_local_routes  # looked up by attach_oauth at launch
    return True


def _safe_target(request: fastapi.Request) -> str:
    """Only a path on this server (no scheme or host): no open redirect."""
    target = request.query_params.get("_target_url", "/")
    parsed = urllib.parse.urlparse(target)
    safe = "/" + (parsed.path or "").lstrip("/\\")
    return safe + (f"?{parsed.query}" if parsed.query else "")


def session_info(token: str, endpoint: str) -> dict:
    """The session entry Gradio's real OAuth callback stores, for the user who owns ``token``."""
    from hubmerge.hub.client import Hub

    user = Hub(endpoint=endpoint, token=token).whoami()
    name = user["name"]
    return {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": 8 * 3600,
        "scope": SCOPES,
        "expires_at": int(time.time()) + 8 * 3600,
        "userinfo": {
            "sub": str(user.get("id") or name),
            "name": user.get("fullname") or name,
            "preferred_username": name,
            "profile": f"{endpoint}/{name}",
            "picture": user.get("avatarUrl") or "",
            "website": "",
        },
    }


def _add_local_routes(app: fastapi.FastAPI) -> None:
    from hubmerge.sources.hub_model import default_endpoint

    @app.get("/login/huggingface")
    def oauth_login(request: fastapi.Request) -> RedirectResponse:
        query = urllib.parse.urlencode({"_target_url": _safe_target(request)})
        return RedirectResponse(f"/login/callback?{query}")

    @app.get("/login/callback")
    def oauth_redirect_callback(request: fastapi.Request) -> RedirectResponse:
        token = local_token()
        if not token:
            logger.warning("local sign-in: no token; set %s or run `hf auth login`", ENV_TOKEN)
        else:
            try:
                request.session["oauth_info"] = session_info(token, default_endpoint())
                logger.info("local sign-in as %s", request.session["oauth_info"]["userinfo"]["preferred_username"])
            except Exception as exc:  # noqa: BLE001 - report the kind of failure, never the token
                logger.warning("local sign-in failed: whoami at %s: %s", default_endpoint(), type(exc).__name__)
        return RedirectResponse(_safe_target(request))

    @app.get("/logout")
    def oauth_logout(request: fastapi.Request) -> RedirectResponse:
        request.session.pop("oauth_info", None)
        return RedirectResponse(_safe_target(request))


_add_local_routes._hubmerge_local = True  # type: ignore[attr-defined]
