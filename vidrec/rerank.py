"""Business rules of the reranker stage, as plain functions over domain objects.

The reranker turns the ranker's top candidates into the k videos a user sees. Each rule is a
small function registered by name in `RULES`; `RerankConfig.rules` says which run and in what
order, so a deployment can switch one off without touching code. A rule configures a
`RerankPlan`: pool rules (seen filter, dislikes, freshness) rewrite the candidate pool at once,
selection rules (caps, MMR, exploration) add constraints or objectives that the greedy
selection in `rerank` honours afterwards.

Nothing here knows about gRPC or protobuf, so offline evaluation can run the rules as they
are. vidrec.serving.rerank converts the messages to these types and back, for the reranker
service and for the gateway when the reranker is down: both answer with the same rules.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # config takes its rerank defaults from RerankConfig
    from vidrec.config import RerankSettings

DAY_S = 86_400.0

# Lowercase names of vidrec.v1.CandidateSource without the CANDIDATE_SOURCE_ prefix.
SOURCES: tuple[str, ...] = (
    "two_tower",
    "mf",
    "content_similar",
    "popular",
    "fresh",
    "exploration",
)
EXPLORATION = "exploration"
EXPLORATION_SCOPES = ("tiers", "ranked", "top")


@dataclass(frozen=True)
class Item:
    """One candidate video with the metadata the rules need; missing metadata is allowed."""

    video_id: str
    score: float
    source: str
    anchor_video_id: str = ""
    category: str = ""
    creator_id: str = ""
    upload_ts: float | None = None
    title: str = ""


@dataclass
class UserState:
    """What the rules know about the user for this request."""

    user_id: str
    seen: set[str] = field(default_factory=set)
    # Most recent first; counts as seen too.
    recent: list[str] = field(default_factory=list)
    disliked_creators: set[str] = field(default_factory=set)
    disliked_categories: set[str] = field(default_factory=set)
    # video_id -> title of videos the user watched, to write "Because you watched ...".
    recent_titles: dict[str, str] = field(default_factory=dict)
    liked_creators: set[str] = field(default_factory=set)


DEFAULT_RULES: tuple[str, ...] = (
    "seen_filter",
    "disliked",
    "freshness",
    "caps",
    "mmr",
    "exploration",
)


@dataclass(frozen=True)
class RerankConfig:
    """Knobs of the rules; a cap of 0 or less means "no cap"."""

    max_per_creator: int = 2
    max_per_category: int = 4
    # 1.0 = pure relevance order, 0.0 = pure diversity.
    mmr_lambda: float = 0.8
    freshness_days: float = 14.0
    # Added to the ranker score of a video uploaded just now, fading linearly to 0 at
    # freshness_days; in the ranker's score units.
    freshness_boost: float = 0.05
    exploration_slots: int = 1
    # The exploration pick is drawn from this many best eligible candidates, so exploring
    # varies between users and days without showing the worst candidate.
    exploration_pool: int = 5
    # Where the exploration slot draws from. "tiers": a new upload, else a category not
    # on the list, else a low-exposure video (product reasons: exposure for new videos,
    # variety). "ranked": any of the best eligible candidates not already shown. "top":
    # any of the best eligible candidates, drawn before the regular picks (which then fill
    # the other slots from the rest). The wider the draw covers where two models differ,
    # the better the retrain gate tells them apart off-policy (README: benchmarks.offpolicy).
    exploration_scope: str = "tiers"
    rules: tuple[str, ...] = DEFAULT_RULES

    def __post_init__(self) -> None:
        # Bad knobs must stop the process at start-up, not distort answers silently.
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {self.mmr_lambda}")
        if self.freshness_days < 0:
            raise ValueError(f"freshness_days must be >= 0, got {self.freshness_days}")
        if self.exploration_slots < 0:
            raise ValueError(f"exploration_slots must be >= 0, got {self.exploration_slots}")
        if self.exploration_pool < 1:
            raise ValueError(f"exploration_pool must be >= 1, got {self.exploration_pool}")
        if self.exploration_scope not in EXPLORATION_SCOPES:
            raise ValueError(f"exploration_scope must be one of {EXPLORATION_SCOPES}, "
                             f"got {self.exploration_scope!r}")

    @classmethod
    def from_settings(
        cls, settings: RerankSettings, registry: Mapping[str, Rule] | None = None
    ) -> RerankConfig:
        """Build from the rerank knobs both the reranker and the gateway read (one
        vidrec.config.RerankSettings), so the degraded path cannot drift from the reranker.

        Unknown rule names and out-of-range knobs are a config error (ValueError).
        `settings.rules` is comma-separated; empty runs every built-in rule in default order.
        """
        raw = settings.rules
        rules = tuple(r.strip() for r in raw.split(",") if r.strip()) if raw else DEFAULT_RULES
        cfg = cls(
            max_per_creator=int(settings.max_per_creator),
            max_per_category=int(settings.max_per_category),
            mmr_lambda=float(settings.mmr_lambda),
            freshness_days=float(settings.freshness_days),
            freshness_boost=float(settings.freshness_boost),
            exploration_slots=int(settings.exploration_slots),
            exploration_pool=int(settings.exploration_pool),
            exploration_scope=str(settings.exploration_scope),
            rules=rules,
        )
        cfg.check_rules(RULES if registry is None else registry)
        return cfg

    def check_rules(self, registry: Mapping[str, Rule]) -> None:
        unknown = [r for r in self.rules if r not in registry]
        if unknown:
            raise ValueError(f"unknown rerank rules {unknown}; known: {sorted(registry)}")


@dataclass(frozen=True)
class Ranked:
    """One shown video and the sentence that tells the user why it is there.

    `propensity` is the probability that this policy put the video in this slot: 1 for
    a deterministic pick, 1/len(pool) for the exploration slot, which draws uniformly from
    `pool`. Logged with the impression, they make off-policy evaluation unbiased
    (vidrec.evaluation.offpolicy)."""

    item: Item
    reason: str
    propensity: float = 1.0
    pool: tuple[str, ...] = ()


class Constraint(Protocol):
    """A hard limit on the selected list, checked before each pick.

    Constraints must be monotone: once an item is refused it stays refused for the request
    (true of caps), which lets the selection drop it for good.
    """

    def allows(self, item: Item) -> bool: ...

    def add(self, item: Item) -> None: ...


class CapConstraint:
    """At most `limit` selected items per non-empty key (creator, category)."""

    def __init__(self, key: Callable[[Item], str], limit: int) -> None:
        self._key = key
        self._limit = limit
        self._counts: Counter[str] = Counter()

    def allows(self, item: Item) -> bool:
        k = self._key(item)
        return not k or self._limit <= 0 or self._counts[k] < self._limit

    def add(self, item: Item) -> None:
        k = self._key(item)
        if k:
            self._counts[k] += 1


def _creator(item: Item) -> str:
    return item.creator_id


def _category(item: Item) -> str:
    return item.category


def cap_constraints(max_per_creator: int, max_per_category: int) -> list[Constraint]:
    return [CapConstraint(_creator, max_per_creator), CapConstraint(_category, max_per_category)]


@dataclass
class RerankPlan:
    """Per-request state the rules configure; `rerank` then selects from it."""

    user: UserState
    cfg: RerankConfig
    now: float
    pool: list[Item]
    constraints: list[Constraint] = field(default_factory=list)
    # 1.0 until the mmr rule runs: without it the selection is in score order.
    mmr_lambda: float = 1.0
    exploration_slots: int = 0


Rule = Callable[[RerankPlan], None]


def seen_filter(plan: RerankPlan) -> None:
    """Drop what the user already watched: re-showing it wastes a slot."""
    seen = plan.user.seen | set(plan.user.recent)
    plan.pool = [it for it in plan.pool if it.video_id not in seen]


def disliked(plan: RerankPlan) -> None:
    """Drop creators and categories the user said no to."""
    creators, categories = plan.user.disliked_creators, plan.user.disliked_categories
    plan.pool = [
        it
        for it in plan.pool
        if not (it.creator_id and it.creator_id in creators)
        and not (it.category and it.category in categories)
    ]


def recency(item: Item, now: float, freshness_days: float) -> float:
    """1.0 for a video uploaded now, falling linearly to 0.0 at freshness_days of age."""
    window = freshness_days * DAY_S
    ts = item.upload_ts
    if window <= 0 or ts is None or not math.isfinite(ts):
        return 0.0
    age = max(0.0, now - ts)  # an upload "in the future" is clock skew: treat as new
    return max(0.0, 1.0 - age / window)


def freshness(plan: RerankPlan) -> None:
    """Lift new uploads so the catalog's newest videos get a chance to be seen."""
    cfg = plan.cfg
    if cfg.freshness_boost == 0:
        return
    out = []
    for it in plan.pool:
        r = recency(it, plan.now, cfg.freshness_days)
        out.append(replace(it, score=it.score + cfg.freshness_boost * r) if r > 0 else it)
    plan.pool = out


