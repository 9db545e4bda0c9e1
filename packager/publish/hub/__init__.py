"""Publishing a release to the Hugging Face Hub, and fetching one back."""

from packager.publish.hub.hub import *  # noqa: F401,F403
from packager.publish.hub.hub import _RETRY_WAITS, _check_repo_id  # noqa: F401
