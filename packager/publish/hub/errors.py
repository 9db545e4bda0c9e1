"""Turning `huggingface_hub` / httpx failures into unswift's exit-coded errors, and telling them apart.

A failed push must say which step failed, with the HTTP status and the URL, and whether re-running helps:
`HubError` (exit 3, "re-run to resume") for network and server failures, `UsageError` (exit 2, with the
fix) for a rejected token, a refused request or a Hub without Xet. This module holds that judgement in one
place, so the push state machine (`session.py`), the download and the token look-up all word it the same.

It also hides which HTTP library the installed `huggingface_hub` speaks (httpx2 for 2.x, httpx for 1.x)
and whether it knows about Trusted Publishers (`OIDCError`).
"""

from __future__ import annotations

import contextlib
from typing import Any

from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from packager.errors import HubError, UnswiftError, UsageError

try:  # huggingface_hub 2.x talks through httpx2, 1.x through httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    import httpx  # type: ignore[no-redef]

try:
    from huggingface_hub.errors import OIDCError
except ImportError:  # pragma: no cover - huggingface_hub without Trusted Publishers support

    class OIDCError(Exception):  # type: ignore[no-redef]
        """Placeholder: this huggingface_hub cannot exchange OIDC tokens."""


#: Statuses a repeated request may get past: timeouts, rate limits, a struggling server.
RETRYABLE_STATUS = (408, 429, 500, 502, 503, 504)

#: What a plain API call (`HfApi` reads, settings, refs, tags) raises when the Hub or the network fails.
HTTP_FAILURES: tuple[type[BaseException], ...] = (HfHubHTTPError, httpx.HTTPError)

#: What `create_commit` raises when the Hub or the network fails. ConnectionError is what hf_xet (Rust)
#: raises for any failed Xet transfer; ValueError covers malformed answers and a refused README header.
UPLOAD_FAILURES: tuple[type[BaseException], ...] = (
    HfHubHTTPError,
    httpx.HTTPError,
    ValueError,
    ConnectionError,
)

TOKEN_FIX = (
    "export HF_TOKEN=hf_... (a write token from https://huggingface.co/settings/tokens) or run "
    "`hf auth login`; in GitHub Actions use Trusted Publishers (see docs/CI.md)"
)
RERUN = "re-run the same command to resume: nothing is tagged until the whole release is committed"


def unwrap(err: BaseException) -> BaseException:
    """huggingface_hub wraps each failed LFS upload in `RuntimeError("Error while uploading ...")`."""
    while isinstance(err, RuntimeError) and err.__cause__ is not None:
        err = err.__cause__
    return err


def retryable(err: BaseException) -> bool:
    """A failure that may pass if the same request is sent again: a retryable status or a transport error."""
    if isinstance(err, HfHubHTTPError):
        return err.response.status_code in RETRYABLE_STATUS
    return isinstance(err, httpx.TransportError)


def moved(err: BaseException) -> bool:
    """The commit was refused because the branch head is no longer the `parent_commit` we sent."""
    return isinstance(err, HfHubHTTPError) and err.response.status_code in (409, 412)


def branch_moved(error: UnswiftError, branch: str) -> UnswiftError:
    """The error for a commit that lost a race: re-running commits on top of the new head."""
    return HubError(
        f"commit failed: branch '{branch}' moved while this push ran (another push landed first); "
        f"{error.message}",
        hint="re-run the same command: it commits on top of the new head (and only then tags)",
        details=error.details,
    )


def request_of(err: BaseException) -> tuple[str, str]:
    """Method and URL (without query string: presigned URLs carry credentials there) of a failed request."""
    request = None
    if isinstance(err, HfHubHTTPError):
        request = err.response.request if err.response is not None else None
    elif isinstance(err, httpx.RequestError):
        with contextlib.suppress(RuntimeError):
            request = err.request
    if request is None:
        return "?", "?"
    url = str(request.url).split("?", 1)[0]
    return request.method, url


