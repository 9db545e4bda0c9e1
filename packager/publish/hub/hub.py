"""Publishing a release to the Hugging Face Hub, and fetching one back: the only module that talks HTTP.

Everything goes through `huggingface_hub.HfApi`, so tokens, Trusted Publishers (OIDC), proxies and the LFS
protocol behave as in every other Hub tool. What this module adds is the release discipline:

* **One atomic commit.** `push` sends every file of the release folder, plus a deletion for each remote file
  the release no longer has, in ONE `create_commit` guarded by `parent_commit` (the head it saw). Never
  `upload_folder`: with `hf_xet` installed it may split a large upload into several "(part N)" commits.
* **The tag comes last**, and only on a commit whose file tree was read back and equals the release, so a
  tag never points at a partial release.
* **Re-running resumes.** If the remote already holds exactly these files, no commit is made
  (`new_commit: false`); LFS objects already stored are not sent again. A commit whose response was lost is
  detected by reading the branch back before anything is reported or retried, so there are no duplicate
  commits; `create_commit` is tried at most twice, the second time only after that read-back and always
  under the `parent_commit` guard (a commit that landed late makes the retry fail with 412, not duplicate).
* **Errors say which step failed.** HTTP and network failures become `HubError` (exit 3, "re-run to
  resume"), with the step, status and URL; rejected tokens and refused requests become `UsageError`
  (exit 2) with the fix.

Xet: `huggingface_hub` 2.4 uploads through Xet whenever `hf_xet` is installed and never falls back to LFS,
so a hub that only speaks LFS (a self-hosted KohakuHub, the test double) fails. `push(no_xet=True)` sets
`huggingface_hub.constants.HF_HUB_DISABLE_XET` for the duration of the push (the client reads that
attribute at call time, not only at import), and restores it afterwards. The CLI also exports
`HF_HUB_DISABLE_XET=1` before `huggingface_hub` is imported.

Endpoint: `huggingface_hub` reads `HF_ENDPOINT` once, at import. This module reads it at call time
instead (argument, then `HF_ENDPOINT`, then the client's default), so the order of imports does not matter
for the push itself. (The Trusted Publishers token exchange inside `get_token()` still uses the endpoint
seen at import; the CLI exports `--endpoint` before importing, for that.)

Timeouts: `huggingface_hub`'s shared HTTP client has none, so a hung Hub would hang a CI job forever.
While a push runs, the client gets a 30 s connect and 300 s read/write timeout (unless one is already set);
a timeout is then handled like any network failure (retried, or exit 3).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    get_token,
    snapshot_download,
)
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import (
    are_progress_bars_disabled,
    disable_progress_bars,
    enable_progress_bars,
    set_client_factory,
    validate_repo_id,
)

from packager import __version__
from packager.errors import CheckFailed, HubError, UnswiftError, UsageError

try:  # huggingface_hub 2.x talks through httpx2, 1.x through httpx
    import httpx2 as _httpx
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    import httpx as _httpx  # type: ignore[no-redef]

try:
    from huggingface_hub.errors import OIDCError
except ImportError:  # pragma: no cover - huggingface_hub without Trusted Publishers support

    class OIDCError(Exception):  # type: ignore[no-redef]
        """Placeholder: this huggingface_hub cannot exchange OIDC tokens."""


__all__ = ["PushResult", "default_tag", "download_release", "push"]

#: Files every release folder has (docs/FORMAT.md); without them the folder is not a release.
REQUIRED_FILES = ("unswift.json", "config.json")
SIGNATURE_FILE = "model.sig"
#: Never deleted, never compared unless the release carries its own: the Hub writes it into every new repo.
_HUB_OWNED = ".gitattributes"
#: Folders never pushed (the same ones `upload_folder` skips).
_SKIPPED_DIRS = (".git", ".cache")

#: Waits (seconds) before the extra attempts of an idempotent step (repo create, reads, settings, tag).
#: Tests shorten the waits, never the number of attempts.
_RETRY_WAITS: tuple[float, ...] = (1.0, 4.0)
#: The commit POST itself is tried at most this often, each time only after checking it did not land.
_COMMIT_ATTEMPTS = 2
#: huggingface_hub's client has no timeout at all: a hung Hub would hang a CI job forever.
_CONNECT_TIMEOUT_S = 30.0
_READ_TIMEOUT_S = 300.0
_RETRYABLE_STATUS = (408, 429, 500, 502, 503, 504)

_TOKEN_FIX = (
    "export HF_TOKEN=hf_... (a write token from https://huggingface.co/settings/tokens) or run "
    "`hf auth login`; in GitHub Actions use Trusted Publishers (see docs/CI.md)"
)
_RERUN = "re-run the same command to resume: nothing is tagged until the whole release is committed"
# A git ref name we accept for tags and branches: conservative subset of `git check-ref-format`.
_REF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-/]{0,127}")

_T = TypeVar("_T")


@dataclass(frozen=True)
class PushResult:
    """What a push did; `to_json()` gives the CONTRACT fields of `unswift push --json`."""

    repo: str
    #: The commit sha that holds the release (new or already there).
    revision: str
    #: The tag now pointing at `revision` (None only with `create_pr`, where tagging waits for the merge).
    tag: str | None
    url: str
    release_dir: str
    #: False when the remote already held exactly these files, so no commit was made.
    new_commit: bool
    #: The pull request opened (or found) with `create_pr`.
    pr_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON fields of CONTRACT `push`/`release`: repo, revision, tag, url, release_dir, new_commit."""
        out: dict[str, Any] = {
            "repo": self.repo,
            "revision": self.revision,
            "tag": self.tag,
            "url": self.url,
            "release_dir": self.release_dir,
            "new_commit": self.new_commit,
        }
        if self.pr_url is not None:
            out["pr_url"] = self.pr_url
        return out


