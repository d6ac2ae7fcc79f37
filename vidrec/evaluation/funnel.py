"""Offline mirror of the whole served funnel: ranker top-m -> rerank rules -> k.

The offline figures used to describe the ranker's list, but users see the list after the
reranker's business rules (seen filter, dislikes, freshness boost, caps, MMR, exploration).
Here the ranker's top m go through `vidrec.serving.rerank.apply_rules`, the very function
the reranker service runs, with a `RerankConfig` built from the same `RerankSettings`, and
video metadata shaped as Redis holds it (`vidrec.store.features.video_record`). So a rule's
cost or gain in relevance, diversity, coverage, novelty and new-upload exposure is measured
before it ships, and its knobs can be chosen on validation (`tune_rules`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from vidrec import schema
from vidrec.metrics import evaluate
from vidrec.models.bundle import ModelBundle, UserRecord
from vidrec.rerank import DAY_S, DEFAULT_RULES, RerankConfig
from vidrec.serving.convert import profile_proto
from vidrec.serving.rerank import apply_rules
from vidrec.store.features import video_record
from vidrec.v1 import common_pb2

log = logging.getLogger(__name__)

# What the ranker stage passes to the reranker (RankerSettings.top_m, Budget.top_m).
TOP_M = 50

Ranked = list[tuple[str, float]]


class CatalogMeta:
    """The rules' video metadata from the dataset, in the shape FeatureStore.videos returns
    it (strings, as Redis stores them), so the rules see offline what they see online."""

    def __init__(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self._m = {str(r["video_id"]): {"video_id": str(r["video_id"]), **video_record(r)}
                   for r in rows}

    def videos(self, video_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        return {v: self._m[v] for v in video_ids if v in self._m}

    def upload_ts(self) -> dict[str, float]:
        out = {}
        for v, m in self._m.items():
            try:
                out[v] = float(m.get("upload_ts") or "nan")
            except ValueError:
                continue
        return out


def user_context(user_id: str, rec: UserRecord | None,
                 profile: Mapping[str, Any] | None = None) -> common_pb2.UserContext:
    """The UserContext the gateway would build for this user from the training state (the
    capped history and negatives lists Redis keeps, the seen set)."""
    if rec is None:
        return common_pb2.UserContext(user_id=user_id, profile=profile_proto(dict(profile or {})),
                                      is_new_user=True)
    return common_pb2.UserContext(
        user_id=user_id, profile=profile_proto(dict(rec.profile)),
        recent_video_ids=rec.history[: schema.HISTORY_LEN],
        negative_video_ids=rec.negatives[: schema.NEGATIVES_LEN],
        seen_video_ids=sorted(rec.seen))


def serve(ranked: Mapping[str, Ranked], contexts: Mapping[str, common_pb2.UserContext],
          meta: CatalogMeta, k: int, cfg: RerankConfig, now: float) -> dict[str, list[str]]:
    """Each user's served top k: the rules over the ranker's list, as the reranker does."""
    out = {}
    for u, items in ranked.items():
        videos = [common_pb2.ScoredVideo(video_id=v, score=s,
                                         source=common_pb2.CANDIDATE_SOURCE_TWO_TOWER)
                  for v, s in items]
        res = apply_rules(meta, contexts[u], videos, k, cfg, now)
        out[u] = [r.video_id for r in res]
    return out


def true_precision(truth: Any, recs: Mapping[str, Sequence[str]], ks: Sequence[int],
                   catalog: list[str]) -> dict[str, float]:
    """Precision against the generator's hidden relevance: every unseen catalog video the
    hidden model says the user likes counts, not only those shown in the test window."""
    users = list(recs)
    rel = truth.relevant_matrix(users, video_ids=catalog)
    col = {v: j for j, v in enumerate(catalog)}
    out = {}
    for k in ks:
        hits = [sum(rel[i, col[v]] for v in recs[u][:k] if v in col) / k
                for i, u in enumerate(users)]
        out[f"true_precision@{k}"] = float(np.mean(hits)) if hits else float("nan")
    return out


def new_share(recs: Mapping[str, Sequence[str]], upload_ts: Mapping[str, float], k: int,
              now: float, days: float) -> float:
    """Share of shown slots holding a video uploaded within `days` before `now` (new uploads
    need exposure to collect the feedback that lets the models learn them)."""
    shown = [v for lst in recs.values() for v in lst[:k]]
    if not shown:
        return float("nan")
    lo = now - days * DAY_S
    return float(np.mean([lo <= upload_ts.get(v, -np.inf) <= now + DAY_S for v in shown]))


@dataclass
class FunnelData:
    """Everything the served lists are scored with, gathered once per split."""

    ranked: dict[str, Ranked]
    contexts: dict[str, common_pb2.UserContext]
    relevant: dict[str, set[str]]
    meta: CatalogMeta
    catalog: list[str]
    popularity: dict[str, int]
    vectors: dict[str, np.ndarray]
    now: float
    truth: Any = None
    fresh_days: float = RerankConfig.freshness_days

    def __post_init__(self) -> None:
        self.upload_ts = self.meta.upload_ts()

    def metrics(self, recs: Mapping[str, Sequence[str]], ks: Sequence[int]) -> dict[str, float]:
        m = evaluate(recs, self.relevant, ks, self.catalog, self.popularity, self.vectors)
        for k in ks:
            m[f"new_share@{k}"] = new_share(recs, self.upload_ts, k, self.now, self.fresh_days)
        if self.truth is not None:
            m.update(true_precision(self.truth, recs, ks, self.catalog))
        return m

    def ranker_only(self, k: int) -> dict[str, list[str]]:
        return {u: [v for v, _ in items[:k]] for u, items in self.ranked.items()}

    def served(self, k: int, cfg: RerankConfig) -> dict[str, list[str]]:
        return serve(self.ranked, self.contexts, self.meta, k, cfg, self.now)

    def served_metrics(self, ks: Sequence[int], cfg: RerankConfig) -> dict[str, float]:
        """Metrics of the served lists; each k is its own request (the exploration slot is
        the last of k, so the served top 10 is not the served top 20 cut at 10)."""
        out: dict[str, float] = {}
        for k in ks:
            m = self.metrics(self.served(k, cfg), [k])
            out.update({key: v for key, v in m.items() if key != "users"})
            out["users"] = m["users"]
        return out


def funnel_data(bundle: ModelBundle, recommender: Any, users: Sequence[str],
                profiles: Sequence[Mapping[str, Any]], relevant: dict[str, set[str]],
                popularity: dict[str, int], now: float, truth: Any = None,
                top_m: int = TOP_M) -> FunnelData:
    """The ranker's top m for every user (a BatchRecommender of the bundle) and the
    contexts the rules need."""
    lists = recommender.ranked(list(users), top_m, profiles=list(profiles))
    ranked = dict(zip(users, lists, strict=True))
    contexts = {u: user_context(u, bundle.users.get(u), p)
                for u, p in zip(users, profiles, strict=True)}
    return FunnelData(ranked, contexts, relevant, CatalogMeta(bundle.video_rows()),
                      bundle.video_ids, popularity,
                      dict(zip(bundle.video_ids, bundle.content_vectors, strict=True)),
                      now, truth)


def without(cfg: RerankConfig, rule: str) -> RerankConfig:
    return replace(cfg, rules=tuple(r for r in cfg.rules if r != rule))


def ablation(data: FunnelData, cfg: RerankConfig, k: int) -> list[dict[str, Any]]:
    """Served-list metrics at k with every rule on, each rule off in turn, and all off
    (the ranker's own top k), with each metric's change against all rules on."""
    variants: list[tuple[str, RerankConfig]] = [("all rules", cfg)]
    variants += [(f"- {r}", without(cfg, r)) for r in cfg.rules]
    variants.append(("no rules", replace(cfg, rules=())))
    base: dict[str, float] = {}
    rows = []
    for name, c in variants:
        m = data.metrics(data.served(k, c), [k])
        m.pop("users", None)
        if not base:
            base = m
        row: dict[str, Any] = {"rules": name}
        for key, v in m.items():
            row[key] = v
            if name != "all rules":
                row[f"Δ {key}"] = v - base[key]
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Objective:
    """What the rules are tuned for: relevance (NDCG@k) subject to floors on intra-list
    diversity and on the share of new uploads shown."""

    k: int = 10
    min_diversity: float = 0.0
    min_new_share: float = 0.0

    def feasible(self, m: Mapping[str, float]) -> bool:
        div = m.get(f"diversity@{self.k}", float("nan"))
        new = m.get(f"new_share@{self.k}", float("nan"))
        return ((np.isnan(div) or div >= self.min_diversity - 1e-12)
                and (np.isnan(new) or new >= self.min_new_share - 1e-12))

    def value(self, m: Mapping[str, float]) -> float:
        return float(m[f"ndcg@{self.k}"]) if self.feasible(m) else -np.inf


# The knobs tuned: every combination of the coarse grid (a single knob moved from a
# feasible setting usually breaks a floor, e.g. fewer caps lower diversity, so one knob
# at a time stalls where two moved together would not), then each knob refined in turn.
GRID: dict[str, tuple[Any, ...]] = {
    "max_per_creator": (0, 2, 3),
    "max_per_category": (0, 3, 4, 6),
    "mmr_lambda": (0.6, 0.7, 0.8, 0.9, 1.0),
    "freshness_boost": (0.0, 0.05, 0.2),
    "exploration_slots": (0, 1),
}
FINE: dict[str, tuple[Any, ...]] = {
    "max_per_creator": (0, 1, 2, 3, 4),
    "max_per_category": (0, 2, 3, 4, 5, 6, 8),
    "mmr_lambda": (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0),
    "freshness_boost": (0.0, 0.02, 0.05, 0.1, 0.2, 0.5),
    "exploration_slots": (0, 1, 2),
    "exploration_pool": (1, 3, 5, 10, 20),
}


def tune_rules(data: FunnelData, start: RerankConfig, objective: Objective,
               grid: Mapping[str, Sequence[Any]] = GRID,
               fine: Mapping[str, Sequence[Any]] = FINE,
               progress: Callable[[str], None] | None = None
               ) -> tuple[RerankConfig, list[dict[str, Any]]]:
    """The rule knobs with the best objective on `data` (a validation split, never test):
    the full coarse grid, then one pass of each knob over its fine values, the others
    fixed. Returns the chosen config and every setting tried with its metrics. Among equal
    scores the setting closest to `start` wins, so a default moves only for a better one."""
    import itertools

    cache: dict[RerankConfig, dict[str, float]] = {}
    trials: list[dict[str, Any]] = []
    knobs = list(dict.fromkeys([*grid, *fine]))

    def score(c: RerankConfig) -> float:
        if c not in cache:
            m = data.metrics(data.served(objective.k, c), [objective.k])
            cache[c] = m
            trials.append({**{n: getattr(c, n) for n in knobs}, **m,
                           "feasible": objective.feasible(m)})
        return objective.value(cache[c])

    def moved(c: RerankConfig) -> int:
        return sum(getattr(c, n) != getattr(start, n) for n in knobs)

    def better(c: RerankConfig, v: float) -> bool:
        """Strictly better, or as good with fewer knobs moved from `start`: a knob with
        no effect on this data (a creator cap on a catalog without creators) stays."""
        return v > best_v + 1e-12 or (v >= best_v - 1e-12 and moved(c) < moved(best))

    best, best_v = start, score(start)
    names = list(grid)
    for combo in itertools.product(*(grid[n] for n in names)):
        c = replace(start, **dict(zip(names, combo, strict=True)))
        if better(c, v := score(c)):
            best, best_v = c, v
    if progress is not None:
        progress(f"grid: {len(cache)} settings, ndcg@{objective.k}={best_v:.4f}")
    for name, values in fine.items():
        for value in values:
            c = replace(best, **{name: value})
            if better(c, v := score(c)):
                best, best_v = c, v
        if progress is not None:
            progress(f"{name}={getattr(best, name)} ndcg@{objective.k}={best_v:.4f}")
    return best, trials


def frontier(trials: Sequence[Mapping[str, Any]], k: int, floors: Sequence[float],
             new_floor: float = 0.0) -> list[dict[str, Any]]:
    """The price of diversity: per diversity floor, the tuning trial with the best NDCG@k
    whose diversity and new-upload share reach the floors (None where none does)."""
    out: list[dict[str, Any]] = []
    for floor in floors:
        ok = [t for t in trials if t[f"diversity@{k}"] >= floor - 1e-12
              and t[f"new_share@{k}"] >= new_floor - 1e-12]
        best = max(ok, key=lambda t: t[f"ndcg@{k}"], default=None)
        out.append({"diversity floor": floor, **({key: v for key, v in best.items()
                                                  if key != "feasible"} if best else {})})
    return out


def settings_env(cfg: RerankConfig) -> dict[str, str]:
    """The VIDREC_* variables that select this config in the reranker and the gateway."""
    rules = "" if cfg.rules == DEFAULT_RULES else ",".join(cfg.rules)
    return {"VIDREC_MAX_PER_CREATOR": str(cfg.max_per_creator),
            "VIDREC_MAX_PER_CATEGORY": str(cfg.max_per_category),
            "VIDREC_MMR_LAMBDA": str(cfg.mmr_lambda),
            "VIDREC_FRESHNESS_DAYS": str(cfg.freshness_days),
            "VIDREC_FRESHNESS_BOOST": str(cfg.freshness_boost),
            "VIDREC_EXPLORATION_SLOTS": str(cfg.exploration_slots),
            "VIDREC_EXPLORATION_POOL": str(cfg.exploration_pool),
            "VIDREC_EXPLORATION_SCOPE": cfg.exploration_scope,
            "VIDREC_RULES": rules}
