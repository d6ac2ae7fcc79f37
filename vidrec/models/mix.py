"""How the candidate stage splits its n candidates among sources.

Shared by serving (services/candidate) and its offline mirror (BatchRecommender), so
offline figures are measured on the candidate sets users actually get.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mix:
    """Each side source's share of the n candidates; the two-tower ANN gets the rest (at
    least half). Shares, not counts, so that every source keeps a place at any n: with
    fixed counts, MF's 100 and the content neighbours filled the side half of 300 and the
    popular source never made it into the list."""

    mf: float = 0.3
    # The latest watch's content neighbours. Two anchors at 5% each scored the same as one
    # at 10% offline (validation NDCG and synthetic true precision, to 4 decimals), and each
    # anchor is one more index search on every request: 0.5 ms with caches cold.
    content_anchors: int = 1
    content_per_anchor: float = 0.10
    fresh: float = 0.05
    popular: float = 0.05

    def quota(self, share: float, n: int) -> int:
        """Candidates for a source with this share of n (at least one if the share is set)."""
        return max(1, round(share * n)) if share > 0 else 0


# Candidates per request, serving and offline alike.
N_CANDIDATES = 200
DEFAULT_MIX = Mix()
