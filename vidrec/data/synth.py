"""Synthetic data directories with a known ground truth.

Real logs never tell you what a user *would* have liked; a generator with a hidden model
does, so offline metrics can be checked against the truth and a user simulator can answer
the live system with the same behaviour the training data came from.

The hidden model:
- topics: `n_topics` latent topics, each with its own word vocabulary; each topic belongs
  to one category (topic t -> category t % n_categories).
- videos: a topic mixture (mostly one primary topic), a quality, a language and a
  duration; made by creators who specialise in a topic and a language and whose sizes
  follow a power law. Tags and title words come from the video's topics' vocabularies.
- users: topic affinities = global topic appeal + effects of country, age bucket and
  gender + an individual part, so a new user's profile predicts a good share of taste
  (cold start is learnable) while history still adds information.
- affinity(user, video) = user affinities . video topic mixture + quality_weight * quality
  - a penalty when the video's language is not the user's (smaller for English).
- exposure (what got shown): slates of `slate_size` videos; each slot comes from the
  user's favourite topics or the whole catalogue, weighted by a power-law popularity,
  sometimes also by recency (newer videos favoured); only videos already uploaded.
- reactions: click ~ sigmoid(affinity + freshness bonus) x position bias 1/log2(pos+2);
  a click always leads to a watch whose fraction grows with affinity and shrinks with
  duration; a watch under `skip_below` also emits a skip; likes, dislikes and shares
  follow affinity.

Output (`generate(out, ...)`): out/videos.csv, out/users.csv, out/interactions.csv (the
data directory contract), out/ground_truth.npz (GroundTruth), and with new_users /
new_videos also out/later/users.csv and out/later/videos.csv: entities that exist only
after the main window (no interactions in the main data; the ground truth covers them).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidrec import schema
from vidrec.data.dataset import Dataset, load_dataset, write_dataset, write_table

logger = logging.getLogger(__name__)

GROUND_TRUTH_FILE = "ground_truth.npz"
LATER_DIR = "later"

CATEGORIES = ("music", "gaming", "sports", "news", "comedy", "education", "science", "travel",
              "food", "lifestyle", "film", "tech", "kids", "fitness", "animals", "auto")
LANGUAGES = ("en", "es", "hi", "pt", "fr", "de", "ja", "ar")
LANGUAGE_WEIGHT = (0.45, 0.13, 0.12, 0.08, 0.06, 0.06, 0.06, 0.04)
COUNTRIES = ("US", "GB", "IN", "BR", "MX", "ES", "FR", "DE", "JP", "EG", "CA", "AU")
COUNTRY_WEIGHT = (0.25, 0.07, 0.15, 0.10, 0.08, 0.05, 0.06, 0.06, 0.06, 0.04, 0.04, 0.04)
COUNTRY_LANGUAGE = ("en", "en", "hi", "pt", "es", "es", "fr", "de", "ja", "ar", "en", "en")
GENDERS = ("F", "M", "X")
GENDER_WEIGHT = (0.48, 0.48, 0.04)
AGE_EDGES = (18, 25, 35, 45, 55)  # -> 6 age buckets with their own taste effects
FILLER = ("the", "best", "how", "to", "my", "new", "top", "vs", "guide", "live", "review",
          "day", "in", "with", "first", "ultimate", "why", "for", "and", "episode")
DAY = 86_400


@dataclass(frozen=True)
class SynthParams:
    """Every knob of the hidden model; saved with the ground truth."""

    n_topics: int = 20
    n_categories: int = 10
    words_per_topic: int = 24
    slate_size: int = 10
    t_start: int = 1_704_067_200  # 2024-01-01 UTC: start of the main window
    window_days: float = 180.0
    catalog_days: float = 365.0  # back catalogue uploaded before the window
    back_catalog_share: float = 0.5
    later_days: float = 30.0  # later videos are uploaded within this after the window
    new_user_join_share: float = 0.3  # users who join during the window, not before
    # users
    topic_appeal_scale: float = 0.3
    feature_scale: float = 0.9  # std of the profile-driven part of a user's affinities
    individual_scale: float = 0.6  # std of the part no feature predicts
    activity_sigma: float = 1.0  # lognormal spread of how much users watch
    # videos
    primary_topic_weight: float = 0.75
    creator_on_topic: float = 0.85
    videos_per_creator: float = 10.0
    popularity_alpha: float = 1.2  # Pareto tail of exposure popularity
    # affinity
    quality_weight: float = 0.5
    language_penalty: float = 1.0
    english_penalty: float = 0.4
    # exposure
    topic_source_share: float = 0.6
    recency_source_share: float = 0.4
    recency_tau_days: float = 45.0
    topic_temperature: float = 0.7
    # reactions
    click_bias: float = -2.0
    click_slope: float = 1.5
    fresh_bonus: float = 0.4
    fresh_tau_days: float = 14.0
    watch_bias: float = 0.0
    watch_slope: float = 1.2
    watch_duration_slope: float = 0.35
    watch_noise: float = 0.8
    skip_below: float = 0.2
    like_bias: float = -4.0
    like_slope: float = 1.2
    like_watch: float = 1.0
    dislike_bias: float = -3.0
    dislike_slope: float = 1.5
    share_bias: float = -5.0
    share_slope: float = 1.2
    relevant_quantile: float = 0.95  # default relevance threshold: this affinity quantile

    @property
    def t_end(self) -> int:
        return int(self.t_start + self.window_days * DAY)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _position_bias(pos: np.ndarray) -> np.ndarray:
    """Examination probability of a slot (DCG-style), the classic position-bias model."""
    return 1.0 / np.log2(np.asarray(pos, dtype=np.float64) + 2.0)


@dataclass
class _Reactions:
    clicked: np.ndarray
    frac: np.ndarray  # watched fraction (meaningful where clicked)
    skip: np.ndarray
    like: np.ndarray
    dislike: np.ndarray
    share: np.ndarray
    click_delay: np.ndarray  # seconds from impression to click


def _react(aff: np.ndarray, pos: np.ndarray, duration: np.ndarray, age_days: np.ndarray,
           rng: np.random.Generator, p: SynthParams) -> _Reactions:
    """The one reaction model, shared by generation and GroundTruth.respond."""
    n = len(aff)
    u = rng.random((n, 4))
    noise = rng.standard_normal(n)
    delay = 2.0 + rng.exponential(8.0, n)
    fresh = p.fresh_bonus * np.exp(-np.maximum(age_days, 0.0) / p.fresh_tau_days)
    p_click = _sigmoid(p.click_bias + p.click_slope * aff + fresh) * _position_bias(pos)
    clicked = u[:, 0] < p_click
    frac = _sigmoid(p.watch_bias + p.watch_slope * aff
                    - p.watch_duration_slope * np.log(np.maximum(duration, 1.0) / 300.0)
                    + p.watch_noise * noise)
    frac = np.where(frac > 0.97, 1.0, np.clip(np.round(frac, 3), 0.001, 1.0))
    skip = clicked & (frac < p.skip_below)
    p_like = _sigmoid(p.like_bias + p.like_slope * aff + p.like_watch * frac)
    p_dislike = _sigmoid(p.dislike_bias - p.dislike_slope * aff)
    like = clicked & (u[:, 1] < p_like)
    dislike = clicked & ~like & (u[:, 1] > 1.0 - p_dislike)
    share = clicked & (u[:, 2] < _sigmoid(p.share_bias + p.share_slope * aff))
    return _Reactions(clicked, frac, skip, like, dislike, share, delay)


def _categorical_rows(probs: np.ndarray, rows: np.ndarray, rng: np.random.Generator
                      ) -> np.ndarray:
    """Draw one column per query row from row-stochastic probs, without an (n x k) temp."""
    k = probs.shape[1]
    cum = np.cumsum(probs, axis=1)
    cum /= cum[:, -1:]
    flat = (cum + np.arange(len(probs))[:, None]).ravel()
    r = rows + rng.random(len(rows))
    idx = np.searchsorted(flat, r, side="right")
    return np.minimum(idx - rows * k, k - 1)


class _BlockSampler:
    """Draw a video of a block (topic, or everything) uploaded by time t, by weight.

    Videos are sorted by (block, upload time), so the videos of block b available at t
    are a contiguous run and one cumulative-weight array serves every query.
    """

    def __init__(self, block: np.ndarray, upload: np.ndarray, weight: np.ndarray,
                 n_blocks: int) -> None:
        self.order = np.lexsort((upload, block))
        self.t0 = float(upload.min()) if len(upload) else 0.0
        span = float(upload.max() - self.t0 + 1) if len(upload) else 1.0
        self.span = span
        self.key = block[self.order] * span + (upload[self.order] - self.t0)
        self.cw = np.cumsum(weight[self.order])
        self.start = np.searchsorted(block[self.order], np.arange(n_blocks), side="left")

    def sample(self, block: np.ndarray, t: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
        """-> (video index, whether block had any video by t)."""
        s = self.start[block]
        t_rel = np.clip(t - self.t0, -1.0, self.span - 1)
        e = np.searchsorted(self.key, block * self.span + t_rel, side="right")
        ok = e > s
        e_safe = np.maximum(e, 1)
        lo = np.where(s > 0, self.cw[np.maximum(s - 1, 0)], 0.0)
        hi = self.cw[e_safe - 1]
        r = lo + rng.random(len(block)) * (hi - lo)
        idx = np.searchsorted(self.cw, r, side="right")
        idx = np.clip(idx, s, np.maximum(e - 1, s))
        idx = np.minimum(idx, len(self.order) - 1)
        return self.order[idx], ok


# --- the world: vocabularies, feature effects, creators -------------------------------


def _make_words(n: int, rng: np.random.Generator) -> list[str]:
    """Pronounceable unique pseudo-words, so titles and tags look like text."""
    cons, vows = "bdfgklmnprstvz", "aeiou"
    syll = [c + v for c in cons for v in vows]
    words: list[str] = []
    seen = set(FILLER)
    while len(words) < n:
        k = int(rng.integers(2, 4))
        w = "".join(syll[int(i)] for i in rng.integers(0, len(syll), k))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


@dataclass
class _World:
    p: SynthParams
    vocab: np.ndarray  # (T, W) str
    topic_category: np.ndarray  # (T,) str
    topic_weight: np.ndarray  # (T,) how common each topic is among videos
    topic_appeal: np.ndarray  # (T,) everyone's baseline taste
    topic_log_duration: np.ndarray  # (T,)
    country_effect: np.ndarray  # (C, T)
    age_effect: np.ndarray  # (B, T)
    gender_effect: np.ndarray  # (G, T)
    creator_topic: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    creator_lang: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    creator_quality: np.ndarray = field(default_factory=lambda: np.zeros(0))
    creator_size: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _make_world(p: SynthParams, n_creators: int, rng: np.random.Generator) -> _World:
    t = p.n_topics
    words = _make_words(t * p.words_per_topic, rng)
    vocab = np.array(words, dtype=str).reshape(t, p.words_per_topic)
    cats = [CATEGORIES[c] if c < len(CATEGORIES) else f"category{c}"
            for c in range(p.n_categories)]
    topic_category = np.array([cats[i % p.n_categories] for i in range(t)], dtype=str)
    topic_weight = rng.dirichlet(np.full(t, 2.0))
    f = p.feature_scale / np.sqrt(3.0)
    w = _World(
        p=p, vocab=vocab, topic_category=topic_category, topic_weight=topic_weight,
        topic_appeal=rng.normal(0.0, p.topic_appeal_scale, t),
        topic_log_duration=np.log(300.0) + rng.normal(0.0, 0.6, t),
        country_effect=rng.normal(0.0, f, (len(COUNTRIES), t)),
        age_effect=rng.normal(0.0, f, (len(AGE_EDGES) + 1, t)),
        gender_effect=rng.normal(0.0, f, (len(GENDERS), t)),
    )
    w.creator_topic = rng.choice(t, n_creators, p=topic_weight)
    w.creator_lang = rng.choice(len(LANGUAGES), n_creators, p=LANGUAGE_WEIGHT)
    w.creator_quality = rng.normal(0.0, 0.5, n_creators)
    w.creator_size = rng.pareto(1.1, n_creators) + 1.0
    return w


@dataclass
class _Users:
    age: np.ndarray
    country: np.ndarray
    lang: np.ndarray
    gender: np.ndarray
    vec: np.ndarray  # (n, T)


def _make_users(n: int, w: _World, rng: np.random.Generator) -> _Users:
    p = w.p
    country = rng.choice(len(COUNTRIES), n, p=COUNTRY_WEIGHT)
    home = np.array([LANGUAGES.index(COUNTRY_LANGUAGE[c]) for c in range(len(COUNTRIES))])
    en_share = np.array([0.4 if c == "IN" else (1.0 if COUNTRY_LANGUAGE[i] == "en" else 0.15)
                         for i, c in enumerate(COUNTRIES)])
    lang = np.where(rng.random(n) < en_share[country], LANGUAGES.index("en"), home[country])
    age = np.clip(np.round(rng.normal(32.0, 12.0, n)), 13, 80)
    gender = rng.choice(len(GENDERS), n, p=GENDER_WEIGHT)
    bucket = np.searchsorted(np.asarray(AGE_EDGES), age, side="right")
    vec = (w.topic_appeal[None, :] + w.country_effect[country] + w.age_effect[bucket]
           + w.gender_effect[gender] + rng.normal(0.0, p.individual_scale, (n, p.n_topics)))
    return _Users(age=age, country=country, lang=lang, gender=gender, vec=vec)


@dataclass
class _Videos:
    creator: np.ndarray
    primary: np.ndarray
    topics: np.ndarray  # (n, T) mixture
    quality: np.ndarray
    lang: np.ndarray
    duration: np.ndarray
    upload: np.ndarray
    popularity: np.ndarray


def _make_videos(n: int, w: _World, upload: np.ndarray, rng: np.random.Generator) -> _Videos:
    p, t = w.p, w.p.n_topics
    creator = rng.choice(len(w.creator_size), n, p=w.creator_size / w.creator_size.sum())
    off = rng.random(n) >= p.creator_on_topic
    primary = np.where(off, rng.choice(t, n, p=w.topic_weight), w.creator_topic[creator])
    mix = rng.dirichlet(np.full(t, 0.2), n)
    topics = (1.0 - p.primary_topic_weight) * mix
    topics[np.arange(n), primary] += p.primary_topic_weight
    quality = 0.7 * rng.standard_normal(n) + w.creator_quality[creator]
    duration = np.clip(np.round(np.exp(w.topic_log_duration[primary]
                                       + 0.8 * rng.standard_normal(n))), 10, 10_800)
    popularity = (rng.pareto(p.popularity_alpha, n) + 1.0) * np.exp(0.5 * quality)
    return _Videos(creator=creator, primary=primary, topics=topics, quality=quality,
                   lang=w.creator_lang[creator], duration=duration, upload=upload,
                   popularity=popularity)


def _both(a: _Videos, b: _Videos, name: str) -> np.ndarray:
    return np.concatenate((getattr(a, name), getattr(b, name)))


def _ids(prefix: str, n: int, total: int) -> np.ndarray:
    width = max(5, len(str(total)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=str)


def _video_text(v: _Videos, w: _World, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Titles and '|'-joined tags drawn from each video's topics' vocabularies."""
    n, n_words = len(v.primary), w.p.words_per_topic
    max_tags, max_title = 5, 6
    tag_topic = _categorical_rows(v.topics, np.repeat(np.arange(n), max_tags), rng)
    tag_word = w.vocab[tag_topic, rng.integers(0, n_words, n * max_tags)].reshape(n, max_tags)
    n_tags = rng.integers(2, max_tags + 1, n)
    title_word = w.vocab[np.repeat(v.primary, max_title),
                         rng.integers(0, n_words, n * max_title)].reshape(n, max_title)
    filler = np.array(FILLER)[rng.integers(0, len(FILLER), (n, max_title))]
    use_filler = rng.random((n, max_title)) < 0.3
    title_word = np.where(use_filler, filler, title_word)
    n_title = rng.integers(2, max_title + 1, n)
    tags = [schema.TAG_SEPARATOR.join(dict.fromkeys(row[:k])) for row, k in zip(tag_word, n_tags,
                                                                                strict=True)]
    titles = [" ".join(row[:k]).capitalize() for row, k in zip(title_word, n_title, strict=True)]
    return titles, tags