@dataclass(frozen=True)
class _LocalFile:
    path: str  # posix, relative to the release folder
    abspath: Path
    size: int
    sha256: str
    git_oid: str  # git blob sha1: what the Hub reports for a regular (non-LFS) file


@dataclass(frozen=True)
class _Diff:
    missing: tuple[str, ...]  # in the release, not on the remote
    altered: tuple[str, ...]  # on both, different content
    stale: tuple[str, ...]  # on the remote, no longer in the release (to delete)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.altered or self.stale)

    def describe(self) -> str:
        parts = [
            f"{label}: {', '.join(repr(p) for p in paths[:5])}{' …' if len(paths) > 5 else ''}"
            for label, paths in (("missing", self.missing), ("altered", self.altered), ("extra", self.stale))
            if paths
        ]
        return "; ".join(parts) or "identical"


# ---------------------------------------------------------------------------------------------- public API
def push(
    release_dir: str | os.PathLike[str],
    repo_id: str,
    *,
    tag: str | None = None,
    private: bool = True,
    public: bool = False,
    gated: str | None = None,
    endpoint: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    no_xet: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    allow_unsigned: bool = False,
    show_progress: bool = False,
    progress: Callable[[str], None] | None = None,
) -> PushResult:
    """Publish a release folder to a Hub model repo in one atomic commit, then tag that commit.

    Safe to re-run after any failure: it finishes the job without re-uploading what is there and
    without duplicate commits, and a tag only ever points at a commit holding exactly the release.

    > [!WARNING]
    > The folder must be a finished release (`unswift.json`, `config.json`, and `model.sig` unless
    > `allow_unsigned`); it is pushed exactly as it is. This function changes process-wide
    > `huggingface_hub` settings (Xet switch, HTTP client timeouts) while it runs, and restores them.

    Args:
        release_dir (`str` or `Path`): the release folder.
        repo_id (`str`): `ORG/NAME` of the model repo; created (private) if missing.
        tag (`str`, *optional*): the tag to create; default `default_tag(release_dir)`
            (`v<unswift version>-<8 hex of the release digest>`). If it exists it must already point at a
            commit holding exactly these files (then nothing is pushed), else `UsageError`.
        private (`bool`, defaults to `True`): create the repo private. `private=False` needs `public=True`.
        public (`bool`, defaults to `False`): consent to a public repo: create it public, or make an
            existing private repo public once the release is tagged. Without it a public repo is refused.
        gated (`"auto"` or `"manual"`, *optional*): turn on access requests (left as is when None).
        endpoint (`str`, *optional*): a self-hosted hub; default `HF_ENDPOINT`, then huggingface.co.
        revision (`str`, *optional*): the branch to commit to (default `main`; created if missing).
        create_pr (`bool`): open a pull request instead of committing to the branch (or find the open one
            that already holds the release). `tag` is then ignored: run `push` again without
            `create_pr` after the merge, which makes no new commit and creates the tag.
        no_xet (`bool`): upload with the Git LFS protocol even though `hf_xet` is installed.
        token (`str`, *optional*): Hub token; default `HF_TOKEN`, Trusted Publishers, or the saved login.
        commit_message (`str`, *optional*): default `Release <tag>`.
        allow_unsigned (`bool`): push a release without `model.sig`.
        show_progress (`bool`): keep huggingface_hub's upload progress bars.
        progress (`Callable[[str], None]`, *optional*): receives one human line per step.

    Returns:
        `PushResult`: the commit holding the release, the tag, and whether a new commit was made.

    Raises:
        `UsageError`: bad repo id, tag or options; not a release folder; unsigned; no token or a token
            the Hub rejects; a public repo without `public=True`; the tag points at other files.
        `HubError`: a network or Hub failure (which step, status, URL); re-running resumes.
        `CheckFailed`: the commit landed but its file tree differs from the release (nothing tagged).
    """
    say = progress or (lambda _line: None)
    release = Path(release_dir)
    _check_repo_id(repo_id)
    if gated not in (None, "auto", "manual"):
        raise UsageError(f"gated value '{gated}' is not supported; use 'auto' or 'manual'")
    if not private and not public:
        raise UsageError(
            f"refusing to create or use a public repo for '{repo_id}' without consent",
            hint="pass --public (public=True) to publish publicly",
        )
    branch = revision or constants.DEFAULT_REVISION
    _check_ref(branch, "branch")
    if tag is not None:
        _check_ref(tag, "tag")
    _check_release(release, allow_unsigned=allow_unsigned)
    endpoint_url = _resolve_endpoint(endpoint)
    hub_token = _resolve_token(token)
    files = _local_files(release)  # the expensive part: hashing every file
    if create_pr and tag is not None:
        say(f"tag '{tag}' is not created for a pull request: merge it, then push again without --create-pr")
        tag = None
    elif not create_pr:
        tag = tag if tag is not None else _default_tag_of(release, files)
        if tag == branch:
            raise UsageError(f"tag '{tag}' has the name of the branch it is pushed to; choose another --tag")
    message = commit_message or (f"Release {tag}" if tag else "Release")

    with _client_settings(no_xet=no_xet, show_progress=show_progress):
        session = _Session(
            HfApi(
                endpoint=endpoint_url, token=hub_token, library_name="unswift", library_version=__version__
            ),
            repo_id,
            endpoint_url,
            say,
        )
        return session.push(
            release,
            files,
            tag=tag,
            public=public,
            gated=gated,
            branch=branch,
            create_pr=create_pr,
            message=message,
        )


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
    _check_repo_id(repo_id)
    endpoint_url = _resolve_endpoint(endpoint)
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
            hint=f"request access at {endpoint_url}/{repo_id}, then {_TOKEN_FIX}",
        ) from err
    except RepositoryNotFoundError as err:
        raise UsageError(
            f"repo '{repo_id}' was not found at '{endpoint_url}', "
            "or it is private and the token cannot read it",
            hint=f"check the repo id; for a private repo {_TOKEN_FIX}",
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
    except (HfHubHTTPError, _httpx.HTTPError) as err:
        raise _classify("download", err, repo_id=repo_id, endpoint=endpoint_url) from err
    return Path(folder)


def default_tag(release_dir: str | os.PathLike[str]) -> str:
    """The tag `push` uses when none is given: `v<tool version>-<first 8 hex of the release digest>`.

    Deterministic, so a re-run reuses the tag of the interrupted run; it changes whenever any pushed byte
    changes, so two different releases never compete for one tag. The version is `tool.version` from
    `unswift.json`; the digest is the SHA-256 of the sorted lines `"<path> <sha256>\\n"` over every file
    pushed (`model.sig` and `README.md` included).

    Raises:
        `UsageError`: the folder is not a release folder.
    """
    release = Path(release_dir)
    _check_release(release, allow_unsigned=True)
    return _default_tag_of(release, _local_files(release))


# ---------------------------------------------------------------------------------------------- the push
class _Session:
    """One push: the HfApi client, the repo, and the steps in order."""

    def __init__(self, api: HfApi, repo_id: str, endpoint: str, say: Callable[[str], None]) -> None:
        self.api = api
        self.repo_id = repo_id
        self.endpoint = endpoint
        self.say = say

    def push(
        self,
        release: Path,
        files: dict[str, _LocalFile],
        *,
        tag: str | None,
        public: bool,
        gated: str | None,
        branch: str,
        create_pr: bool,
        message: str,
    ) -> PushResult:
        repo_id = self.repo_id
        url = f"{self.endpoint}/{repo_id}"
        size = sum(f.size for f in files.values())
        self.say(f"pushing {len(files)} files ({_human(size)}) from '{release}' to {url} (branch '{branch}')")

        # Read first, create only if missing: creating an existing repo needs rights a repo-scoped token
        # (Trusted Publishers) may lack, and `private` is ignored for an existing repo anyway.
        try:
            info = self._call(
                "read repo info", self.api.model_info, repo_id, passthrough=RepositoryNotFoundError
            )
        except RepositoryNotFoundError:
            self.say(f"creating {'public' if public else 'private'} repo '{repo_id}'")
            self._call("create repo", self.api.create_repo, repo_id, private=not public, exist_ok=True)
            info = self._call("read repo info", self.api.model_info, repo_id)
        if info.private is not True and not public:
            raise UsageError(
                f"repo '{repo_id}' is public; refusing to publish a release to it without --public "
                "(nothing was pushed)",
                hint="pass --public to publish publicly, or push to a private repo",
            )

        refs = self._refs(create_pr)
        tags = {ref.name: ref.target_commit for ref in refs.tags}
        head = next((ref.target_commit for ref in refs.branches if ref.name == branch), None)
        if head is None and branch != constants.DEFAULT_REVISION and refs.branches:
            self.say(f"creating branch '{branch}'")
            self._call("create branch", self.api.create_branch, repo_id, branch=branch, exist_ok=True)
            refs = self._refs(create_pr)
            head = next((ref.target_commit for ref in refs.branches if ref.name == branch), None)

        sha: str | None = None
        new_commit = False
        pr_url: str | None = None
        if tag is not None and tag in tags:
            diff = self._diff(files, tags[tag])
            if not diff.clean:
                raise UsageError(
                    f"tag '{tag}' already points at {tags[tag]} in '{repo_id}', "
                    "which holds a different release "
                    f"({diff.describe()}); nothing was pushed",
                    hint="choose a new tag with --tag",
                )
            sha = tags[tag]
            self.say(f"tag '{tag}' already holds exactly this release ({sha[:12]}); nothing to upload")

        if gated is not None and info.gated != gated:
            self.say(f"turning on access requests (gated='{gated}')")
            self._call("set gated access", self.api.update_repo_settings, repo_id, gated=gated)

        if sha is None:
            diff = self._diff(files, head) if head is not None else _diff(files, {})
            if diff.clean:
                sha = head
                self.say(f"branch '{branch}' already holds exactly this release ({sha[:12]}); no new commit")
            elif create_pr and (found := self._matching_pr(files, refs)) is not None:
                sha, pr_url = found
                self.say(f"an open pull request already holds exactly this release: {pr_url}")
            else:
                self.say(
                    f"committing: {len(diff.missing)} new, {len(diff.altered)} changed, "
                    f"{len(diff.stale)} deleted "
                    f"file(s) on top of {head[:12] if head else 'an empty branch'}"
                )
                sha, pr_url = self._commit(
                    files, diff, branch=branch, head=head, refs=refs, create_pr=create_pr, message=message
                )
                new_commit = True
                after = self._diff(files, sha)
                if not after.clean:
                    raise CheckFailed(
                        f"commit {sha} in '{repo_id}' does not hold exactly the release "
                        f"({after.describe()}); "
                        "it was not tagged",
                        hint="check the repo's .gitignore and the Hub's file limits, then re-run",
                        details={"revision": sha},
                    )
        assert sha is not None

        if tag is not None and tags.get(tag) != sha:
            self._tag(tag, sha)
            self.say(f"tagged {sha[:12]} as '{tag}'")
        if public and info.private:
            self.say(f"making '{repo_id}' public")
            self._call("make repo public", self.api.update_repo_settings, repo_id, private=False)

        return PushResult(
            repo=repo_id,
            revision=sha,
            tag=tag,
            url=url,
            release_dir=str(release),
            new_commit=new_commit,
            pr_url=pr_url,
        )

    # ------------------------------------------------------------------ steps
    def _call(
        self,
        step: str,
        func: Callable[..., _T],
        *args: Any,
        passthrough: type[Exception] | None = None,
        **kwargs: Any,
    ) -> _T:
        """Run an idempotent step, retrying transient failures after `_RETRY_WAITS`; errors of type
        `passthrough` are re-raised as they are, every other failure as our exit-coded error."""
        for attempt in range(len(_RETRY_WAITS) + 1):
            try:
                return func(*args, **kwargs)
            except (HfHubHTTPError, _httpx.HTTPError, json.JSONDecodeError) as err:
                if passthrough is not None and isinstance(err, passthrough):
                    raise
                if not _retryable(err) or attempt == len(_RETRY_WAITS):
                    raise _classify(step, err, repo_id=self.repo_id, endpoint=self.endpoint) from err
                self.say(f"{step}: {_short(err)}; retrying in {_RETRY_WAITS[attempt]:g}s")
                time.sleep(_RETRY_WAITS[attempt])
        raise AssertionError("unreachable")

    def _refs(self, with_prs: bool) -> Any:
        return self._call("list refs", self.api.list_repo_refs, self.repo_id, include_pull_requests=with_prs)

    def _remote_files(self, sha: str) -> dict[str, RepoFile]:
        entries = self._call(
            "list files", lambda: list(self.api.list_repo_tree(self.repo_id, recursive=True, revision=sha))
        )
        return {entry.path: entry for entry in entries if isinstance(entry, RepoFile)}

    def _diff(self, files: dict[str, _LocalFile], sha: str) -> _Diff:
        return _diff(files, self._remote_files(sha))

    def _matching_pr(self, files: dict[str, _LocalFile], refs: Any) -> tuple[str, str] | None:
        for ref in reversed(refs.pull_requests or []):
            if self._diff(files, ref.target_commit).clean:
                number = ref.ref.rsplit("/", 1)[-1]
                return ref.target_commit, f"{self.endpoint}/{self.repo_id}/discussions/{number}"
        return None

    def _commit(
        self,
        files: dict[str, _LocalFile],
        diff: _Diff,
        *,
        branch: str,
        head: str | None,
        refs: Any,
        create_pr: bool,
        message: str,
    ) -> tuple[str, str | None]:
        """The one commit; after a failure, read the branch back: if it landed, use it, never commit twice."""
        known_prs = {ref.target_commit for ref in (refs.pull_requests or [])}
        for attempt in range(_COMMIT_ATTEMPTS):
            operations: list[Any] = [
                CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(f.abspath))
                for f in files.values()
            ]
            operations += [CommitOperationDelete(path_in_repo=path) for path in diff.stale]
            try:
                info = self.api.create_commit(
                    self.repo_id,
                    operations,
                    commit_message=message,
                    commit_description=f"Published with unswift {__version__}.",
                    revision=branch,
                    create_pr=create_pr,
                    parent_commit=head,
                )
                return info.oid, info.pr_url
            except (*_UPLOAD_FAILURES, RuntimeError) as raised:
                err = _unwrap(raised)
                if not isinstance(err, _UPLOAD_FAILURES):
                    raise  # not a Hub or network failure: a bug, keep the traceback
                step = _commit_step(err)
                error = _classify(step, err, repo_id=self.repo_id, endpoint=self.endpoint)
                if raised is not err:  # e.g. "Error while uploading 'model.safetensors' to the Hub."
                    error.message += f" ({raised})"
                if step == "commit":  # the POST may have landed although no answer came back
                    try:
                        landed = self._landed(
                            files, branch=branch, head=head, known_prs=known_prs, create_pr=create_pr
                        )
                    except UnswiftError as check:
                        raise HubError(
                            f"{error.message}; checking whether the commit landed failed too "
                            f"({check.message})",
                            hint=_RERUN,
                            details=error.details,
                        ) from err
                    if landed is not None:
                        self.say(f"the commit landed although its answer was lost ({landed[0][:12]})")
                        return landed
                if _moved(err):
                    raise _branch_moved(error, branch) from err
                # Safe to try once more: before the commit POST nothing is committed, and the POST itself
                # is retried only after reading back that it did not land, and under `parent_commit`.
                if not _retryable(err) or attempt == _COMMIT_ATTEMPTS - 1:
                    raise error from err
                self.say(
                    f"{step} failed ({_short(err)}) and nothing landed; trying once more"
                    + (" (a late landing is refused by the parent-commit guard)" if step == "commit" else "")
                )
                time.sleep(_RETRY_WAITS[0])
        raise AssertionError("unreachable")

    def _landed(
        self,
        files: dict[str, _LocalFile],
        *,
        branch: str,
        head: str | None,
        known_prs: set[str],
        create_pr: bool,
    ) -> tuple[str, str | None] | None:
        refs = self._refs(create_pr)
        if create_pr:
            for ref in refs.pull_requests or []:
                if ref.target_commit not in known_prs and self._diff(files, ref.target_commit).clean:
                    number = ref.ref.rsplit("/", 1)[-1]
                    return ref.target_commit, f"{self.endpoint}/{self.repo_id}/discussions/{number}"
            return None
        now = next((ref.target_commit for ref in refs.branches if ref.name == branch), None)
        if now is not None and now != head and self._diff(files, now).clean:
            return now, None
        return None

    def _tag(self, tag: str, sha: str) -> None:
        for attempt in range(len(_RETRY_WAITS) + 1):
            try:
                self.api.create_tag(self.repo_id, tag=tag, revision=sha, tag_message=f"unswift release {tag}")
                return
            except (HfHubHTTPError, _httpx.HTTPError) as err:
                failure = err
            try:
                current = {ref.name: ref.target_commit for ref in self._refs(False).tags}.get(tag)
            except UnswiftError as check:
                raise HubError(
                    f"tag failed ({_short(failure)}) and reading the tags back failed too ({check.message}); "
                    f"the release is committed as {sha} but may not be tagged '{tag}'",
                    hint=_RERUN,
                    details={"step": "tag", "revision": sha},
                ) from failure
            if current == sha:  # created, but the answer was lost (or a racing run did the same)
                return
            if current is not None:
                raise UsageError(
                    f"tag '{tag}' was created at {current} by someone else while this push ran; "
                    f"the release is committed as {sha} but not tagged",
                    hint="choose a new tag with --tag and re-run (no new commit will be made)",
                    details={"revision": sha},
                )
            error = _classify("tag", failure, repo_id=self.repo_id, endpoint=self.endpoint)
            if not isinstance(error, HubError) or attempt == len(_RETRY_WAITS):
                error.message += f"; the release is committed as {sha} but not yet tagged '{tag}'"
                error.details["revision"] = sha
                raise error from failure
            self.say(f"tag failed ({_short(failure)}); retrying in {_RETRY_WAITS[attempt]:g}s")
            time.sleep(_RETRY_WAITS[attempt])


