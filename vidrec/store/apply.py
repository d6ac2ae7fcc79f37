"""The seconds tier's write: apply a batch of events to Redis, exactly once.

One atomic server-side script per batch holds every effect *and* the marks of what it
applied, so a trainer killed at any point either applied a batch completely or not at all.
The caller commits Kafka offsets only after the script returns. Two marks make a
redelivered event a duplicate:

- the Kafka position: per partition, the highest offset applied and the latest record
  timestamp up to it (two hash fields per partition, written in the same script): a
  record at or below that offset and no newer than that timestamp is a redelivery after a
  crash or a rebalance, skipped whatever its age. A record at a passed offset but newer
  than everything applied comes from a log that restarted empty (a memory broker
  restarted): it is judged by its event id instead, never silently dropped;
- the event id, for at least DEDUPE_HORIZON_S of server time (sets by arrival bucket that
  expire whole): a client resending an event, with the same id and any timestamp, through
  LogEvents (a new Kafka record) is skipped too.

Memory is constant in total traffic: the offsets are one field per partition, the ids are
what arrived within the horizon (docs/redis.md gives the bytes per id).

What each event means comes from the event contract (vidrec/events.py); the script only
adds what needs Redis state: a rating's kind is judged against the user's ratings so far,
which live in the user's feedback hash. Keys the script touches (docs/redis.md): per user
(history, negatives, seen, feedback) and global ones (applied offsets, remembered ids,
dirty users, trending set and its reference time, per-arm counters and their index). The
global ones make one call span several hash slots: it cannot run on Redis Cluster as is.
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
# An event id is remembered this long (server time) to catch a client resending it; Kafka
# redeliveries are caught at any age by the applied offsets. docs/redis.md: bytes per id.
DEDUPE_HORIZON_S = 3600.0
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
# and count (_rs, _rn), and the time of each video's first event (t:<video>, the MF
# recency rank; a user's events arrive in order, their partition keeps it): the fold-in
# rebuilds the user's MF row from it.
_APPLY = """
local n_fields = 16
local hist_len, neg_len, horizon = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local dirty, stats_index = ARGV[4], ARGV[5]
local tkey, rkey, hl = ARGV[6], ARGV[7], tonumber(ARGV[8])
local now = tonumber(ARGV[9])
local r_base, r_centred = tonumber(ARGV[10]), tonumber(ARGV[11])
local okey, done_stem = ARGV[12], ARGV[13]
-- Per-user moments of the ratio metrics (CTR = clicks / impressions, completion =
-- completed / watches) for intervals with users as the unit (vidrec.abtest.RatioSums).
-- One field per user and ratio in <counters>:u:<user> packs both counts (numerator *
-- 2^26 + denominator), so an event costs one call; the arm's sums of x_u^2 (sq:<field>),
-- x_u y_u (x:<num>:<den>) and its user count are added up here and written once per batch.
local ratio = {impressions = {'ctr', false, 'x:clicks:impressions'},
               clicks = {'ctr', true, 'x:clicks:impressions'},
               watches = {'comp', false, 'x:completed:watches'},
               completed = {'comp', true, 'x:completed:watches'}}
local shift = 67108864
local sums = {}
local function bump(ck, f, by)
  local t = sums[ck]
  if not t then t = {}; sums[ck] = t end
  t[f] = (t[f] or 0) + by
end
local function moment(ck, uid, f)
  local r = ratio[f]
  local ukey, by = ck .. ':u:' .. uid, r[2] and shift or 1
  local v = redis.call('HINCRBY', ukey, r[1], by)
  -- Bounded memory: a user's counts under one version and arm live 30 days from their
  -- first click or watch there (a version is replaced long before; a longer-lived one
  -- counts a user who returns after that as new). Without it the keys grew with users x
  -- versions forever.
  if v == by then redis.call('EXPIRE', ukey, 2592000) end
  local x = math.floor(v / shift)
  local y = v - x * shift
  if r[2] then
    bump(ck, 'sq:' .. f, 2 * x - 1)
    bump(ck, r[3], y)
  else
    bump(ck, 'sq:' .. f, 2 * y - 1)
    bump(ck, r[3], x)
    -- A user enters an arm's readout with their first impression (the gateway logs one
    -- per shown video before any click or watch can follow).
    if y == 1 and f == 'impressions' then bump(ck, 'users', 1) end
  end
