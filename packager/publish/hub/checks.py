"""Input checks made before any network call: repo id, git ref names, and the release folder itself.

They are cheap (no hashing, no HTTP) so that a typo fails in a second with exit 2 and the fix, instead of
after an upload. `check_repo_id` is the one repo-id validator of the whole package; `looks_like_repo_id`
is the cheaper question a command asks first: is this argument meant as a repo id or as a path?
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from packager.errors import UsageError
from packager.formats.names import RECORD, REQUIRED, SIGNATURE

# A git ref name we accept for tags and branches: conservative subset of `git check-ref-format`.
_REF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-/]{0,127}")
# ORG/NAME as a command-line argument: starts with a letter or digit (so never '.', '/' or '~'), one slash.
_REPO_ID_SHAPE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_BUILD_HINT = "build one with `unswift release CHECKPOINT --no-push` or `unswift convert`"


def looks_like_repo_id(text: str) -> bool:
    """Whether `text` is meant as a Hub repo id: shaped `ORG/NAME` and not an existing path.

    Only the shape: a malformed id that passes is refused later by `check_repo_id`, with the rules.
    """
    return _REPO_ID_SHAPE.fullmatch(text) is not None and not Path(text).exists()


def check_repo_id(repo_id: str) -> None:
    """Refuse a repo id the Hub would refuse, before any work: `ORG/NAME` with the Hub's naming rules.

    Raises:
        `UsageError`: not one slash, or ORG or NAME breaks the Hub's rules (with an example).
    """
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


def check_ref(name: str, kind: str) -> None:
    """Refuse a tag or branch name git (or the Hub) would refuse, or one that reads as a commit sha."""
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


def check_release(release: Path, *, allow_unsigned: bool) -> None:
    """The folder looks like a finished release (cheap: no hashing); it is pushed exactly as it is."""
    if not release.is_dir():
        raise UsageError(f"release folder '{release}' does not exist or is not a folder", hint=_BUILD_HINT)
    for name in REQUIRED:
        if not (release / name).is_file():
            raise UsageError(f"'{release}' is not a release folder: '{name}' is missing", hint=_BUILD_HINT)
    try:
        json.loads((release / RECORD).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"'{release / RECORD}' is not valid JSON ({err})", hint="rebuild the release") from err
    if not allow_unsigned and not (release / SIGNATURE).is_file():
        raise UsageError(
            f"release '{release}' is not signed: '{SIGNATURE}' is missing",
            hint=f"sign it with `unswift sign {release} --key KEY`, or pass --allow-unsigned",
        )