# ---------------------------------------------------------------------------------------------- helpers
def _check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise UsageError(
            f"repo id '{repo_id}' must have the form 'ORG/NAME' (one slash)",
            hint="e.g. --repo my-org/my-model",
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UsageError(
            f"repo id '{repo_id}' is not valid: ORG and NAME use letters, digits, '-', '_' or '.', "
            "may not start "
            "or end with '-' or '.', may not contain '--' or '..', and are at most 96 characters",
            hint="e.g. --repo my-org/my-model",
        ) from err


def _check_ref(name: str, kind: str) -> None:
    bad = (
        not _REF_RE.fullmatch(name)
        or ".." in name
        or "//" in name
        or name.endswith((".", "/", ".lock"))
        or re.fullmatch(r"[0-9a-f]{40}", name) is not None
    )
    if bad:
        raise UsageError(
            f"{kind} '{name}' is not a valid git ref name: use letters, digits, '.', '_', '-' and '/', "
            "start with a "
            "letter or digit, no '..' or '//', no trailing '.', '/' or '.lock', not a 40-hex sha",
            hint=f"e.g. --{'tag v1.0.0' if kind == 'tag' else 'revision main'}",
        )


def _check_release(release: Path, *, allow_unsigned: bool) -> None:
    """The folder looks like a finished release (cheap: no hashing)."""
    if not release.is_dir():
        raise UsageError(
            f"release folder '{release}' does not exist or is not a folder",
            hint="build one with `unswift release CHECKPOINT --no-push` or `unswift convert`",
        )
    for name in REQUIRED_FILES:
        if not (release / name).is_file():
            raise UsageError(
                f"'{release}' is not a release folder: '{name}' is missing",
                hint="build one with `unswift release CHECKPOINT --no-push` or `unswift convert`",
            )
    try:
        json.loads((release / "unswift.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(
            f"'{release / 'unswift.json'}' is not valid JSON ({err})", hint="rebuild the release"
        ) from err
    if not allow_unsigned and not (release / SIGNATURE_FILE).is_file():
        raise UsageError(
            f"release '{release}' is not signed: '{SIGNATURE_FILE}' is missing",
            hint=f"sign it with `unswift sign {release} --key KEY`, or pass --allow-unsigned",
        )


def _local_files(release: Path) -> dict[str, _LocalFile]:
    """Every file of the release folder, hashed (sha256 and git blob id in one read)."""
    files: dict[str, _LocalFile] = {}
    for root, dirs, names in os.walk(release):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not (root_path == release and d in _SKIPPED_DIRS) and d != ".git")
        for name in sorted(names):
            path = root_path / name
            if not path.is_file():
                continue
            rel = path.relative_to(release).as_posix()
            files[rel] = _hash_file(rel, path)
    return files


def _hash_file(rel: str, path: Path) -> _LocalFile:
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as stream:
        while chunk := stream.read(8 * 1024 * 1024):
            sha256.update(chunk)
            sha1.update(chunk)
    return _LocalFile(rel, path, size, sha256.hexdigest(), sha1.hexdigest())


def _default_tag_of(release: Path, files: dict[str, _LocalFile]) -> str:
    record = json.loads((release / "unswift.json").read_text(encoding="utf-8"))
    tool = record.get("tool") if isinstance(record, dict) else None
    version = tool.get("version") if isinstance(tool, dict) else None
    version = str(version or __version__)
    digest = hashlib.sha256("".join(f"{p} {f.sha256}\n" for p, f in sorted(files.items())).encode())
    return f"v{version.lstrip('v')}-{digest.hexdigest()[:8]}"


def _diff(files: dict[str, _LocalFile], remote: dict[str, RepoFile]) -> _Diff:
    missing, altered = [], []
    for path, local in files.items():
        entry = remote.get(path)
        if entry is None:
            missing.append(path)
        elif entry.lfs is not None:
            if entry.lfs.sha256 != local.sha256 or entry.size != local.size:
                altered.append(path)
        elif entry.blob_id != local.git_oid:
            altered.append(path)
    stale = [path for path in remote if path not in files and path != _HUB_OWNED]
    return _Diff(tuple(missing), tuple(altered), tuple(sorted(stale)))


def _resolve_endpoint(endpoint: str | None) -> str:
    value = endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    if not re.match(r"https?://[^/\s]+", value):
        raise UsageError(
            f"endpoint '{value}' is not an http(s) URL", hint="e.g. --endpoint https://hub.example.org"
        )
    return value.rstrip("/")


def _resolve_token(token: str | None) -> str:
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
    except (HfHubHTTPError, _httpx.HTTPError) as err:
        raise _classify(
            "get token (Trusted Publishers)", err, repo_id=None, endpoint=constants.ENDPOINT
        ) from err
    if not found:
        raise UsageError(
            "no Hugging Face token found: HF_TOKEN is not set and there is no saved login", hint=_TOKEN_FIX
        )
    return found


@contextlib.contextmanager
def _client_settings(*, no_xet: bool, show_progress: bool) -> Iterator[None]:
    """Xet off (if asked), HTTP timeouts on, progress bars as asked; everything restored afterwards."""
    from huggingface_hub.utils import _http

    old_xet = constants.HF_HUB_DISABLE_XET
    old_factory = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)
    hide_bars = not show_progress and not are_progress_bars_disabled()

    def factory() -> Any:
        client = old_factory()
        if client.timeout.read is None:  # keep whatever timeout a user configured
            client.timeout = _httpx.Timeout(_READ_TIMEOUT_S, connect=_CONNECT_TIMEOUT_S)
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