def caps(plan: RerankPlan) -> None:
    """Limit videos per creator and per category so one of them cannot fill the page."""
    plan.constraints.extend(cap_constraints(plan.cfg.max_per_creator, plan.cfg.max_per_category))


def mmr(plan: RerankPlan) -> None:
    """Select by maximal marginal relevance, trading score against similarity to picks."""
    plan.mmr_lambda = plan.cfg.mmr_lambda


def exploration(plan: RerankPlan) -> None:
    """Reserve the last slots for something outside the user's current bubble."""
    plan.exploration_slots = plan.cfg.exploration_slots


RULES: Mapping[str, Rule] = MappingProxyType(
    {
        "seen_filter": seen_filter,
        "disliked": disliked,
        "freshness": freshness,
        "caps": caps,
        "mmr": mmr,
        "exploration": exploration,
    }
)


def _score_key(score: float) -> float:
    """NaN sorts as the worst score instead of poisoning comparisons."""
    return -math.inf if math.isnan(score) else score


def dedupe(items: Iterable[Item]) -> list[Item]:
    """Keep the best-scored copy of each video at its first position; drop empty ids.

    Several candidate sources can return the same video; it must be shown once.
    """
    out: list[Item] = []
    where: dict[str, int] = {}
    for it in items:
        if not it.video_id:
            continue
        j = where.get(it.video_id)
        if j is None:
            where[it.video_id] = len(out)
            out.append(it)
        elif _score_key(it.score) > _score_key(out[j].score):
            out[j] = it
    return out


