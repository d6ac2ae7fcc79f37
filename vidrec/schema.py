"""The one place for column names, feature names, event types and Redis keys.

Training and serving both import from here so that the features a model was trained on
are exactly the features it is served with (training/serving skew is the classic
recommender bug). A model's manifest stores `schema_hash()` and serving refuses a
model whose hash differs from its own.
"""

from __future__ import annotations

import hashlib
import json

# --- data directory contract (DESIGN.md §7) -------------------------------------------

VIDEOS_FILE = "videos.csv"
USERS_FILE = "users.csv"
INTERACTIONS_FILE = "interactions.csv"

VIDEO_ID = "video_id"
USER_ID = "user_id"

# Known optional columns and their kind; any other column is a feature inferred as
# categorical (strings) or numeric (numbers).
VIDEO_COLUMNS: dict[str, str] = {
    "title": "text",
    "category": "categorical",
    "tags": "multi",  # '|'-separated
    "creator_id": "categorical",
    "language": "categorical",
    "duration_s": "numeric",
    "upload_ts": "numeric",
}
USER_COLUMNS: dict[str, str] = {
    "age": "numeric",
    "gender": "categorical",
    "country": "categorical",
    "language": "categorical",
    "occupation": "categorical",
}
INTERACTION_COLUMNS = ("user_id", "video_id", "timestamp", "event", "value")

EVENT_TYPES = ("impression", "click", "watch", "like", "dislike", "share", "skip", "rating")
TAG_SEPARATOR = "|"

# --- model features -------------------------------------------------------------------

# Categorical user features fed to the user tower (missing -> "<unk>").
USER_CAT_FEATURES = ("gender", "country", "language", "occupation", "age_bucket", "zip_prefix")
# Age buckets (upper bounds, years) for the age_bucket feature.
AGE_BUCKETS = (18, 25, 35, 45, 50, 56, 200)
# Categorical video features fed to the video tower.
VIDEO_CAT_FEATURES = ("category", "creator_id", "language")
VIDEO_MULTI_FEATURES = ("tags", "title_tokens")
VIDEO_NUM_FEATURES = ("log_duration", "age_years")
UNKNOWN = "<unk>"
# Recent history length used by the user tower and kept in Redis.
HISTORY_LEN = 50
# Videos a user said no to, kept in Redis (the reranker reads them).
NEGATIVES_LEN = 200
MAX_TITLE_TOKENS = 12


def age_bucket(age: float | None) -> str:
    """Bucket an age so that the user tower sees a categorical, robust feature."""
    if age is None or age != age or age <= 0:
        return UNKNOWN
    for upper in AGE_BUCKETS:
        if age < upper:
            return f"<{upper}"
    return UNKNOWN


