"""The one retry loop of the push: how often a failed step is tried again, and how long to wait first.

Every step that talks to the Hub goes through `with_retries`; what differs between steps is passed in: which
failures are worth another attempt, how many attempts, and the progress line said before each wait.
`with_retries` sees the raw failure (a `huggingface_hub` or httpx exception) and lets the last one propagate
unchanged, so the caller turns exactly one failure into our exit-coded error (`errors.classify`).

The waits live here and nowhere else: tests shorten them through the fixture `hub_fast_retries`
(tests/conftest.py), never the number of attempts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

#: Waits (seconds) before the extra attempts of a step; an idempotent step (repo create, reads, settings,
#: tag) gets one attempt more than there are waits. Read at call time, so that tests can shorten them.
RETRY_WAITS: tuple[float, ...] = (1.0, 4.0)
#: The commit POST itself is tried at most this often, each time only after checking it did not land.
COMMIT_ATTEMPTS = 2

_T = TypeVar("_T")


def with_retries(
    attempt: Callable[[], _T],
    *,
    retryable: Callable[[Exception], bool],
    between: Callable[[Exception, float], str],
    say: Callable[[str], None],
    attempts: int | None = None,
    waits: Sequence[float] | None = None,
) -> _T:
    """Call `attempt` until it returns, trying again after each failure that `retryable` accepts.

    Args:
        attempt: one try of the step; it returns the step's result or raises.
        retryable: whether a failure may pass on another attempt; any other failure propagates at once.
        between: the progress line said before waiting, from the failure and the wait in seconds.
        say: where that line goes.
        attempts: how many tries at most; default one more than there are waits.
        waits: the wait before the 2nd, 3rd, ... try; default `RETRY_WAITS`.

    Raises:
        Whatever the last attempt raised, unchanged (with its traceback).
    """
    waits = RETRY_WAITS if waits is None else waits
    attempts = len(waits) + 1 if attempts is None else attempts
    if not 1 <= attempts <= len(waits) + 1:
        raise ValueError(f"{attempts} attempts need {attempts - 1} waits, got {len(waits)}")
    for number in range(attempts):
        try:
            return attempt()
        except Exception as err:
            if number == attempts - 1 or not retryable(err):
                raise
            wait = waits[number]
            say(between(err, wait))
        time.sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")