def reason_for(item: Item, user: UserState, fresh: bool = False) -> str:
    """A sentence the user understands, from the most specific evidence available."""
    anchor_title = user.recent_titles.get(item.anchor_video_id) if item.anchor_video_id else None
    if anchor_title:
        return f"Because you watched {anchor_title}"
    if item.source == "content_similar":
        return "Similar to videos you watched"
    liked = bool(item.creator_id) and item.creator_id in user.liked_creators
    if fresh and liked:
        return f"New from {item.creator_id} — a creator you like"
    if item.source == "popular":
        return f"Popular in {item.category} this week" if item.category else "Popular this week"
    if fresh:
        return f"New in {item.category}" if item.category else "Just uploaded"
    if liked:
        return f"More from {item.creator_id}, a creator you like"
    return "Picked for you"


def _is_fresh(item: Item, now: float, freshness_days: float) -> bool:
    return item.source == "fresh" or recency(item, now, freshness_days) > 0


# MMR scales scores over the best RELEVANCE_SPAN * k candidates: those compete for the k
# slots. Scaled over the whole pool, one low outlier stretched the range and squeezed the
# top candidates together, so the similarity term decided the list: the ranker appends up
# to 5 new uploads below its top 50 for the exploration slot (services/ranker/scoring.py),
# only where the candidates include the fresh source, i.e. in the hybrid arm and not in
# mf_only. benchmarks.arms on fresh demo stacks (400 users through both arms): served true
# precision 0.296 (hybrid) vs 0.312 (mf_only) with the whole-pool scale although the
# hybrid's ranker top 10 was better (0.377 vs 0.363); 0.3265 vs 0.3195 with this one.
RELEVANCE_SPAN = 2


