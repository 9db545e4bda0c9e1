"""The push state machine: one repo, one release, the steps in order, each safe to repeat.

Read the repo (create it if missing) -> read the refs (create the branch if missing) -> if the tag or the
branch already holds exactly the release, stop there -> else ONE `create_commit` of every file plus a
deletion per stale remote file, guarded by `parent_commit` -> read the commit's tree back -> tag it ->
make the repo public if asked. See `push.py` for why each rule exists.

Every read and settings call is retried on transient failures (`retry.with_retries`); the commit POST is
tried at most `COMMIT_ATTEMPTS` times, a second time only after reading the branch back showed the first
did not land, so a lost answer never makes a duplicate commit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile

from packager import __version__
from packager.errors import CheckFailed, HubError, UnswiftError, UsageError
from packager.publish.hub import errors
from packager.publish.hub.errors import HTTP_FAILURES, RERUN, UPLOAD_FAILURES
from packager.publish.hub.retry import COMMIT_ATTEMPTS, with_retries
from packager.publish.hub.tree import Diff, LocalFile, diff

_T = TypeVar("_T")


@dataclass(frozen=True)
class PushResult:
    """What a push did; `to_json()` gives the fields of `unswift push --json` (docs/INTERFACE.md)."""

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
        """The JSON fields of `push`/`release` (docs/INTERFACE.md): repo, revision, tag, url, release_dir,
        new_commit, and pr_url when a pull request was opened or found."""
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


class Session:
    """One push: the HfApi client, the repo, and the steps in order."""

    def __init__(self, api: HfApi, repo_id: str, endpoint: str, say: Callable[[str], None]) -> None:
        self.api = api
        self.repo_id = repo_id
        self.endpoint = endpoint
        self.say = say

    def push(
        self,
        release: Path,
        files: dict[str, LocalFile],
        *,
        tag: str | None,
        public: bool,
        gated: str | None,
        branch: str,
        create_pr: bool,
        message: str,
    ) -> PushResult:
        """Run every step; each finds what an interrupted earlier run left and continues from there."""
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
            found = self._diff(files, tags[tag])
            if not found.clean:
                raise UsageError(
                    f"tag '{tag}' already points at {tags[tag]} in '{repo_id}', "
                    "which holds a different release "
                    f"({found.describe()}); nothing was pushed",
                    hint="choose a new tag with --tag",
                )
            sha = tags[tag]
            self.say(f"tag '{tag}' already holds exactly this release ({sha[:12]}); nothing to upload")

        if gated is not None and info.gated != gated:
            self.say(f"turning on access requests (gated='{gated}')")
            self._call("set gated access", self.api.update_repo_settings, repo_id, gated=gated)

        if sha is None:
            todo = self._diff(files, head) if head is not None else diff(files, {})
            if todo.clean:
                sha = head
                self.say(f"branch '{branch}' already holds exactly this release ({sha[:12]}); no new commit")
            elif create_pr and (matching := self._matching_pr(files, refs)) is not None:
                sha, pr_url = matching
                self.say(f"an open pull request already holds exactly this release: {pr_url}")
            else:
                self.say(
                    f"committing: {len(todo.missing)} new, {len(todo.altered)} changed, "
                    f"{len(todo.stale)} deleted "
                    f"file(s) on top of {head[:12] if head else 'an empty branch'}"
                )
                sha, pr_url = self._commit(
                    files, todo, branch=branch, head=head, refs=refs, create_pr=create_pr, message=message
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
        """Run an idempotent step, retrying transient failures; errors of type `passthrough` are re-raised
        as they are, every other failure as our exit-coded error."""
        failures = (*HTTP_FAILURES, json.JSONDecodeError)
        try:
            return with_retries(
                lambda: func(*args, **kwargs),
                retryable=lambda err: not (passthrough is not None and isinstance(err, passthrough))
                and isinstance(err, failures)
                and errors.retryable(err),
                between=lambda err, wait: f"{step}: {errors.short(err)}; retrying in {wait:g}s",
                say=self.say,
            )
        except failures as err:
            if passthrough is not None and isinstance(err, passthrough):
                raise
            raise self._error(step, err) from err

    def _error(self, step: str, err: BaseException) -> UnswiftError:
        return errors.classify(step, err, repo_id=self.repo_id, endpoint=self.endpoint)

    def _refs(self, with_prs: bool) -> Any:
        return self._call("list refs", self.api.list_repo_refs, self.repo_id, include_pull_requests=with_prs)

    def _remote_files(self, sha: str) -> dict[str, RepoFile]:
        entries = self._call(
            "list files", lambda: list(self.api.list_repo_tree(self.repo_id, recursive=True, revision=sha))
        )
        return {entry.path: entry for entry in entries if isinstance(entry, RepoFile)}

    def _diff(self, files: dict[str, LocalFile], sha: str) -> Diff:
        return diff(files, self._remote_files(sha))

    def _matching_pr(self, files: dict[str, LocalFile], refs: Any) -> tuple[str, str] | None:
        for ref in reversed(refs.pull_requests or []):
            if self._diff(files, ref.target_commit).clean:
                number = ref.ref.rsplit("/", 1)[-1]
                return ref.target_commit, f"{self.endpoint}/{self.repo_id}/discussions/{number}"
        return None

    def _commit(
        self,
        files: dict[str, LocalFile],
        todo: Diff,
        *,
        branch: str,
        head: str | None,
        refs: Any,
        create_pr: bool,
        message: str,
    ) -> tuple[str, str | None]:
        """The one commit; after a failure, read the branch back: if it landed, use it, never commit twice.

        Safe to try once more: before the commit POST nothing is committed, and the POST itself is retried
        only after reading back that it did not land, and under `parent_commit`.
        """
        known_prs = {ref.target_commit for ref in (refs.pull_requests or [])}

        def attempt() -> tuple[str, str | None]:
            operations: list[Any] = [
                CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(f.abspath)) for f in files.values()
            ]
            operations += [CommitOperationDelete(path_in_repo=path) for path in todo.stale]
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
            except (*UPLOAD_FAILURES, RuntimeError) as raised:
                err = errors.unwrap(raised)
                if not isinstance(err, UPLOAD_FAILURES):
                    raise  # not a Hub or network failure: a bug, keep the traceback
                error = self._upload_error(raised)
                if errors.commit_step(err) == "commit":  # the POST may have landed although no answer came
                    try:
                        landed = self._landed(
                            files, branch=branch, head=head, known_prs=known_prs, create_pr=create_pr
                        )
                    except UnswiftError as check:
                        raise HubError(
                            f"{error.message}; checking whether the commit landed failed too ({check.message})",
                            hint=RERUN,
                            details=error.details,
                        ) from err
                    if landed is not None:
                        self.say(f"the commit landed although its answer was lost ({landed[0][:12]})")
                        return landed
                if errors.moved(err):
                    raise errors.branch_moved(error, branch) from err
                raise  # nothing landed: `with_retries` decides whether to try once more

        def between(raised: Exception, _wait: float) -> str:
            err = errors.unwrap(raised)
            step = errors.commit_step(err)
            return f"{step} failed ({errors.short(err)}) and nothing landed; trying once more" + (
                " (a late landing is refused by the parent-commit guard)" if step == "commit" else ""
            )

        try:
            return with_retries(
                attempt,
                retryable=lambda raised: errors.retryable(errors.unwrap(raised)),
                between=between,
                say=self.say,
                attempts=COMMIT_ATTEMPTS,
            )
        except (*UPLOAD_FAILURES, RuntimeError) as raised:
            err = errors.unwrap(raised)
            if not isinstance(err, UPLOAD_FAILURES):
                raise
            raise self._upload_error(raised) from err

    def _upload_error(self, raised: BaseException) -> UnswiftError:
        """Our error for a failed `create_commit`, naming the part that failed and the file if known."""
        err = errors.unwrap(raised)
        error = self._error(errors.commit_step(err), err)
        if raised is not err:  # e.g. "Error while uploading 'model.safetensors' to the Hub."
            error.message += f" ({raised})"
        return error

    def _landed(
        self,
        files: dict[str, LocalFile],
        *,
        branch: str,
        head: str | None,
        known_prs: set[str],
        create_pr: bool,
    ) -> tuple[str, str | None] | None:
        """The commit (and pull request) holding the release that appeared since `head`, if any."""
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
        """Create the tag; after a failure, read the tags back (the answer may be lost, or a racer won)."""

        def attempt() -> None:
            try:
                self.api.create_tag(self.repo_id, tag=tag, revision=sha, tag_message=f"unswift release {tag}")
                return
            except HTTP_FAILURES as err:
                failure = err
            try:
                current = {ref.name: ref.target_commit for ref in self._refs(False).tags}.get(tag)
            except UnswiftError as check:
                raise HubError(
                    f"tag failed ({errors.short(failure)}) and reading the tags back failed too "
                    f"({check.message}); the release is committed as {sha} but may not be tagged '{tag}'",
                    hint=RERUN,
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
            raise failure  # not there: `with_retries` decides whether to try again

        try:
            with_retries(
                attempt,
                # Any failure re-running could fix (exit 3), not only a retryable status: the read-back
                # before each new try tells a lost answer or a rival's tag apart.
                retryable=lambda err: isinstance(err, HTTP_FAILURES)
                and isinstance(self._error("tag", err), HubError),
                between=lambda err, wait: f"tag failed ({errors.short(err)}); retrying in {wait:g}s",
                say=self.say,
            )
        except HTTP_FAILURES as failure:
            error = self._error("tag", failure)
            error.message += f"; the release is committed as {sha} but not yet tagged '{tag}'"
            error.details["revision"] = sha
            raise error from failure


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
