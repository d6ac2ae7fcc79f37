"""The seconds tier's write: apply a batch of events to Redis, exactly once per event id.

One atomic server-side script per batch holds every effect *and* the event ids it
applied, so a trainer killed at any point either applied a batch completely (its ids are
then found and skipped on redelivery) or not at all. The caller commits Kafka offsets only
after the script returns. What each event means comes from the event contract
(vidrec/events.py); the script only adds what needs Redis state: a rating's kind is
judged against the user's ratings so far, which live in the user's feedback hash.

Keys the script touches (docs/redis.md): per user (history, negatives, seen, feedback
hash), and global ones (processed-id buckets, dirty users, trending set and its reference
time, per-arm counters and their index). The global ones make one call span several hash
slots, so this script cannot run on Redis Cluster as it is.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

from vidrec import events as ev
from vidrec import schema
from vidrec.v1 import events_pb2

E = events_pb2
PROCESSED_TTL_S = 7 * 86400
# A trending weight from a clock ahead of ours must not outweigh everything.
TRENDING_CLOCK_AHEAD_S = 60.0


@dataclass
class ApplyResult:
    applied: list[events_pb2.Event] = field(default_factory=list)
    duplicates: int = 0
    unknown_video: list[events_pb2.Event] = field(default_factory=list)


# One server-side script per batch: Redis runs a script atomically (nothing else runs in
# between, and a killed client cannot leave half of it applied), which gives the same
# exactly-once guarantee as MULTI/EXEC, but the client sends a few strings per event
# instead of ~10 encoded commands: redis-py's per-command cost was the bottleneck
# (measured 12.5k events/s with a pipeline).
#
# History and negatives keep each video at the place of its first positive (negative)
# event, as offline training orders them (vidrec.training.pipeline.positives). A positive
# counts towards trending only if the video was not in the user's history already: a
# click, a watch and a like by one user count once, and one client repeating likes cannot
# lift a video alone. The feedback hash holds, per video, the summed non-rating weights
# (s:<video>) and the ratings (r:<video> sum, n:<video> count), and the user's rating sum
# and count (_rs, _rn): the fold-in rebuilds the user's MF row from it.
_APPLY = """
local n_fields = 14
local hist_len, neg_len, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local dirty, stats_index = ARGV[4], ARGV[5]
local tkey, rkey, hl = ARGV[6], ARGV[7], tonumber(ARGV[8])
local r_base, r_centred = tonumber(ARGV[10]), tonumber(ARGV[11])
local ref = tonumber(redis.call('GET', rkey) or '')
if ref == nil then
  ref = tonumber(ARGV[9])
  redis.call('SET', rkey, ARGV[9])
end
local applied, dup, unknown = {}, 0, {}
local batch = {}
for i = 12, #ARGV, n_fields do
  local eid, pk, vkey, kind = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
  local ukey, uid, ck, member = ARGV[i+4], ARGV[i+5], ARGV[i+6], ARGV[i+7]
  local cf, comp, wt, vid = ARGV[i+8], ARGV[i+9], ARGV[i+10], ARGV[i+11]
  local ts, w = ARGV[i+12], ARGV[i+13]
  if batch[pk .. eid] or redis.call('SISMEMBER', pk, eid) == 1 then
    dup = dup + 1
  elseif redis.call('EXISTS', vkey) == 0 then
    table.insert(unknown, eid)
  else
    batch[pk .. eid] = true
    if kind ~= 'e' then
      local fb = ukey .. ':fb'
      if kind == 'r' then
        local r = tonumber(w)
        redis.call('HINCRBYFLOAT', fb, 'r:' .. vid, w)
        redis.call('HINCRBY', fb, 'n:' .. vid, 1)
        local rs = tonumber(redis.call('HINCRBYFLOAT', fb, '_rs', w))
        local rn = redis.call('HINCRBY', fb, '_rn', 1)
        local rw = r_base + r_centred * (r - rs / rn)
        if rw > 0 then kind = 'p' elseif rw < 0 then kind = 'n' else kind = 's' end
      else
        redis.call('HINCRBYFLOAT', fb, 's:' .. vid, w)
      end
      redis.call('SADD', dirty, uid)
      redis.call('SADD', ukey .. ':seen', vid)
    end
    if kind == 'p' or kind == 'n' then
      local lkey = ukey .. (kind == 'p' and ':history' or ':neg')
      if not redis.call('LPOS', lkey, vid) then
        redis.call('LPUSH', lkey, vid)
        redis.call('LTRIM', lkey, 0, (kind == 'p' and hist_len or neg_len) - 1)
        if kind == 'p' then
          redis.call('ZINCRBY', tkey, tostring(2 ^ ((tonumber(ts) - ref) / hl)), vid)
        end
      end
    end
    if cf ~= '' then redis.call('HINCRBY', ck, cf, 1) end
    if comp == '1' then redis.call('HINCRBY', ck, 'completed', 1) end
    if wt ~= '0' then redis.call('HINCRBYFLOAT', ck, 'watch_time_s', wt) end
    redis.call('SADD', stats_index, member)
    redis.call('SADD', pk, eid)
    redis.call('EXPIRE', pk, ttl)
    table.insert(applied, eid)
  end