def _relevance(pool: Sequence[Item], k: int) -> np.ndarray:
    """Scores scaled to [0, 1] so MMR weighs them against similarities in [0, 1]: the best
    finite score is 1, the (RELEVANCE_SPAN * k)-th best is 0, lower ones clip to 0."""
    s = np.array([_score_key(it.score) for it in pool], dtype=float)
    finite = np.isfinite(s)
    if not finite.any():
        return np.where(s > 0, 1.0, 0.0)
    top = np.sort(s[finite])[::-1]
    hi, lo = float(top[0]), float(top[min(len(top), max(1, RELEVANCE_SPAN * k)) - 1])
    rel = np.ones_like(s) if hi == lo else np.clip((s - lo) / (hi - lo), 0.0, 1.0)
    rel[s == math.inf] = 1.0
    rel[s == -math.inf] = 0.0
    return rel


class _Similarity:
    """Pairwise similarity in [0, 1] from the video records serving already reads: a shared
    category and a shared creator count half each."""

    def __init__(self, pool: Sequence[Item]) -> None:
        self._cat = self._codes(it.category for it in pool)
        self._cre = self._codes(it.creator_id for it in pool)

    @staticmethod
    def _codes(values: Iterable[str]) -> np.ndarray:
        # Empty metadata gets -1, which never counts as a match.
        ids: dict[str, int] = {}
        return np.array([ids.setdefault(v, len(ids)) if v else -1 for v in values], dtype=int)

    def row(self, i: int) -> np.ndarray:
        sim = 0.5 * ((self._cat == self._cat[i]) & (self._cat[i] >= 0))
        sim = sim + 0.5 * ((self._cre == self._cre[i]) & (self._cre[i] >= 0))
        return sim


class _Greedy:
    """Greedy MMR selection under hard constraints."""

    def __init__(self, pool: Sequence[Item], lam: float, constraints: Sequence[Constraint],
                 k: int):
        self.pool = pool
        self.lam = lam
        self.constraints = constraints
        self.rel = _relevance(pool, k)
        self.alive = np.ones(len(pool), dtype=bool)
        self.max_sim = np.zeros(len(pool))
        self.sim = _Similarity(pool) if lam < 1.0 else None

    def allowed(self, i: int) -> bool:
        if not self.alive[i]:
            return False
        if all(c.allows(self.pool[i]) for c in self.constraints):
            return True
        self.alive[i] = False  # constraints are monotone: refused now, refused later
        return False

    def take(self, i: int) -> None:
        self.alive[i] = False
        for c in self.constraints:
            c.add(self.pool[i])
        if self.sim is not None:
            self.max_sim = np.maximum(self.max_sim, self.sim.row(i))

    def next(self) -> int | None:
        obj = self.lam * self.rel - (1.0 - self.lam) * self.max_sim
        obj[~self.alive] = -math.inf
        for i in np.argsort(-obj, kind="stable"):
            if obj[i] == -math.inf:
                return None
            if self.allowed(int(i)):
                self.take(int(i))
                return int(i)
        return None


