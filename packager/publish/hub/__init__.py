"""Publishing a release to the Hugging Face Hub, and fetching one back: the only package that talks HTTP.

The public API:

* `push(release_dir, repo_id, ...)` -> `PushResult`: one atomic commit, then a tag; re-running resumes.
* `default_tag(release_dir)`: the tag `push` uses when none is given.
* `download_release(repo_id, ...)`: a published release's snapshot folder, for `unswift verify ORG/NAME`.
* `check_repo_id(repo_id)`: the one repo-id validator (raises `UsageError`); `looks_like_repo_id(text)`:
  the cheap "is this argument an ORG/NAME rather than a path?" test.

Inside, one job per module: `checks` (inputs, before any network call), `tree` (hashing the folder and
comparing it with a remote tree), `client` (endpoint, token, client settings), `session` (the push state
machine), `retry` (the one retry loop and its waits), `errors` (huggingface_hub/httpx failures ->
exit-coded errors), `push` and `download` (the two entry points).
"""

from packager.publish.hub.checks import check_repo_id, looks_like_repo_id
from packager.publish.hub.download import download_release
from packager.publish.hub.push import default_tag, push
from packager.publish.hub.session import PushResult

__all__ = ["PushResult", "check_repo_id", "default_tag", "download_release", "looks_like_repo_id", "push"]
