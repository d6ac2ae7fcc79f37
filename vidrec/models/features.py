"""Feature encoding shared by training and serving: vocabularies, video and user tensors.

The encoder is fitted once at training time, saved in the artifact (vocab.json) and
reloaded by serving, so a category or creator maps to the same embedding row in both.
Index 0 of every vocabulary means unknown/padding: a new creator or a new video id falls
back to the content features the tower has seen.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidrec import schema

YEAR_S = 365.25 * 86400
_TOKEN = re.compile(r"[a-z0-9]+")


def title_tokens(title: str) -> list[str]:
    return _TOKEN.findall(str(title).lower())[: schema.MAX_TITLE_TOKENS]


def zip_prefix(raw: Any) -> str:
    s = str(raw or "").strip()
    return s[:1] if s and s[:1].isalnum() else schema.UNKNOWN


def profile_features(profile: Mapping[str, Any]) -> dict[str, str]:
    """Raw profile (users.csv row, Redis hash or proto) -> the user tower's categorical values."""
    age = profile.get("age")
    try:
        age_f = float(age) if age not in (None, "") else None
    except (TypeError, ValueError):
        age_f = None
    out = {
        "gender": str(profile.get("gender") or ""),
        "country": str(profile.get("country") or ""),
        "language": str(profile.get("language") or ""),
        "occupation": str(profile.get("occupation") or ""),
        "age_bucket": schema.age_bucket(age_f),
        "zip_prefix": zip_prefix(profile.get("zip")),
    }
    return {k: (v if v else schema.UNKNOWN) for k, v in out.items()}


@dataclass
class VideoTensors:
    """Encoded video features, row i = video index i of the encoder's catalog."""

    ids: np.ndarray  # (n,) int64, 0 = unknown id (content only)
    cats: np.ndarray  # (n, len(VIDEO_CAT_FEATURES)) int64
    tags: np.ndarray  # (n, MAX_TAGS) int64, 0-padded
    title: np.ndarray  # (n, MAX_TITLE_TOKENS) int64, 0-padded
    nums: np.ndarray  # (n, len(VIDEO_NUM_FEATURES)) float32


MAX_TAGS = 8


def _vocab(values: Iterable[str], min_count: int = 1) -> dict[str, int]:
    counts = Counter(v for v in values if v and v != schema.UNKNOWN)
    kept = sorted(v for v, c in counts.items() if c >= min_count)
    return {v: i + 1 for i, v in enumerate(kept)}