#: What `create_commit` raises when the Hub or the network fails. ConnectionError is what hf_xet (Rust)
#: raises for any failed Xet transfer; ValueError covers malformed answers and a refused README header.
_UPLOAD_FAILURES: tuple[type[BaseException], ...] = (
    HfHubHTTPError,
    _httpx.HTTPError,
    ValueError,
    ConnectionError,
)


def _unwrap(err: BaseException) -> BaseException:
    """huggingface_hub wraps each failed LFS upload in `RuntimeError("Error while uploading ...")`."""
    while isinstance(err, RuntimeError) and err.__cause__ is not None:
        err = err.__cause__
    return err


def _retryable(err: BaseException) -> bool:
    if isinstance(err, HfHubHTTPError):
        return err.response.status_code in _RETRYABLE_STATUS
    return isinstance(err, _httpx.TransportError)


def _moved(err: BaseException) -> bool:
    return isinstance(err, HfHubHTTPError) and err.response.status_code in (409, 412)


def _branch_moved(error: UnswiftError, branch: str) -> UnswiftError:
    return HubError(
        f"commit failed: branch '{branch}' moved while this push ran (another push landed first); "
        f"{error.message}",
        hint="re-run the same command: it commits on top of the new head (and only then tags)",
        details=error.details,
    )


