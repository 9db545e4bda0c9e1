"""`push`: publish a release folder to a Hub model repo, atomically and resumably.

Everything goes through `huggingface_hub.HfApi`, so tokens, Trusted Publishers (OIDC), proxies and the LFS
protocol behave as in every other Hub tool. What this adds is the release discipline:

* **One atomic commit.** Every file of the release folder, plus a deletion for each remote file the
  release no longer has, goes in ONE `create_commit` guarded by `parent_commit` (the head it saw). Never
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
  (exit 2) with the fix (`errors.py`).

This module checks the inputs and hashes the folder (before any network call), then hands over to the
state machine in `session.py` under the client settings of `client.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi, constants

from packager import __version__
from packager.errors import UsageError
from packager.progress import Progress, reporter
from packager.publish.hub.checks import check_ref, check_release, check_repo_id
from packager.publish.hub.client import client_settings, resolve_endpoint, resolve_token
from packager.publish.hub.session import PushResult, Session
from packager.publish.hub.tree import default_tag_of, local_files


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
    progress: Progress = None,
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
    say = reporter(progress)
    release = Path(release_dir)
    check_repo_id(repo_id)
    if gated not in (None, "auto", "manual"):
        raise UsageError(f"gated value '{gated}' is not supported; use 'auto' or 'manual'")
    if not private and not public:
        raise UsageError(
            f"refusing to create or use a public repo for '{repo_id}' without consent",
            hint="pass --public (public=True) to publish publicly",
        )
    branch = revision or constants.DEFAULT_REVISION
    check_ref(branch, "branch")
    if tag is not None:
        check_ref(tag, "tag")
    check_release(release, allow_unsigned=allow_unsigned)
    endpoint_url = resolve_endpoint(endpoint)
    hub_token = resolve_token(token)
    files = local_files(release)  # the expensive part: hashing every file
    if create_pr and tag is not None:
        say(f"tag '{tag}' is not created for a pull request: merge it, then push again without --create-pr")
        tag = None
    elif not create_pr:
        tag = tag if tag is not None else default_tag_of(release, files)
        if tag == branch:
            raise UsageError(f"tag '{tag}' has the name of the branch it is pushed to; choose another --tag")
    message = commit_message or (f"Release {tag}" if tag else "Release")

    with client_settings(no_xet=no_xet, show_progress=show_progress):
        session = Session(
            HfApi(endpoint=endpoint_url, token=hub_token, library_name="unswift", library_version=__version__),
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
    check_release(release, allow_unsigned=True)
    return default_tag_of(release, local_files(release))