end
-- A user moves trending only once they have reacted to this many other videos: a crowd of
-- fresh (fake) users liking one video cannot lift it into everyone's "popular" list.
local min_seen = tonumber(ARGV[14])
-- Applied ids live in sets by arrival bucket (server time / horizon): the current and the
-- previous bucket are checked, so an id is remembered at least `horizon` seconds and at
-- most twice that, and whole buckets expire. (Per-user sets cost 45% more per event:
-- every user's set is a key to create and expire.)
local bucket = math.floor(now / horizon)
local done, done_prev = done_stem .. ':' .. bucket, done_stem .. ':' .. (bucket - 1)
redis.call('SADD', done, '')
redis.call('EXPIRE', done, 2 * math.ceil(horizon) + 60)
local ref = tonumber(redis.call('GET', rkey) or '')
if ref == nil then
  ref = now
  redis.call('SET', rkey, ARGV[9])
end
local applied, dup, unknown = {}, 0, {}
-- batch: ids seen in this call; once: per-call marks, so a user's dirty flag, an arm's
-- index entry and a set's expiry cost one call per batch, not one per event.
local batch, offsets, stamps, once = {}, {}, {}, {}
for i = 15, #ARGV, n_fields do
  local eid, part, off, vkey, kind = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2]), ARGV[i+3], ARGV[i+4]
  local ukey, uid, ck, member = ARGV[i+5], ARGV[i+6], ARGV[i+7], ARGV[i+8]
  local cf, comp, wt, vid = ARGV[i+9], ARGV[i+10], ARGV[i+11], ARGV[i+12]
  local ts, w, rts = ARGV[i+13], ARGV[i+14], tonumber(ARGV[i+15])
  if part ~= '' and offsets[part] == nil then
    local o = redis.call('HMGET', okey, part, part .. '@t')
    offsets[part], stamps[part] = tonumber(o[1] or '-1'), tonumber(o[2] or '-1')
  end
  if redis.call('EXISTS', vkey) == 0 then
    -- Reported on every delivery (never skipped as a duplicate): the caller dead-letters it.
    table.insert(unknown, eid)
  elseif batch[eid] or (part ~= '' and off <= offsets[part] and rts <= stamps[part])
      or redis.call('SISMEMBER', done, eid) == 1
      or redis.call('SISMEMBER', done_prev, eid) == 1 then
    dup = dup + 1
  else
    batch[eid] = true
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
      redis.call('HSETNX', fb, 't:' .. vid, ts)
      if not once['d' .. uid] then
        once['d' .. uid] = true
        redis.call('SADD', dirty, uid)
      end
      redis.call('SADD', ukey .. ':seen', vid)
    end
    if kind == 'p' or kind == 'n' then
      local lkey = ukey .. (kind == 'p' and ':history' or ':neg')
      if not redis.call('LPOS', lkey, vid) then
        redis.call('LPUSH', lkey, vid)
        redis.call('LTRIM', lkey, 0, (kind == 'p' and hist_len or neg_len) - 1)
        if kind == 'p' and (min_seen <= 0
            or redis.call('SCARD', ukey .. ':seen') > min_seen) then
          redis.call('ZINCRBY', tkey, tostring(2 ^ ((tonumber(ts) - ref) / hl)), vid)
        end
      end
    end
    if cf ~= '' then redis.call('HINCRBY', ck, cf, 1) end
    if comp == '1' then redis.call('HINCRBY', ck, 'completed', 1) end
    if ratio[cf] then moment(ck, uid, cf) end
    if comp == '1' then moment(ck, uid, 'completed') end
    if wt ~= '0' then redis.call('HINCRBYFLOAT', ck, 'watch_time_s', wt) end
    if not once['m' .. member] then
      once['m' .. member] = true
      redis.call('SADD', stats_index, member)
    end
    -- The event id, remembered for `horizon` seconds of server time (a client resending
    -- it with another timestamp is still a duplicate) and at most done_cap per user.
    redis.call('SADD', done, eid)
    table.insert(applied, eid)
  end
  if part ~= '' and off > offsets[part] then
    offsets[part] = off
    if rts > stamps[part] then stamps[part] = rts end
  end