# --- ground truth ---------------------------------------------------------------------


def _language_penalty(p: SynthParams) -> np.ndarray:
    """(user language, video language) -> affinity penalty."""
    n = len(LANGUAGES)
    pen = np.full((n, n), p.language_penalty)
    pen[:, LANGUAGES.index("en")] = p.english_penalty
    pen[np.arange(n), np.arange(n)] = 0.0
    return pen


class GroundTruth:
    """The hidden model behind a synthetic data directory: true preferences and reactions.

    Covers every user and video the generator made, including the `later/` ones.
    """

    def __init__(self, arrays: dict[str, np.ndarray], params: SynthParams,
                 relevance_threshold: float) -> None:
        self.arrays = arrays
        self.params = params
        self.relevance_threshold = relevance_threshold
        self.user_ids: np.ndarray = arrays["user_ids"]
        self.video_ids: np.ndarray = arrays["video_ids"]
        self.user_vec: np.ndarray = arrays["user_vec"]
        self.video_topics: np.ndarray = arrays["video_topics"]
        self.video_quality: np.ndarray = arrays["video_quality"]
        self.video_duration: np.ndarray = arrays["video_duration"]
        self.video_upload_ts: np.ndarray = arrays["video_upload_ts"]
        self.user_lang: np.ndarray = arrays["user_lang"]
        self.video_lang: np.ndarray = arrays["video_lang"]
        self.user_is_later: np.ndarray = arrays["user_is_later"]
        self.video_is_later: np.ndarray = arrays["video_is_later"]
        self._uix = pd.Index(self.user_ids)
        self._vix = pd.Index(self.video_ids)
        self._penalty = _language_penalty(params)

    # persistence
    def save(self, path: Path) -> None:
        meta = {"params": asdict(self.params), "relevance_threshold": self.relevance_threshold}
        contents: dict[str, Any] = {"meta": np.array(json.dumps(meta)), **self.arrays}
        np.savez_compressed(path, **contents)

    @classmethod
    def load(cls, path: Path | str) -> GroundTruth:
        """Load from a generated directory (or the .npz file itself)."""
        path = Path(path)
        if path.is_dir():
            path = path / GROUND_TRUTH_FILE
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "meta"}
            meta = json.loads(str(z["meta"]))
        return cls(arrays, SynthParams(**meta["params"]), float(meta["relevance_threshold"]))

    # lookups
    def user_index(self, user_ids: Sequence[str] | np.ndarray | str) -> np.ndarray:
        return _lookup(self._uix, user_ids, "user")

    def video_index(self, video_ids: Sequence[str] | np.ndarray | str) -> np.ndarray:
        return _lookup(self._vix, video_ids, "video")

    # preferences
    def _affinity_ix(self, ui: np.ndarray, vi: np.ndarray) -> np.ndarray:
        out = np.empty(len(ui))
        step = 200_000
        for a in range(0, len(ui), step):
            u, v = ui[a:a + step], vi[a:a + step]
            out[a:a + step] = (np.einsum("ij,ij->i", self.user_vec[u], self.video_topics[v])
                               + self.params.quality_weight * self.video_quality[v]
                               - self._penalty[self.user_lang[u], self.video_lang[v]])
        return out

    def affinity(self, user_ids: Sequence[str] | np.ndarray | str,
                 video_ids: Sequence[str] | np.ndarray | str) -> np.ndarray:
        """True preference of each (user, video) pair; a single id broadcasts."""
        ui, vi = np.broadcast_arrays(self.user_index(user_ids), self.video_index(video_ids))
        return self._affinity_ix(ui.ravel(), vi.ravel()).reshape(ui.shape)

    def affinity_matrix(self, user_ids: Sequence[str] | np.ndarray,
                        video_ids: Sequence[str] | np.ndarray | None = None) -> np.ndarray:
        """(users x videos) true preferences; videos default to every video."""
        ui = self.user_index(user_ids)
        vi = np.arange(len(self.video_ids)) if video_ids is None else self.video_index(video_ids)
        return (self.user_vec[ui] @ self.video_topics[vi].T
                + self.params.quality_weight * self.video_quality[vi][None, :]
                - self._penalty[self.user_lang[ui][:, None], self.video_lang[vi][None, :]])

    def relevant(self, user_id: str, threshold: float | None = None,
                 video_ids: Sequence[str] | np.ndarray | None = None) -> set[str]:
        """Videos whose true affinity for the user reaches threshold (default: the
        generation-time `relevant_quantile` of all pairs). video_ids restricts the pool,
        e.g. to the main catalogue."""
        pool = self.video_ids if video_ids is None else np.asarray(video_ids, dtype=str)
        aff = self.affinity_matrix([user_id], pool)[0]
        thr = self.relevance_threshold if threshold is None else threshold
        return set(pool[aff >= thr].tolist())

    def relevant_matrix(self, user_ids: Sequence[str] | np.ndarray, threshold: float | None = None,
                        video_ids: Sequence[str] | np.ndarray | None = None) -> np.ndarray:
        """Boolean (users x videos) relevance, videos in `video_ids` order (default all)."""
        thr = self.relevance_threshold if threshold is None else threshold
        return self.affinity_matrix(user_ids, video_ids) >= thr

    def respond(self, user_id: str, video_ids: Sequence[str], rng: np.random.Generator,
                now: float | None = None) -> list[tuple[str, str, float | None]]:
        """Simulate the user's reaction to a shown list (position = list order).

        Returns an impression per video, then per video in order its click, watch (value =
        watched fraction), skip, like / dislike and share, as (video_id, event, value) with
        value None except for watch. `now` (unix s, default the end of the main window)
        sets video freshness. Unknown ids raise KeyError.
        """
        vids = list(video_ids)
        if not vids:
            return []
        vi = self.video_index(vids)
        ui = np.full(len(vi), self.user_index(user_id)[0])
        t_now = float(self.params.t_end if now is None else now)
        age_days = (t_now - self.video_upload_ts[vi]) / DAY
        r = _react(self._affinity_ix(ui, vi), np.arange(len(vi)), self.video_duration[vi],
                   age_days, rng, self.params)
        out: list[tuple[str, str, float | None]] = [(v, "impression", None) for v in vids]
        for k, v in enumerate(vids):
            if not r.clicked[k]:
                continue
            out.append((v, "click", None))
            out.append((v, "watch", float(r.frac[k])))
            if r.skip[k]:
                out.append((v, "skip", None))
            if r.like[k]:
                out.append((v, "like", None))
            if r.dislike[k]:
                out.append((v, "dislike", None))
            if r.share[k]:
                out.append((v, "share", None))
        return out