def schema_hash() -> str:
    """Hash of every feature definition above; changes when the feature contract does."""
    spec = {
        "user_cat": USER_CAT_FEATURES,
        "age_buckets": AGE_BUCKETS,
        "video_cat": VIDEO_CAT_FEATURES,
        "video_multi": VIDEO_MULTI_FEATURES,
        "video_num": VIDEO_NUM_FEATURES,
        "history_len": HISTORY_LEN,
        "title_tokens": MAX_TITLE_TOKENS,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


# --- Kafka topics ---------------------------------------------------------------------

TOPIC_EVENTS = "vidrec.events"
TOPIC_EVENTS_DLQ = "vidrec.events.dlq"
TOPIC_MODELS = "vidrec.models"
TOPIC_VIDEOS = "vidrec.videos"

# --- Redis keys -----------------------------------------------------------------------


class Keys:
    """Redis key builders; `prefix` namespaces a deployment (tests use a random one).

    Every key of a user shares the hash tag {user_id}, so one user's keys live in one
    Redis Cluster slot. Which keys are global, and which operations touch several users'
    keys at once, is written down in docs/redis.md.
    """

    def __init__(self, prefix: str = "vidrec") -> None:
        self.prefix = prefix

    # --- per user (one slot each) ---

    def user_root(self, user_id: str) -> str:
        """The common stem of a user's keys (the apply script appends the suffixes)."""
        return f"{self.prefix}:user:{{{user_id}}}"

    def user_profile(self, user_id: str) -> str:
        return f"{self.user_root(user_id)}:profile"

    def user_history(self, user_id: str) -> str:
        """Capped list of positively engaged video ids, by first positive, latest first."""
        return f"{self.user_root(user_id)}:history"

    def user_seen(self, user_id: str) -> str:
        """Set of every video the user interacted with beyond an impression (seen filter)."""
        return f"{self.user_root(user_id)}:seen"

    def user_negatives(self, user_id: str) -> str:
        """Capped list of videos the user said no to (dislike, skip, low rating)."""
        return f"{self.user_root(user_id)}:neg"

    def user_feedback(self, user_id: str) -> str:
        """Hash of the user's summed feedback per video (the MF row; store/apply.py)."""
        return f"{self.user_root(user_id)}:fb"

    def user_vector(self, user_id: str) -> str:
        """Hash version -> float32 bytes of the freshest folded-in user vector."""
        return f"{self.user_root(user_id)}:vec"

    # --- per video ---

    def video_features(self, video_id: str) -> str:
        return f"{self.prefix}:video:{video_id}"

    # --- global ---

    def popular(self) -> str:
        return f"{self.prefix}:list:popular"

    def fresh(self) -> str:
        return f"{self.prefix}:list:fresh"

    def trending(self) -> str:
        """Sorted set of forward-decayed positive counts per video (store/trending.py)."""
        return f"{self.prefix}:trending"

    def trending_ref(self) -> str:
        return f"{self.prefix}:trending:ref"

    def processed_events(self, bucket: int | None = None) -> str:
        """Set of event ids applied in one arrival bucket (`None`: the stem; apply.py)."""
        stem = f"{self.prefix}:events:done"
        return stem if bucket is None else f"{stem}:{bucket}"

    def applied_offsets(self) -> str:
        """Hash "topic:partition" -> highest Kafka offset applied (exactly-once)."""
        return f"{self.prefix}:trainer:offsets"

    def dirty_users(self) -> str:
        """Set of users with events not yet folded into their MF vector."""
        return f"{self.prefix}:trainer:dirty"

    def trainer_heartbeat(self, replica: str = "") -> str:
        """The latest beat of any trainer; with `replica`, that replica's own."""
        stem = f"{self.prefix}:trainer:heartbeat"
        return f"{stem}:{replica}" if replica else stem

    def counters(self, model_version: str, arm: str) -> str:
        return f"{self.prefix}:stats:{model_version}:{arm}"

    def stats_index(self) -> str:
        return f"{self.prefix}:stats:index"

    def serving_version(self) -> str:
        return f"{self.prefix}:serving:version"

    # --- Redis Cluster only (store/cluster_apply.py; docs/redis.md "Redis Cluster") ---
    # A single Redis keeps the keys above; a cluster keeps per-user marks in the user's
    # slot and the global state in shards, one per Kafka partition, merged on read.

    def user_positions(self, user_id: str) -> str:
        """Hash "LOG/topic:partition" -> highest offset applied for this user (and "@t")."""
        return f"{self.user_root(user_id)}:pos"

    def user_done(self, user_id: str, bucket: int) -> str:
        """Set of this user's event ids applied in one arrival bucket (client resends)."""
        return f"{self.user_root(user_id)}:done:{bucket}"

    def user_outbox(self, user_id: str) -> str:
        """Hash "LOG/topic:partition|offset" -> the global deltas of one applied event, until
        its partition shard has applied them (step B)."""
        return f"{self.user_root(user_id)}:outbox"

    def user_moments(self, user_id: str, model_version: str, arm: str) -> str:
        """The user's packed ratio counts in an arm (the single layout's counters:u:U)."""
        return f"{self.user_root(user_id)}:stats:{model_version}:{arm}"

    def shard_root(self, shard: str) -> str:
        """The stem of one shard's keys; `shard` is "topic:partition" ("-": events that
        came without a Kafka position). The apply scripts append the suffixes."""
        return f"{self.prefix}:shard:{{p:{shard}}}"

    def shard_offsets(self, shard: str) -> str:
        return f"{self.shard_root(shard)}:offsets"

    def shard_trending(self, shard: str) -> str:
        return f"{self.shard_root(shard)}:trending"

    def shard_trending_ref(self, shard: str) -> str:
        return f"{self.shard_root(shard)}:trending:ref"

    def shard_counters(self, shard: str, model_version: str, arm: str) -> str:
        return f"{self.shard_root(shard)}:stats:{model_version}:{arm}"

    def shard_stats_index(self, shard: str) -> str:
        return f"{self.shard_root(shard)}:stats:index"

    def shard_dirty(self, shard: str) -> str:
        return f"{self.shard_root(shard)}:dirty"

    def shards(self) -> str:
        """Set of every shard name written so far (readers merge over them)."""
        return f"{self.prefix}:shards"

    def trainer_lease(self) -> str:
        """The retrain lease (store/lease.py): holder and fencing token share a slot."""
        return f"{self.prefix}:trainer:{{lease}}"

    def trainer_lease_counter(self) -> str:
        return f"{self.prefix}:trainer:{{lease}}:token"

    def trainer_lease_fence(self) -> str:
        """The highest token that passed the publish fence."""
        return f"{self.prefix}:trainer:{{lease}}:fence"
