"""Explanations of the rules (vidrec/serving/rerank.py): what each rule did to a video is
read off the rules' input and output, and the score's terms add up."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import pytest

from vidrec.rerank import RerankConfig
from vidrec.serving.rerank import apply_rules
from vidrec.v1 import common_pb2


class Catalog:
    def __init__(self, rows: dict[str, dict[str, str]]) -> None:
        self.rows = rows

    def videos(self, video_ids: Sequence[str]) -> Mapping[str, Mapping[str, str]]:
        return {v: self.rows[v] for v in video_ids if v in self.rows}


def _scored(vid: str, score: float, rank: int) -> common_pb2.ScoredVideo:
    v = common_pb2.ScoredVideo(video_id=vid, score=score, ranker_score=score, ranker_rank=rank,
                               source=common_pb2.CANDIDATE_SOURCE_TWO_TOWER)
    v.terms.update({"two_tower": score - 0.5, "popularity": 0.5})
    return v


def test_freshness_lift_is_a_term_and_moves_are_told() -> None:
    now = time.time()
    cat = Catalog({"old": {"category": "a", "creator_id": "c1", "upload_ts": str(now - 1e8)},
                   "new": {"category": "b", "creator_id": "c2", "upload_ts": str(now)},
                   "seen": {"category": "c", "creator_id": "c3", "upload_ts": str(now - 1e8)}})
    cfg = RerankConfig(freshness_boost=0.05, exploration_slots=0, mmr_lambda=1.0)
    user = common_pb2.UserContext(user_id="u1", seen_video_ids=["seen"])
    before = [_scored("seen", 2.0, 1), _scored("old", 1.0, 2), _scored("new", 0.99, 3)]
    out = apply_rules(cat, user, before, 3, cfg, now=now, explain=True)
    assert [v.video_id for v in out] == ["new", "old"]
    new, old = out
    assert new.terms["freshness"] == pytest.approx(0.05, abs=1e-6)
    assert sum(new.terms.values()) == pytest.approx(new.score, abs=1e-6)
    assert "freshness +0.050" in new.rules
    assert any(r.startswith("moved up 2 places") for r in new.rules)  # past "seen" and "old"
    assert "freshness" not in old.terms and old.ranker_rank == 2
    # "seen" above it was filtered and "new" went ahead: the same place, nothing to tell
    assert list(old.rules) == []
    plain = apply_rules(cat, user, before, 3, cfg, now=now)
    assert not plain[0].rules and not plain[0].terms  # nothing unless asked