class FeatureEncoder:
    def __init__(self, vocabs: dict[str, dict[str, int]], video_ids: list[str],
                 ref_ts: float, duration_mean: float, duration_std: float) -> None:
        self.vocabs = vocabs
        self.video_ids = list(video_ids)
        # Index 0 is "unknown video"; catalog video i has id index i + 1.
        self.video_index = {v: i for i, v in enumerate(self.video_ids)}
        self.ref_ts = ref_ts
        self.duration_mean = duration_mean
        self.duration_std = duration_std

    # --- fitting and persistence -------------------------------------------------------

    @classmethod
    def fit(cls, videos: pd.DataFrame, users: pd.DataFrame, ref_ts: float) -> FeatureEncoder:
        vocabs: dict[str, dict[str, int]] = {}
        for name in schema.VIDEO_CAT_FEATURES:
            col = videos[name] if name in videos else pd.Series([], dtype=str)
            vocabs["video." + name] = _vocab(col.astype(str))
        tags = videos["tags"] if "tags" in videos else pd.Series([], dtype=str)
        vocabs["video.tags"] = _vocab(
            t for s in tags.astype(str) for t in s.split(schema.TAG_SEPARATOR)
        )
        titles = videos["title"] if "title" in videos else pd.Series([], dtype=str)
        vocabs["video.title_tokens"] = _vocab(
            (t for s in titles.astype(str) for t in title_tokens(s)), min_count=2
        )
        profiles = [profile_features(r) for r in users.to_dict("records")]
        for name in schema.USER_CAT_FEATURES:
            vocabs["user." + name] = _vocab(p[name] for p in profiles)
        dur = pd.to_numeric(videos["duration_s"], errors="coerce") if (
            "duration_s" in videos) else pd.Series([], dtype=float)
        logd = np.log1p(dur.dropna().to_numpy())
        mean = float(logd.mean()) if len(logd) else 0.0
        std = float(logd.std()) if len(logd) > 1 and logd.std() > 0 else 1.0
        return cls(vocabs, [str(v) for v in videos["video_id"]], ref_ts, mean, std)

    def to_json(self) -> dict:
        return {
            "vocabs": self.vocabs,
            "video_ids": self.video_ids,
            "ref_ts": self.ref_ts,
            "duration_mean": self.duration_mean,
            "duration_std": self.duration_std,
            "schema_hash": schema.schema_hash(),
        }

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> FeatureEncoder:
        d = json.loads(path.read_text())
        if d.get("schema_hash") != schema.schema_hash():
            raise ValueError(
                f"{path}: feature schema {d.get('schema_hash')} != this code's "
                f"{schema.schema_hash()}; retrain the model"
            )
        return cls(d["vocabs"], d["video_ids"], d["ref_ts"], d["duration_mean"],
                   d["duration_std"])

    def sizes(self) -> dict[str, int]:
        """Embedding table sizes (vocabulary + 1 for index 0)."""
        out = {k: len(v) + 1 for k, v in self.vocabs.items()}
        out["video.id"] = len(self.video_ids) + 1
        return out

    # --- encoding ----------------------------------------------------------------------

    def encode_videos(self, rows: Sequence[Mapping[str, Any]], known_ids: bool = True
                      ) -> VideoTensors:
        """Encode video records (videos.csv rows, Redis hashes or VideoUpserted dicts).

        `known_ids=False` zeroes the id feature: the content-only vector of a video.
        """
        n = len(rows)
        ids = np.zeros(n, dtype=np.int64)
        cats = np.zeros((n, len(schema.VIDEO_CAT_FEATURES)), dtype=np.int64)
        tags = np.zeros((n, MAX_TAGS), dtype=np.int64)
        title = np.zeros((n, schema.MAX_TITLE_TOKENS), dtype=np.int64)
        nums = np.zeros((n, len(schema.VIDEO_NUM_FEATURES)), dtype=np.float32)
        tag_vocab = self.vocabs["video.tags"]
        tok_vocab = self.vocabs["video.title_tokens"]
        for i, r in enumerate(rows):
            if known_ids:
                idx = self.video_index.get(str(r.get("video_id")))
                ids[i] = 0 if idx is None else idx + 1
            for j, name in enumerate(schema.VIDEO_CAT_FEATURES):
                cats[i, j] = self.vocabs["video." + name].get(str(r.get(name) or ""), 0)
            raw_tags = r.get("tags") or ""
            tag_list = raw_tags if isinstance(raw_tags, list) else str(raw_tags).split(
                schema.TAG_SEPARATOR)
            t = [tag_vocab.get(x, 0) for x in tag_list][:MAX_TAGS]
            tags[i, : len(t)] = t
            k = [tok_vocab.get(x, 0) for x in title_tokens(r.get("title") or "")]
            title[i, : len(k)] = k
            nums[i] = self._nums(r)
        return VideoTensors(ids, cats, tags, title, nums)

    def _nums(self, r: Mapping[str, Any]) -> tuple[float, float]:
        d = _to_float(r.get("duration_s"))
        up = _to_float(r.get("upload_ts"))
        logd = 0.0 if d is None else (math.log1p(max(d, 0.0)) - self.duration_mean) / (
            self.duration_std)
        age = 0.0 if up is None else max(0.0, (self.ref_ts - up) / YEAR_S)
        return (float(np.clip(logd, -5, 5)), float(min(age, 50.0) / 10.0))

    def encode_users(self, profiles: Sequence[Mapping[str, Any]]) -> np.ndarray:
        out = np.zeros((len(profiles), len(schema.USER_CAT_FEATURES)), dtype=np.int64)
        for i, p in enumerate(profiles):
            feats = profile_features(p)
            for j, name in enumerate(schema.USER_CAT_FEATURES):
                out[i, j] = self.vocabs["user." + name].get(feats[name], 0)
        return out

    def encode_history(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """Video id lists (most recent first) -> (n, HISTORY_LEN) id indices, 0-padded."""
        out = np.zeros((len(histories), schema.HISTORY_LEN), dtype=np.int64)
        for i, h in enumerate(histories):
            idx = [self.video_index[v] + 1 for v in h if v in self.video_index]
            idx = idx[: schema.HISTORY_LEN]
            out[i, : len(idx)] = idx
        return out


def _to_float(x: Any) -> float | None:
    if x is None or x == "":
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else f