def _lookup(index: pd.Index, ids: Sequence[str] | np.ndarray | str, what: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(ids, dtype=str))
    ix = index.get_indexer(arr)
    if (ix < 0).any():
        missing = arr[ix < 0][:5].tolist()
        raise KeyError(f"unknown {what} id(s) in ground truth: {missing}")
    return ix


# --- generation -----------------------------------------------------------------------


def _slates(n_users: int, activity: np.ndarray, join: np.ndarray, mean_slates: float,
            p: SynthParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """-> (user of each slate, start time of each slate)."""
    n_slates = np.maximum(1, rng.poisson(activity * mean_slates))
    user = np.repeat(np.arange(n_users), n_slates)
    t_last = p.t_end - 6 * 3600  # leave room for watches to finish inside the window
    t = join[user] + rng.random(len(user)) * (t_last - join[user])
    return user, np.floor(t)


def _solve_mean_slates(activity: np.ndarray, target: float) -> float:
    """m with mean(E[max(1, Poisson(activity * m))]) = target (every user gets a slate)."""
    lo, hi = 0.0, max(target, 1.0) * 2.0
    for _ in range(50):
        m = (lo + hi) / 2
        lam = activity * m
        if (lam + np.exp(-lam)).mean() < target:
            lo = m
        else:
            hi = m
    return (lo + hi) / 2


def _impressions(s_user: np.ndarray, s_time: np.ndarray, users: _Users, w: _World,
                 samplers: dict[str, _BlockSampler], rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fill each slate's slots -> (user, video, position, time) per impression."""
    p = w.p
    k = p.slate_size
    n = len(s_user) * k
    user = np.repeat(s_user, k)
    t = np.repeat(s_time, k)
    pos = np.tile(np.arange(k), len(s_user))
    by_topic = rng.random(n) < p.topic_source_share
    recent = rng.random(n) < p.recency_source_share
    z = users.vec / p.topic_temperature
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    topic = _categorical_rows(probs, user, rng)
    video = np.empty(n, dtype=np.int64)
    for rec, name in ((False, "pop"), (True, "rec")):
        sel_t = np.flatnonzero(by_topic & (recent == rec))
        v, ok = samplers[f"topic_{name}"].sample(topic[sel_t], t[sel_t], rng)
        video[sel_t] = v
        glob = np.concatenate((np.flatnonzero(~by_topic & (recent == rec)), sel_t[~ok]))
        v, _ = samplers[f"all_{name}"].sample(np.zeros(len(glob), dtype=np.int64), t[glob], rng)
        video[glob] = v
    # One slot per video in a slate: a feed does not show the same video twice at once.
    slate = np.repeat(np.arange(len(s_user), dtype=np.int64), k)
    key = slate * (int(video.max(initial=0)) + 1) + video
    _, first = np.unique(key, return_index=True)
    keep = np.sort(first)
    return user[keep], video[keep], pos[keep], t[keep]


def _events(user: np.ndarray, video: np.ndarray, pos: np.ndarray, t: np.ndarray,
            r: _Reactions, duration: np.ndarray, t_max: int) -> pd.DataFrame:
    """Reactions -> event rows (int index columns), sorted by time."""
    c = np.flatnonzero(r.clicked)
    t_click = t[c] + pos[c] + np.round(r.click_delay[c])
    t_done = t_click + np.round(r.frac[c] * duration[video[c]])
    parts = [
        (np.arange(len(user)), t + pos, 0, np.nan),
        (c, t_click, 1, np.nan),
        (c, t_done, 2, r.frac[c]),
    ]
    for code, mask in ((6, r.skip), (3, r.like), (4, r.dislike), (5, r.share)):
        sel = np.flatnonzero(mask[c])
        parts.append((c[sel], t_done[sel] + 5, code, np.nan))
    idx = np.concatenate([q[0] for q in parts])
    ts = np.concatenate([np.asarray(q[1], dtype=np.float64) for q in parts])
    ev = np.concatenate([np.full(len(q[0]), q[2], dtype=np.int8) for q in parts])
    val = np.concatenate([np.broadcast_to(np.asarray(q[3], dtype=np.float64), len(q[0]))
                          for q in parts])
    order = np.argsort(ts, kind="stable")
    return pd.DataFrame({"u": user[idx][order], "v": video[idx][order],
                         "timestamp": np.minimum(ts[order], t_max).astype(np.int64),
                         "e": ev[order], "value": val[order]})


_EVENT_CODES = np.array(["impression", "click", "watch", "like", "dislike", "share", "skip"])


def generate(out: Path | str, users: int, videos: int, seed: int,
             interactions_per_user: float = 60.0, new_users: int = 0, new_videos: int = 0,
             params: SynthParams | None = None) -> Dataset:
    """Write a synthetic data directory with its ground truth to out; return it loaded.

    interactions_per_user is the mean number of interaction rows (all event types) per
    user; activity is heavy-tailed, so some users have a handful and some hundreds.
    Deterministic per seed; the main data does not depend on new_users / new_videos.
    """
    if users < 1 or videos < 1:
        raise ValueError("need at least one user and one video")
    p = params or SynthParams()
    out = Path(out)
    t0 = time.perf_counter()
    (rng_world, rng_u, rng_v, rng_act, rng_exp, rng_react, rng_later, rng_pilot,
     rng_sample) = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(9))

    n_creators = max(2, int(round(videos / p.videos_per_creator)))
    w = _make_world(p, n_creators, rng_world)
    total_u, total_v = users + new_users, videos + new_videos

    # users (later ones from their own stream, so the main data ignores their number)
    main_u = _make_users(users, w, rng_u)
    later_u = _make_users(new_users, w, rng_later)
    # videos: half back catalogue, half uploaded during the window; later ones after it
    back = rng_v.random(videos) < p.back_catalog_share
    back[0] = True  # something is always available to show
    upload = np.where(back, p.t_start - rng_v.random(videos) * p.catalog_days * DAY,
                      p.t_start + rng_v.random(videos) * p.window_days * DAY).round()
    main_v = _make_videos(videos, w, upload, rng_v)
    later_upload = (p.t_end + rng_later.random(new_videos) * p.later_days * DAY).round()
    later_v = _make_videos(new_videos, w, later_upload, rng_later)
    titles, tags = _video_text(main_v, w, rng_v)
    later_titles, later_tags = _video_text(later_v, w, rng_later)

    user_ids, video_ids = _ids("u", total_u, total_u), _ids("v", total_v, total_v)
    creator_ids = _ids("c", n_creators, n_creators)
    uvec = np.concatenate((main_u.vec, later_u.vec))
    ulang = np.concatenate((main_u.lang, later_u.lang))
    penalty = _language_penalty(p)

    # exposure machinery over the main catalogue
    rec_w = np.exp((main_v.upload - p.t_end) / (p.recency_tau_days * DAY))
    samplers = {
        "topic_pop": _BlockSampler(main_v.primary, main_v.upload, main_v.popularity,
                                   p.n_topics),
        "topic_rec": _BlockSampler(main_v.primary, main_v.upload, main_v.popularity * rec_w,
                                   p.n_topics),
        "all_pop": _BlockSampler(np.zeros(videos, dtype=np.int64), main_v.upload,
                                 main_v.popularity, 1),
        "all_rec": _BlockSampler(np.zeros(videos, dtype=np.int64), main_v.upload,
                                 main_v.popularity * rec_w, 1),
    }

    def affinity(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (np.einsum("ij,ij->i", main_u.vec[u], main_v.topics[v])
                + p.quality_weight * main_v.quality[v] - penalty[main_u.lang[u], main_v.lang[v]])

    def react(u: np.ndarray, v: np.ndarray, pos: np.ndarray, t: np.ndarray,
              rng: np.random.Generator) -> _Reactions:
        age_days = (t - main_v.upload[v]) / DAY
        return _react(affinity(u, v), pos, main_v.duration[v], age_days, rng, p)

    activity = rng_act.lognormal(0.0, p.activity_sigma, users)
    activity /= activity.mean()
    joins_late = rng_act.random(users) < p.new_user_join_share
    join = np.where(joins_late,
                    p.t_start + rng_act.random(users) * 0.8 * p.window_days * DAY, p.t_start)

    # Pilot: rows per slate under this world, to hit interactions_per_user.
    pu = rng_pilot.choice(users, 2000, p=activity / activity.sum())
    pt = np.floor(join[pu] + rng_pilot.random(2000) * (p.t_end - 6 * 3600 - join[pu]))
    iu, iv, ipos, it = _impressions(pu, pt, main_u, w, samplers, rng_pilot)
    r = react(iu, iv, ipos, it, rng_pilot)
    rows_per_slate = (len(iu) + r.clicked.sum() * 2 + r.skip.sum() + r.like.sum()
                      + r.dislike.sum() + r.share.sum()) / len(pu)
    mean_slates = _solve_mean_slates(activity, interactions_per_user / rows_per_slate)
    s_user, s_time = _slates(users, activity, join, mean_slates, p, rng_act)
    iu, iv, ipos, it = _impressions(s_user, s_time, main_u, w, samplers, rng_exp)
    r = react(iu, iv, ipos, it, rng_react)
    ev = _events(iu, iv, ipos, it, r, main_v.duration, p.t_end - 1)
    interactions = pd.DataFrame({
        "user_id": user_ids[ev["u"].to_numpy()], "video_id": video_ids[ev["v"].to_numpy()],
        "timestamp": ev["timestamp"], "event": _EVENT_CODES[ev["e"].to_numpy()],
        "value": ev["value"],
    })

    def user_frame(u: _Users, ids: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({
            "user_id": ids, "age": u.age, "gender": np.array(GENDERS)[u.gender],
            "country": np.array(COUNTRIES)[u.country], "language": np.array(LANGUAGES)[u.lang],
        })

    def video_frame(v: _Videos, ids: np.ndarray, titles: list[str], tags: list[str]
                    ) -> pd.DataFrame:
        return pd.DataFrame({
            "video_id": ids, "title": titles, "category": w.topic_category[v.primary],
            "tags": tags, "creator_id": creator_ids[v.creator],
            "language": np.array(LANGUAGES)[v.lang], "duration_s": v.duration,
            "upload_ts": v.upload,
        })

    main = Dataset(videos=video_frame(main_v, video_ids[:videos], titles, tags),
                   users=user_frame(main_u, user_ids[:users]), interactions=interactions)
    write_dataset(main, out)
    if new_users or new_videos:
        later = out / LATER_DIR
        later.mkdir(parents=True, exist_ok=True)
        write_table(user_frame(later_u, user_ids[users:]), later / schema.USERS_FILE)
        write_table(video_frame(later_v, video_ids[videos:], later_titles, later_tags),
                    later / schema.VIDEOS_FILE)

    # Ground truth, with the default relevance threshold from a sample of all pairs.
    arrays = {
        "user_ids": user_ids, "video_ids": video_ids, "creator_ids": creator_ids,
        "user_vec": uvec, "user_lang": ulang,
        "user_is_later": np.arange(total_u) >= users,
        **{f"video_{name}": _both(main_v, later_v, attr) for name, attr in (
            ("topics", "topics"), ("quality", "quality"), ("lang", "lang"),
            ("duration", "duration"), ("upload_ts", "upload"), ("popularity", "popularity"),
            ("primary_topic", "primary"), ("creator", "creator"))},
        "video_is_later": np.arange(total_v) >= videos,
        "topic_vocab": w.vocab, "topic_category": w.topic_category,
        "topic_appeal": w.topic_appeal, "country_effect": w.country_effect,
        "age_effect": w.age_effect, "gender_effect": w.gender_effect,
        "languages": np.array(LANGUAGES), "countries": np.array(COUNTRIES),
        "genders": np.array(GENDERS), "age_edges": np.array(AGE_EDGES),
    }
    gt = GroundTruth(arrays, p, 0.0)
    su = rng_sample.integers(0, total_u, 200_000)
    sv = rng_sample.integers(0, total_v, 200_000)
    gt.relevance_threshold = float(np.quantile(gt._affinity_ix(su, sv), p.relevant_quantile))
    gt.save(out / GROUND_TRUTH_FILE)

    ds = load_dataset(out)
    logger.info("generated %s: %d users, %d videos, %d interactions (+%d later users, "
                "+%d later videos) in %.1fs", out, users, videos, len(ds.interactions),
                new_users, new_videos, time.perf_counter() - t0)
    return ds
