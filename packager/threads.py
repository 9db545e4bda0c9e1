"""Independent pieces of torch work spread over the cores, one piece per thread.

Used where the work splits into many small, independent pieces (channel blocks of the series fits,
calibration histograms per unit, the audit's algebraic attacks per unit): torch's own intra-op threads
split each small kernel finely and wait at every kernel's end, which on the 2-core VM made one layer's
fits take 18-21 s on two threads against 2.4-3.0 s on one while other jobs held a core. Whole pieces per
thread (torch releases the GIL in its kernels) use the cores without those waits, and each piece's
arithmetic is exactly the single-threaded one, so results do not depend on the thread count
(tests/unit/maths/test_series.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def map_blocks(function: Callable[[T], R], items: list[T]) -> list[R]:
    """`function` over `items`, in order: one item per thread (as many threads as torch's intra-op
    threads), each thread running torch single-threaded; serially when there is one thread or one item."""
    workers = min(torch.get_num_threads(), len(items))
    if workers <= 1:
        return [function(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="unswift-block") as pool:
            return list(pool.map(function, items))
    finally:
        torch.set_num_threads(previous)
