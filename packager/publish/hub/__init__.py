"""Publishing a release to the Hugging Face Hub, and fetching one back."""

import re

from packager.publish.hub.hub import *  # noqa: F401,F403
from packager.publish.hub.hub import _RETRY_WAITS  # noqa: F401
from packager.publish.hub.hub import _check_repo_id as check_repo_id  # noqa: F401

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_repo_id(text: str) -> bool:
    """`ORG/NAME` syntax (not necessarily a valid or existing repo)."""
    return bool(_REPO_ID.match(text)) and not text.startswith((".", "/"))