def _request_of(err: BaseException) -> tuple[str, str]:
    """Method and URL (without query string: presigned URLs carry credentials there) of a failed request."""
    request = None
    if isinstance(err, HfHubHTTPError):
        request = err.response.request if err.response is not None else None
    elif isinstance(err, _httpx.RequestError):
        with contextlib.suppress(RuntimeError):
            request = err.request
    if request is None:
        return "?", "?"
    url = str(request.url).split("?", 1)[0]
    return request.method, url


def _commit_step(err: BaseException) -> str:
    """Which part of `create_commit` failed, from the request it was making."""
    if isinstance(err, ValueError) and not isinstance(err, HfHubHTTPError):
        return "README validation" if "Invalid metadata in README.md" in str(err) else "upload"
    if isinstance(err, ConnectionError):
        return "Xet upload"
    method, url = _request_of(err)
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


def _short(err: BaseException) -> str:
    if isinstance(err, HfHubHTTPError):
        return f"HTTP {err.response.status_code}"
    return err.__class__.__name__


def _classify(step: str, err: BaseException, *, repo_id: str | None, endpoint: str) -> UnswiftError:
    """Turn a huggingface_hub / httpx failure into our exit-coded error: which step, status, URL, the fix."""
    method, url = _request_of(err)
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
            hint=_RERUN,
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
        return HubError(f"{step} failed: {text}", hint=_RERUN, details=details)
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
                hint=_TOKEN_FIX,
                details=details,
            )
        if isinstance(err, RepositoryNotFoundError):
            return UsageError(
                f"{step} failed: repo {repo} was not found at '{endpoint}' or this token cannot see it "
                f"(HTTP {status} on {where})",
                hint=f"check --repo and the token's access; {_TOKEN_FIX}",
                details=details,
            )
        if status == 403:
            return UsageError(
                f"{step} failed: this token may not write to {repo} (HTTP 403 on {where}{said})",
                hint="use a token with write access to the repo's org (https://huggingface.co/settings/tokens)",
                details=details,
            )
        if status in _RETRYABLE_STATUS or status >= 500 or status in (409, 412, 423):
            return HubError(f"{step} failed: HTTP {status} from {where}{said}", hint=_RERUN, details=details)
        return UsageError(
            f"{step} failed: the Hub refused the request (HTTP {status} on {where}{said})",
            hint="check the options; re-running will not help until they change",
            details=details,
        )
    if isinstance(err, _httpx.ConnectError):
        text = f"could not connect to the Hub at '{endpoint}' ({err})"
    elif isinstance(err, _httpx.TimeoutException):
        text = f"the Hub at '{endpoint}' did not answer in time ({err.__class__.__name__})"
    else:
        text = f"the connection to '{endpoint}' failed ({err.__class__.__name__}: {err})"
    return HubError(
        f"{step} failed: {text} on {where}",
        hint=f"check the network or --endpoint; {_RERUN}",
        details=details,
    )


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
