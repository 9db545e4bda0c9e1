"""Linear assignment (minimum-cost perfect matching), small and dependency-free.

Alignment matches heads (tens) and MLP channels (thousands). Heads use the exact Hungarian method;
channels first try the cheap answer — every suspect channel's best source channel, which is already a
permutation whenever the suspect is a noisy copy — and fall back to a greedy matching by descending
similarity, which equals the optimum whenever every channel's own match beats all others.
"""

from __future__ import annotations

import numpy as np
import torch


def hungarian(cost: torch.Tensor) -> torch.Tensor:
    """`col[i]` minimising Σ cost[i, col[i]] over permutations (square cost, exact, O(n³))."""
    c = cost.detach().double().cpu().numpy()
    n = c.shape[0]
    if c.shape != (n, n):
        raise ValueError("hungarian needs a square cost matrix")
    inf = float("inf")
    u = np.zeros(n + 1)
    v = np.zeros(n + 1)
    p = np.zeros(n + 1, dtype=np.int64)  # p[j] = row matched to column j (1-based), 0 = free
    way = np.zeros(n + 1, dtype=np.int64)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(n + 1, inf)
        used = np.zeros(n + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            cur = c[i0 - 1, :] - u[i0] - v[1:]
            free = ~used[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            masked = np.where(free, minv[1:], inf)
            j1 = int(masked.argmin()) + 1
            delta = masked[j1 - 1]
            u[p[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while True:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
            if j0 == 0:
                break
    col = np.zeros(n, dtype=np.int64)
    for j in range(1, n + 1):
        col[p[j] - 1] = j - 1
    return torch.from_numpy(col)


def match_by_similarity(similarity: torch.Tensor, exact_below: int = 256) -> torch.Tensor:
    """`col[i]`: a permutation maximising Σ similarity[i, col[i]] (approximately for large n).

    Exact (Hungarian) for n < `exact_below`; else argmax per row when that is a permutation, else a
    greedy matching over each row's 8 best candidates, with any row left over matched exactly.
    """
    n = similarity.shape[0]
    if n < exact_below:
        return hungarian(-similarity)
    best = similarity.argmax(1)
    if torch.unique(best).numel() == n:
        return best
    k = min(8, n)
    scores, cands = similarity.topk(k, dim=1)
    order = torch.argsort(scores.flatten(), descending=True)
    col = torch.full((n,), -1, dtype=torch.long)
    taken = torch.zeros(n, dtype=torch.bool)
    rows = (order // k).tolist()
    cols = cands.flatten()[order].tolist()
    for r, c in zip(rows, cols, strict=True):
        if col[r] < 0 and not taken[c]:
            col[r] = c
            taken[c] = True
    left_rows = torch.nonzero(col < 0).flatten()
    if left_rows.numel():
        left_cols = torch.nonzero(~taken).flatten()
        sub = similarity[left_rows][:, left_cols]
        col[left_rows] = left_cols[hungarian(-sub)]
    return col
