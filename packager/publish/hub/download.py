"""`download_release`: fetch a published release (every file at a revision) for `unswift verify ORG/NAME`.

A plain `snapshot_download`, with its failures worded like the push's: a gated, missing or unreadable repo
or revision is the user's to fix (exit 2), an unreachable Hub is worth a re-run (exit 3).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from huggingface_hub import get_token, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from packager.errors import HubError, UsageError
from packager.publish.hub.checks import check_repo_id
from packager.publish.hub.client import resolve_endpoint
from packager.publish.hub.errors import HTTP_FAILURES, TOKEN_FIX, OIDCError, classify


def download_release(
    repo_id: str,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Download a published release (all files at `revision`) for `unswift verify ORG/NAME`.

    Args:
        repo_id (`str`): `ORG/NAME`.
        revision (`str`, *optional*): a tag (what users load), branch or commit sha; default `main`.
        endpoint (`str`, *optional*): a self-hosted hub; default `HF_ENDPOINT`, then huggingface.co.
        token (`str`, *optional*): default `HF_TOKEN` or the saved login; none is needed for public repos.
        cache_dir (`str` or `Path`, *optional*): the Hub cache to use (default: the usual HF cache).

    Returns:
        `Path`: the snapshot folder. It is the HF cache snapshot, whose files are symlinks into `blobs/`.

    Raises:
        `UsageError`: malformed repo id; repo or revision not found, or not readable with this token.
        `HubError`: the Hub could not be reached or failed; re-running resumes the download.
    """
    check_repo_id(repo_id)
    endpoint_url = resolve_endpoint(endpoint)
    if token is None:
        with contextlib.suppress(OIDCError):
            token = get_token()
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            endpoint=endpoint_url,
            token=token,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
        )
    except GatedRepoError as err:
        raise UsageError(
            f"repo '{repo_id}' is gated and this token has no access to it",
            hint=f"request access at {endpoint_url}/{repo_id}, then {TOKEN_FIX}",
        ) from err
    except RepositoryNotFoundError as err:
        raise UsageError(
            f"repo '{repo_id}' was not found at '{endpoint_url}', "
            "or it is private and the token cannot read it",
            hint=f"check the repo id; for a private repo {TOKEN_FIX}",
        ) from err
    except RevisionNotFoundError as err:
        raise UsageError(
            f"revision '{revision}' does not exist in repo '{repo_id}'",
            hint="pass a tag (e.g. v1), a branch or a commit sha with --revision",
        ) from err
    except LocalEntryNotFoundError as err:
        raise HubError(
            f"download of '{repo_id}' at '{revision or 'main'}' failed: "
            f"the Hub at '{endpoint_url}' could not be "
            f"reached and the release is not in the local cache ({err.__class__.__name__})",
            hint="check the network or --endpoint, then re-run",
            details={"step": "download"},
        ) from err
    except HTTP_FAILURES as err:
        raise classify("download", err, repo_id=repo_id, endpoint=endpoint_url) from err
    return Path(folder)
