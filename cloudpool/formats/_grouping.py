"""Grouping indivisible items (row groups, LAZ chunks, spectra) into parts by byte size.

This module owns the one rule the binary formats share for ``chunk_size`` / ``chunks`` /
the automatic part size, so they all mean the same thing: bytes each part reads.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from .base import PartitionContext

__all__ = ["runs"]


def runs(weights: Sequence[int], ctx: PartitionContext) -> List[Tuple[int, int]]:
    """Consecutive ``[i, j)`` index runs of items of the given byte ``weights``.

    ``chunk_size`` (or the automatic ``part_size``): add items to a run while it stays
    within that many bytes (an item larger than that is a run on its own). ``chunks=N``:
    at most ``N`` runs, cut where the cumulative size crosses ``k/N`` of the total.
    Shared by the formats whose items are indivisible (row groups, LAZ chunks, spectra).
    """
    n = len(weights)
    if n == 0:
        return [(0, 0)]
    if ctx.chunks is None:
        limit = ctx.chunk_size if ctx.chunk_size is not None else ctx.part_size
        assert limit is not None
        out: List[Tuple[int, int]] = []
        start, acc = 0, 0
        for i, w in enumerate(weights):
            if i > start and acc + w > limit:
                out.append((start, i))
                start, acc = i, 0
            acc += w
        out.append((start, n))
        return out
    if ctx.chunks >= n:
        return [(i, i + 1) for i in range(n)]
    if not sum(weights):
        weights = [1] * n  # all-empty items: balance by count
    total = sum(weights)
    cuts, cum = [0], 0
    for i, w in enumerate(weights):
        cum += w
        if len(cuts) < ctx.chunks and cum * ctx.chunks >= len(cuts) * total and i + 1 < n:
            cuts.append(i + 1)
    cuts.append(n)
    return [(cuts[k], cuts[k + 1]) for k in range(len(cuts) - 1)]
