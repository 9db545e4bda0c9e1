"""Which Hub, which token, and the `huggingface_hub` client settings a push runs under.

Endpoint: `huggingface_hub` reads `HF_ENDPOINT` once, at import. `resolve_endpoint` reads it at call time
instead (argument, then `HF_ENDPOINT`, then the client's default), so the order of imports does not matter
for the push itself. (The Trusted Publishers token exchange inside `get_token()` still uses the endpoint
seen at import; the CLI exports `--endpoint` before importing, for that.)

Xet: `huggingface_hub` 2.4 uploads through Xet whenever `hf_xet` is installed and never falls back to LFS,
so a hub that only speaks LFS (a self-hosted KohakuHub, the test double) fails. `client_settings(no_xet=True)`
sets `huggingface_hub.constants.HF_HUB_DISABLE_XET` for the duration of the push (the client reads that
attribute at call time, not only at import), and restores it afterwards. The CLI also exports
`HF_HUB_DISABLE_XET=1` before `huggingface_hub` is imported.

Timeouts: `huggingface_hub`'s shared HTTP client has none, so a hung Hub would hang a CI job forever.
While a push runs, the client gets a 30 s connect and 300 s read/write timeout (unless one is already set);
a timeout is then handled like any network failure (retried, or exit 3).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

from huggingface_hub import constants, get_token
from huggingface_hub.utils import (
    are_progress_bars_disabled,
    disable_progress_bars,
    enable_progress_bars,
    set_client_factory,
)

from packager.errors import UsageError
from packager.publish.hub.errors import HTTP_FAILURES, TOKEN_FIX, OIDCError, classify, httpx

#: Read at call time (tests lower the read timeout to provoke one).
_CONNECT_TIMEOUT_S = 30.0
_READ_TIMEOUT_S = 300.0


def resolve_endpoint(endpoint: str | None) -> str:
    """The Hub URL to talk to: the argument, else `HF_ENDPOINT` now, else huggingface_hub's default."""
    value = endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    if not re.match(r"https?://[^/\s]+", value):
        raise UsageError(
            f"endpoint '{value}' is not an http(s) URL", hint="e.g. --endpoint https://hub.example.org"
        )
    return value.rstrip("/")


def resolve_token(token: str | None) -> str:
    """The token to push with: the argument, else `HF_TOKEN`, Trusted Publishers or the saved login.

    Raises:
        `UsageError`: no token anywhere, or the Trusted Publishers exchange was refused (with the fix).
        `HubError`: the exchange could not reach the Hub.
    """
    if token:
        return token
    try:
        found = get_token()
    except OIDCError as err:
        raise UsageError(
            f"no Hub token: HF_OIDC_RESOURCE='{os.environ.get('HF_OIDC_RESOURCE')}' is set but the Trusted "
            f"Publishers exchange failed ({err})",
            hint="add this workflow as a Trusted Publisher of the repo (docs/CI.md) and give the job "
            "`permissions: id-token: write`, or unset HF_OIDC_RESOURCE and set HF_TOKEN",
        ) from err
    except HTTP_FAILURES as err:
        raise classify(
            "get token (Trusted Publishers)", err, repo_id=None, endpoint=constants.ENDPOINT
        ) from err
    if not found:
        raise UsageError(
            "no Hugging Face token found: HF_TOKEN is not set and there is no saved login", hint=TOKEN_FIX
        )
    return found


@contextlib.contextmanager
def client_settings(*, no_xet: bool, show_progress: bool) -> Iterator[None]:
    """Xet off (if asked), HTTP timeouts on, progress bars as asked; everything restored afterwards."""
    from huggingface_hub.utils import _http

    old_xet = constants.HF_HUB_DISABLE_XET
    old_factory = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)
    hide_bars = not show_progress and not are_progress_bars_disabled()

    def factory() -> Any:
        client = old_factory()
        if client.timeout.read is None:  # keep whatever timeout a user configured
            client.timeout = httpx.Timeout(_READ_TIMEOUT_S, connect=_CONNECT_TIMEOUT_S)
        return client

    if no_xet:
        constants.HF_HUB_DISABLE_XET = True
    set_client_factory(factory)
    if hide_bars:
        disable_progress_bars()
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = old_xet
        set_client_factory(old_factory)
        if hide_bars:
            enable_progress_bars()
