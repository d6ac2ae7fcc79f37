"""Protobuf <-> vidrec.rerank: the one conversion both the reranker service and the gateway's
degraded path (reranker down) run, so a user gets the same caps, filters and reasons either
way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from vidrec.rerank import Item, RerankConfig, UserState, rerank
from vidrec.serving.convert import source_enum, source_name
from vidrec.v1 import common_pb2

log = logging.getLogger(__name__)

# Metadata is read for the most recent videos of the user's history (they name liked
# creators and "Because you watched" titles) and negatives (they name disliked creators).
RECENT_FOR_TASTE = 20
NEGATIVES_FOR_DISLIKES = 50


class VideoMetadata(Protocol):
    """What the conversion needs from the feature store (vidrec.store.features.FeatureStore)."""

    def videos(self, video_ids: Sequence[str]) -> Mapping[str, Mapping[str, str]]: ...


def _float(x: str | None) -> float | None:
    try:
        return float(x) if x else None
    except ValueError:
        return None


def user_state(user: common_pb2.UserContext,
               meta: Mapping[str, Mapping[str, str]]) -> UserState:
    """The rules' view of the user: what they saw, which creators they like and dislike.

    A creator is disliked through the user's negative feedback on its videos, unless a video
    the user watched recently is by that creator too. UserContext.disliked_creator_ids is not read:
    no client or service sets it.
    """
    recent = list(user.recent_video_ids)
    taste = [v for v in recent[:RECENT_FOR_TASTE] if v in meta]
    liked = {c for v in taste if (c := meta[v].get("creator_id", ""))}
    disliked = {c for v in user.negative_video_ids
                if v in meta and (c := meta[v].get("creator_id", "")) and c not in liked}
    return UserState(user.user_id, seen=set(user.seen_video_ids), recent=recent,
                     disliked_creators=disliked,
                     recent_titles={v: meta[v].get("title", "") for v in taste},
                     liked_creators=liked)


def to_items(videos: Sequence[common_pb2.ScoredVideo],
             meta: Mapping[str, Mapping[str, str]]) -> list[Item]:
    out = []
    for v in videos:
        m = meta.get(v.video_id, {})
        out.append(Item(v.video_id, v.score, source_name(v.source), v.anchor_video_id,
                        category=m.get("category", ""), creator_id=m.get("creator_id", ""),
                        upload_ts=_float(m.get("upload_ts")), title=m.get("title", "")))
    return out


def apply_rules(store: VideoMetadata, user: common_pb2.UserContext,
                videos: Sequence[common_pb2.ScoredVideo], k: int, cfg: RerankConfig,
                now: float, *, store_optional: bool = False, explain: bool = False
                ) -> list[common_pb2.ScoredVideo]:
    """The rerank rules over scored videos, with video metadata from the store.

    A store error propagates (the reranker answers UNAVAILABLE and the gateway degrades)
    unless `store_optional`: then the rules run without metadata (seen filter, exploration by
    source and reasons by source still apply; caps, dislikes and freshness have nothing to
    act on), because the gateway's degraded path must answer.
    """
    recent = list(user.recent_video_ids[:RECENT_FOR_TASTE])
    negatives = list(user.negative_video_ids[:NEGATIVES_FOR_DISLIKES])
    ids = list(dict.fromkeys([v.video_id for v in videos] + recent + negatives))
    meta: Mapping[str, Mapping[str, str]]
    try:
        meta = store.videos(ids)
    except Exception as exc:
        if not store_optional:
            raise
        log.warning("video metadata unavailable, rules run without it: %s", exc)
        meta = {}
    ranked = rerank(to_items(videos, meta), user_state(user, meta), k, cfg, now=now)
    out = [common_pb2.ScoredVideo(video_id=r.item.video_id, score=r.item.score,
                                  source=source_enum(r.item.source),
                                  anchor_video_id=r.item.anchor_video_id, reason=r.reason,
                                  propensity=r.propensity, exploration_pool=r.pool)
           for r in ranked]
    if explain:
        explain_rules(videos, out)
    return out


def explain_rules(before: Sequence[common_pb2.ScoredVideo],
                  after: list[common_pb2.ScoredVideo]) -> None:
    """Say on each shown video what the rules did to it, by comparing the rules' input
    (the ranker's order) with their output: a score lift (freshness), the exploration
    slot, and places moved (filters, caps and diversity act on the videos around it)."""
    at = {v.video_id: i for i, v in reversed(list(enumerate(before)))}
    for j, v in enumerate(after):
        i = at.get(v.video_id)
        if i is None:
            continue
        src = before[i]
        v.terms.update(src.terms)
        v.ranker_score, v.ranker_rank = src.ranker_score, src.ranker_rank
        if v.score > src.score + 1e-6:
            # The freshness rule's lift is a term of the served score too.
            v.terms["freshness"] = v.score - src.score
            v.rules.append(f"freshness +{v.score - src.score:.3f}")
        if v.source == common_pb2.CANDIDATE_SOURCE_EXPLORATION:
            v.rules.append("exploration slot")
        if i > j:
            v.rules.append(f"moved up {i - j} places: videos ranked above it were filtered "
                           "(seen, disliked), capped or passed over for diversity")
        elif i < j:
            v.rules.append(f"moved down {j - i} places: caps, diversity (MMR) or a boosted "
                           "video went ahead")