end
return {applied, dup, unknown}
"""

COUNTER_FIELD = {E.EVENT_TYPE_IMPRESSION: "impressions", E.EVENT_TYPE_CLICK: "clicks",
                 E.EVENT_TYPE_WATCH: "watches", E.EVENT_TYPE_LIKE: "likes",
                 E.EVENT_TYPE_DISLIKE: "dislikes"}
KIND_CODE = {ev.Kind.POSITIVE: "p", ev.Kind.NEGATIVE: "n", ev.Kind.SEEN: "s",
             ev.Kind.EXPOSURE: "e"}


def processed_key(keys: schema.Keys, e: events_pb2.Event) -> str:
    """Ids are bucketed by event hour so old buckets expire; a replay has the same hour."""
    hour = int((e.timestamp or 0) // 3600)
    return f"{keys.processed_events()}:{hour}"


class Applier:
    """Holds the registered script, so a batch costs one EVALSHA."""

    def __init__(self, client: redis.Redis, keys: schema.Keys,
                 weights: ev.FeedbackWeights | None = None) -> None:
        self.keys = keys
        self.weights = weights or ev.FeedbackWeights()
        self._script = client.register_script(_APPLY)

    def apply(self, events: Sequence[events_pb2.Event], hist_len: int, neg_len: int,
              half_life_s: float) -> ApplyResult:
        """Apply every event not applied before (by event id); report duplicates and
        events naming a video the store does not know (those go to the dead-letter topic)."""
        res = ApplyResult()
        if not events:
            return res
        k, w = self.keys, self.weights
        now = time.time()
        args: list[str | int | float] = [
            hist_len, neg_len, PROCESSED_TTL_S, k.dirty_users(), k.stats_index(),
            k.trending(), k.trending_ref(), half_life_s, repr(now), w.rating_base,
            w.rating_centred]
        for e in events:
            name = ev.NAME_OF[e.type]
            if name == "rating":
                code, weight = "r", e.value
            else:
                weight = ev.base_weight(name, e.value, w)
                code = KIND_CODE[ev.kind_of(name, weight)]
            version, arm = e.model_version or "-", e.experiment_arm or "-"
            watch = e.type == E.EVENT_TYPE_WATCH
            args += [e.event_id, processed_key(k, e), k.video_features(e.video_id), code,
                     k.user_root(e.user_id), e.user_id, k.counters(version, arm),
                     f"{version}|{arm}", COUNTER_FIELD.get(e.type, ""),
                     "1" if watch and e.value >= ev.COMPLETE else "0",
                     repr(e.watch_time_s) if watch and e.watch_time_s else "0", e.video_id,
                     repr(min(e.timestamp or now, now + TRENDING_CLOCK_AHEAD_S)), repr(weight)]
        applied, dup, unknown = self._script(args=args)
        done = {_s(x) for x in applied}
        bad = {_s(x) for x in unknown}
        res.duplicates = int(dup)
        res.applied = [e for e in events if e.event_id in done]
        res.unknown_video = [e for e in events if e.event_id in bad]
        return res


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x