def _exploration_rng(user_id: str, now: float) -> random.Random:
    """Same user, same day -> same pick, so answers are reproducible and stable across
    refreshes; a new day rotates what is explored."""
    day = int(now // DAY_S) if math.isfinite(now) else 0
    digest = hashlib.sha256(f"{user_id}:{day}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _pick_exploration(
    plan: RerankPlan, greedy: _Greedy, shown_categories: set[str], rng: random.Random
) -> tuple[int, str, list[int]] | None:
    """A video uploaded within freshness_days (new videos need exposure to collect the
    feedback that lets the models learn them); failing that, one from a category not yet
    on the list; failing that, a low-exposure one (source fresh/exploration).
    Returns (index, reason, the indices it was drawn from uniformly)."""
    pool, cfg = plan.pool, plan.cfg
    if cfg.exploration_scope in ("ranked", "top"):
        ranked = [i for i in range(len(pool)) if greedy.allowed(i)]
        ranked.sort(key=lambda i: (-_score_key(pool[i].score), pool[i].video_id))
        drawn_from = ranked[: cfg.exploration_pool]
        return (rng.choice(drawn_from), "You might also like", drawn_from) if drawn_from else None
    recent = [
        i
        for i in range(len(pool))
        if recency(pool[i], plan.now, cfg.freshness_days) > 0 and greedy.allowed(i)
    ]
    new_cat = [
        i
        for i in range(len(pool))
        if pool[i].category and pool[i].category not in shown_categories and greedy.allowed(i)
    ]
    low_exposure = [
        i
        for i in range(len(pool))
        if pool[i].source in ("fresh", EXPLORATION) and greedy.allowed(i)
    ]
    tiers: list[tuple[list[int], str]] = [
        (recent, "new"), (new_cat, "different"), (low_exposure, "try")
    ]
    for cands, kind in tiers:
        if not cands:
            continue
        cands.sort(key=lambda i: (-_score_key(pool[i].score), pool[i].video_id))
        drawn_from = cands[: cfg.exploration_pool]
        i = rng.choice(drawn_from)
        if kind == "different":
            reason = f"Something different: {pool[i].category}"
        elif kind == "new":
            reason = f"Just uploaded in {pool[i].category}" if pool[i].category else "Just uploaded"
        else:
            reason = "Something new to try"
        return i, reason, drawn_from
    return None


def rerank(
    items: list[Item],
    user: UserState,
    k: int,
    cfg: RerankConfig,
    now: float,
    registry: Mapping[str, Rule] = RULES,
) -> list[Ranked]:
    """Apply the enabled rules and return at most k videos, each with a reason.

    Exploration picks come last and carry source "exploration". Raises ValueError only for
    a rule name the registry does not know (a configuration error).
    """
    cfg.check_rules(registry)
    if k <= 0:
        return []
    plan = RerankPlan(user=user, cfg=cfg, now=now, pool=dedupe(items))
    for name in cfg.rules:
        registry[name](plan)
    pool = plan.pool
    if not pool:
        return []

    explore = min(plan.exploration_slots, k - 1) if k > 1 else 0
    greedy = _Greedy(pool, plan.mmr_lambda, plan.constraints, k)
    out: list[Ranked] = []

    def add(i: int) -> None:
        it = pool[i]
        out.append(Ranked(it, reason_for(it, user, _is_fresh(it, now, cfg.freshness_days))))

    def explored(pick: tuple[int, str, list[int]]) -> Ranked:
        i, reason, drawn_from = pick
        greedy.take(i)
        return Ranked(replace(pool[i], source=EXPLORATION), reason,
                      propensity=1.0 / len(drawn_from),
                      pool=tuple(pool[j].video_id for j in drawn_from))

    rng = _exploration_rng(user.user_id, now)
    # "top" draws before the regular picks, so its pool is the best candidates, those the
    # list would show included; the pick is still shown last (same position whatever it is).
    drawn_first: list[Ranked] = []
    if cfg.exploration_scope == "top":
        for _ in range(explore):
            pick = _pick_exploration(plan, greedy, set(), rng)
            if pick is None:
                break
            drawn_first.append(explored(pick))
        explore = 0

    for _ in range(k - len(drawn_first) - explore):
        i = greedy.next()
        if i is None:
            return out + drawn_first
        add(i)

    for _ in range(explore):
        shown = {r.item.category for r in out if r.item.category}
        pick = _pick_exploration(plan, greedy, shown, rng)
        if pick is None:
            j = greedy.next()  # nothing to explore: the slot goes to the next regular pick
            if j is None:
                break
            add(j)
            continue
        out.append(explored(pick))
    return out + drawn_first