def commit_step(err: BaseException) -> str:
    """Which part of `create_commit` failed, from the request it was making."""
    if isinstance(err, ValueError) and not isinstance(err, HfHubHTTPError):
        return "README validation" if "Invalid metadata in README.md" in str(err) else "upload"
    if isinstance(err, ConnectionError):
        return "Xet upload"
    method, url = request_of(err)
    for needle, step in (
        ("/api/validate-yaml", "README validation"),
        ("/preupload/", "preupload"),
        ("/info/lfs/objects/batch", "LFS batch"),
        ("/info/lfs/objects/verify", "LFS verify"),
        ("xet-write-token", "Xet upload"),
        ("/commit/", "commit"),
    ):
        if needle in url:
            return step
    return "LFS upload" if method == "PUT" else "upload"


def short(err: BaseException) -> str:
    """A few words for a progress line between attempts: the status, or the exception's class."""
    if isinstance(err, HfHubHTTPError):
        return f"HTTP {err.response.status_code}"
    return err.__class__.__name__


def classify(step: str, err: BaseException, *, repo_id: str | None, endpoint: str) -> UnswiftError:
    """Turn a huggingface_hub / httpx failure into our exit-coded error: which step, status, URL, the fix."""
    method, url = request_of(err)
    where = f"{method} {url}"
    details: dict[str, Any] = {"step": step}
    repo = f"'{repo_id}'" if repo_id else "the repo"
    if isinstance(err, ValueError) and not isinstance(err, HfHubHTTPError):
        text = str(err).strip()
        if "Invalid metadata in README.md" in text:
            return UsageError(
                f"{step} failed: the Hub refused the card's metadata: {text}",
                hint="fix the YAML header of README.md (`unswift card RELEASE`), re-sign, re-run",
                details=details,
            )
        return HubError(
            f"{step} failed: malformed answer from the Hub at '{endpoint}' ({text.splitlines()[0]})",
            hint=RERUN,
            details=details,
        )
    if isinstance(err, ConnectionError):  # raised by hf_xet
        text = str(err).strip()
        if "xet-write-token" in text and "404" in text:
            return UsageError(
                f"{step} failed: the Hub at '{endpoint}' does not offer Xet storage ({text})",
                hint="pass --no-xet to upload with the Git LFS protocol (e.g. self-hosted hubs)",
                details=details,
            )
        return HubError(f"{step} failed: {text}", hint=RERUN, details=details)
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code
        details["status"] = status
        server = (err.server_message or "").strip().splitlines()
        said = f": {server[0]}" if server else ""
        if "xet-write-token" in url:
            return UsageError(
                f"{step} failed: the Hub at '{endpoint}' does not offer Xet storage "
                f"(HTTP {status} on {where})",
                hint="pass --no-xet to upload with the Git LFS protocol (e.g. self-hosted hubs)",
                details=details,
            )
        if status == 401 and not isinstance(err, RepositoryNotFoundError):
            return UsageError(
                f"{step} failed: the Hub at '{endpoint}' rejected the token (HTTP 401 on {where})",
                hint=TOKEN_FIX,
                details=details,
            )
        if isinstance(err, RepositoryNotFoundError):
            return UsageError(
                f"{step} failed: repo {repo} was not found at '{endpoint}' or this token cannot see it "
                f"(HTTP {status} on {where})",
                hint=f"check --repo and the token's access; {TOKEN_FIX}",
                details=details,
            )
        if status == 403:
            return UsageError(
                f"{step} failed: this token may not write to {repo} (HTTP 403 on {where}{said})",
                hint="use a token with write access to the repo's org (https://huggingface.co/settings/tokens)",
                details=details,
            )
        if status in RETRYABLE_STATUS or status >= 500 or status in (409, 412, 423):
            return HubError(f"{step} failed: HTTP {status} from {where}{said}", hint=RERUN, details=details)
        return UsageError(
            f"{step} failed: the Hub refused the request (HTTP {status} on {where}{said})",
            hint="check the options; re-running will not help until they change",
            details=details,
        )
    if isinstance(err, httpx.ConnectError):
        text = f"could not connect to the Hub at '{endpoint}' ({err})"
    elif isinstance(err, httpx.TimeoutException):
        text = f"the Hub at '{endpoint}' did not answer in time ({err.__class__.__name__})"
    else:
        text = f"the connection to '{endpoint}' failed ({err.__class__.__name__}: {err})"
    return HubError(
        f"{step} failed: {text} on {where}",
        hint=f"check the network or --endpoint; {RERUN}",
        details=details,
    )