end
for part, off in pairs(offsets) do
  if off >= 0 then redis.call('HSET', okey, part, off, part .. '@t', stamps[part]) end
end
for ck, t in pairs(sums) do
  for f, by in pairs(t) do
    if by ~= 0 then redis.call('HINCRBY', ck, f, by) end
  end
end
return {applied, dup, unknown}
"""

COUNTER_FIELD = {E.EVENT_TYPE_IMPRESSION: "impressions", E.EVENT_TYPE_CLICK: "clicks",
                 E.EVENT_TYPE_WATCH: "watches", E.EVENT_TYPE_LIKE: "likes",
                 E.EVENT_TYPE_DISLIKE: "dislikes"}
KIND_CODE = {ev.Kind.POSITIVE: "p", ev.Kind.NEGATIVE: "n", ev.Kind.SEEN: "s",
             ev.Kind.EXPOSURE: "e"}


@dataclass(frozen=True)
class Position:
    """Where a record sits in Kafka: at or below the applied offset, and no newer than the
    records applied up to it, is a redelivery."""

    partition: str  # "topic:partition"
    offset: int
    timestamp_ms: int = -1  # the record's Kafka timestamp; -1: unknown (offset alone)


class Applier:
    """Holds the registered script, so a batch costs one EVALSHA."""

    def __init__(self, client: redis.Redis, keys: schema.Keys,
                 weights: ev.FeedbackWeights | None = None,
                 horizon_s: float = DEDUPE_HORIZON_S, trending_min_seen: int = 0) -> None:
        self.keys = keys
        self.trending_min_seen = trending_min_seen
        self.weights = weights or ev.FeedbackWeights()
        self.horizon_s = horizon_s
        self._script = client.register_script(_APPLY)

    def apply(self, events: Sequence[events_pb2.Event], hist_len: int, neg_len: int,
              half_life_s: float, positions: Sequence[Position | None] | None = None,
              now: float | None = None) -> ApplyResult:
        """Apply every event not applied before; report duplicates and events naming a
        video the store does not know (those go to the dead-letter topic, on every
        delivery). `positions` (aligned with `events`) makes Kafka redeliveries exact
        duplicates at any age; without them only the event id horizon applies."""
        res = ApplyResult()
        if not events:
            return res
        k, w = self.keys, self.weights
        now = time.time() if now is None else now
        args: list[str | int | float] = [
            hist_len, neg_len, self.horizon_s, k.dirty_users(), k.stats_index(),
            k.trending(), k.trending_ref(), half_life_s, repr(now), w.rating_base,
            w.rating_centred, k.applied_offsets(), k.processed_events(),
            self.trending_min_seen]
        pos = positions if positions is not None else [None] * len(events)
        for e, p in zip(events, pos, strict=True):
            name = ev.NAME_OF[e.type]
            if name == "rating":
                code, weight = "r", e.value
            else:
                weight = ev.base_weight(name, e.value, w)
                code = KIND_CODE[ev.kind_of(name, weight)]
            version, arm = e.model_version or "-", e.experiment_arm or "-"
            watch = e.type == E.EVENT_TYPE_WATCH
            args += [e.event_id, p.partition if p else "", p.offset if p else -1,
                     k.video_features(e.video_id), code,
                     k.user_root(e.user_id), e.user_id, k.counters(version, arm),
                     f"{version}|{arm}", COUNTER_FIELD.get(e.type, ""),
                     "1" if watch and e.value >= ev.COMPLETE else "0",
                     repr(e.watch_time_s) if watch and e.watch_time_s else "0", e.video_id,
                     repr(min(e.timestamp or now, now + TRENDING_CLOCK_AHEAD_S)), repr(weight),
                     p.timestamp_ms if p else -1]
        applied, dup, unknown = self._script(args=args)
        done = {_s(x) for x in applied}
        bad = {_s(x) for x in unknown}
        res.duplicates = int(dup)
        res.applied = [e for e in events if e.event_id in done]
        res.unknown_video = [e for e in events if e.event_id in bad]
        return res


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x
