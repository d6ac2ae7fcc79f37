"""The seconds tier's write on Redis Cluster: the batch of store/apply.py in two steps.

A Redis Cluster runs a script only over keys of one hash slot, and the single-Redis script
touches every user of the batch and the global state at once. Here (docs/redis.md, "Redis
Cluster") the same effects, under the same exactly-once rules, take two steps:

- the batch's videos are checked first (one pipelined EXISTS per distinct video): events
  naming an unknown video are reported on every delivery and reach no script;
- step A, one script per user (the user's slot, `{U}`): the per-user effects, the user's
  own dedupe marks (highest applied Kafka offset and record time per partition, and event
  ids by arrival bucket), and an **outbox** entry per applied event holding its global
  deltas (trending weight, counter and moment increments, dirty flag), keyed by
  "LOG/topic:partition|offset". The script returns every entry still in the user's outbox:
  on a redelivery after a crash between the steps that includes the deltas of events it
  already applied, which no other copy holds;
- step B, one script per partition shard (`{p:topic:partition}`): applies the returned
  deltas at most once, by the shard's own applied offset and record time, and by event id
  for what those cannot judge (an event without a position, a log that restarted empty),
  then advances the applied offset. Entries of events beyond this batch (a redelivered
  batch cut shorter than the crashed one) wait for their event's next delivery;
- the outbox entries step B has judged are deleted (best effort: a leftover is judged
  again and skipped, never applied twice).

The caller commits Kafka offsets after `apply` returns, as on a single Redis. Global state
thus lives in one shard per partition (trending set, counters, moments, stats index, dirty
users), and FeatureStore merges shards on read.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from vidrec import events as ev
from vidrec import schema
from vidrec.store.apply import (
    COUNTER_FIELD,
    DEDUPE_HORIZON_S,
    KIND_CODE,
    TRENDING_CLOCK_AHEAD_S,
    ApplyResult,
    Position,
)
from vidrec.v1 import events_pb2

E = events_pb2
log = logging.getLogger(__name__)
NO_POSITION_SHARD = "-"

# Step A. KEYS[1]: the user's outbox (routes the call to the user's slot). ARGV: hist_len,
# neg_len, horizon, now, rating base, rating centred, min_seen, user root, user id, then
# 13 per event. The per-user effects are store/apply.py's, event for event.
_STEP_A = """
local hist_len, neg_len, horizon = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now, r_base, r_centred = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local min_seen, ukey, uid = tonumber(ARGV[7]), ARGV[8], ARGV[9]
local outbox, pkey = KEYS[1], ukey .. ':pos'
local ratio = {impressions = {'ctr', false, 'x:clicks:impressions'},
               clicks = {'ctr', true, 'x:clicks:impressions'},
               watches = {'comp', false, 'x:completed:watches'},
               completed = {'comp', true, 'x:completed:watches'}}
local shift = 67108864
local function moment(inc, va, f)
  local r = ratio[f]
  local mkey, by = ukey .. ':stats:' .. va, r[2] and shift or 1
  local v = redis.call('HINCRBY', mkey, r[1], by)
  if v == by then redis.call('EXPIRE', mkey, 2592000) end
  local x = math.floor(v / shift)
  local y = v - x * shift
  local function add(k, n) inc[k] = (inc[k] or 0) + n end
  if r[2] then
    add('sq:' .. f, 2 * x - 1)
    add(r[3], y)
  else
    add('sq:' .. f, 2 * y - 1)
    add(r[3], x)
    if y == 1 and f == 'impressions' then add('users', 1) end
  end
end
local bucket = math.floor(now / horizon)
local done, done_prev = ukey .. ':done:' .. bucket, ukey .. ':done:' .. (bucket - 1)
local applied, dup = {}, 0
local batch, offsets, stamps, touched = {}, {}, {}, false
for i = 10, #ARGV, 13 do
  local eid, part, off, kind, va = ARGV[i], ARGV[i+1], tonumber(ARGV[i+2]), ARGV[i+3], ARGV[i+4]
  local member, cf, comp, wt, vid = ARGV[i+5], ARGV[i+6], ARGV[i+7], ARGV[i+8], ARGV[i+9]
  local ts, w, rts = ARGV[i+10], ARGV[i+11], tonumber(ARGV[i+12])
  if part ~= '' and offsets[part] == nil then
    local o = redis.call('HMGET', pkey, part, part .. '@t')
    offsets[part], stamps[part] = tonumber(o[1] or '-1'), tonumber(o[2] or '-1')
  end
  if batch[eid] or (part ~= '' and off <= offsets[part] and rts <= stamps[part])
      or redis.call('SISMEMBER', done, eid) == 1
      or redis.call('SISMEMBER', done_prev, eid) == 1 then
    dup = dup + 1
  else
    batch[eid] = true
    local d = {e = eid, t = rts, m = member, k = va}
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
      d.u = uid
      redis.call('SADD', ukey .. ':seen', vid)
    end
    if kind == 'p' or kind == 'n' then
      local lkey = ukey .. (kind == 'p' and ':history' or ':neg')
      if not redis.call('LPOS', lkey, vid) then
        redis.call('LPUSH', lkey, vid)
        redis.call('LTRIM', lkey, 0, (kind == 'p' and hist_len or neg_len) - 1)
        if kind == 'p' and (min_seen <= 0
            or redis.call('SCARD', ukey .. ':seen') > min_seen) then
          d.v, d.s = vid, ts
        end
      end
    end
    local inc = {}
    if cf ~= '' then inc[cf] = 1 end
    if comp == '1' then inc.completed = (inc.completed or 0) + 1 end
    if ratio[cf] then moment(inc, va, cf) end
    if comp == '1' then moment(inc, va, 'completed') end
    d.c = inc
    if wt ~= '0' then d.w = wt end
    local field = part == '' and ('|' .. eid) or (part .. '|' .. off)
    redis.call('HSET', outbox, field, cjson.encode(d))
    if not touched then
      touched = true
      redis.call('SADD', done, '')
      redis.call('EXPIRE', done, 2 * math.ceil(horizon) + 60)
    end
    redis.call('SADD', done, eid)
    table.insert(applied, eid)
  end
  if part ~= '' and off > offsets[part] then
    offsets[part] = off
    if rts > stamps[part] then stamps[part] = rts end
  end
end
for part, off in pairs(offsets) do
  if off >= 0 then redis.call('HSET', pkey, part, off, part .. '@t', stamps[part]) end
end
return {applied, dup, redis.call('HGETALL', outbox)}
"""

# Step B. KEYS[1]: the shard's offsets hash. ARGV: shard root, horizon, now, half-life,
# trending reference (used if the shard has none yet), the count of the batch's partitions
# in this shard, per partition: its name, its record count n, then n (offset, record time)
# pairs; then (partition, offset, entry) triples. Returns the entries left for later.
_STEP_B = """
local root, horizon, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local hl, ref0 = tonumber(ARGV[4]), ARGV[5]
local okey = KEYS[1]
local i = 7
local cur = {}
for _ = 1, tonumber(ARGV[6]) do
  local part, n = ARGV[i], tonumber(ARGV[i+1])
  i = i + 2
  local o = redis.call('HMGET', okey, part, part .. '@t')
  local off, st = tonumber(o[1] or '-1'), tonumber(o[2] or '-1')
  local c = {off = off, st = st, max = -1, noff = off, nst = st}
  for j = i, i + 2 * n - 1, 2 do
    local ro, rt = tonumber(ARGV[j]), tonumber(ARGV[j+1])
    if ro > c.max then c.max = ro end
    if ro > c.noff then
      c.noff = ro
      if rt > c.nst then c.nst = rt end
    end
  end
  i = i + 2 * n
  cur[part] = c
end
local bucket = math.floor(now / horizon)
local done, done_prev = root .. ':done:' .. bucket, root .. ':done:' .. (bucket - 1)
local touched = false
local function by_id(eid)
  if redis.call('SISMEMBER', done, eid) == 1 or redis.call('SISMEMBER', done_prev, eid) == 1 then
    return false
  end
  if not touched then
    touched = true
    redis.call('SADD', done, '')
    redis.call('EXPIRE', done, 2 * math.ceil(horizon) + 60)
  end
  redis.call('SADD', done, eid)
  return true
end
local ref = nil
local tkey, ikey, dkey = root .. ':trending', root .. ':stats:index', root .. ':dirty'
local sums, floats, once, later = {}, {}, {}, {}
local other = {}
for j = i, #ARGV, 3 do
  local part, off, d = ARGV[j], tonumber(ARGV[j+1]), cjson.decode(ARGV[j+2])
  local rts = tonumber(d.t)
  local c = cur[part]
  local take
  if part == '' then
    take = by_id(d.e)
  elseif c ~= nil then
    if off <= c.off and rts <= c.st then take = false
    elseif off > c.max then take = false; table.insert(later, part .. '|' .. off)
    elseif off <= c.off then take = by_id(d.e)
    else take = true end
  else
    local o = other[part]
    if o == nil then
      local h = redis.call('HMGET', okey, part, part .. '@t')
      o = {tonumber(h[1] or '-1'), tonumber(h[2] or '-1')}
      other[part] = o
    end
    if off <= o[1] and rts <= o[2] then take = false else take = by_id(d.e) end
  end
  if take then
    if d.v then
      if ref == nil then
        ref = tonumber(redis.call('GET', root .. ':trending:ref') or '')
        if ref == nil then
          ref = tonumber(ref0)
          redis.call('SET', root .. ':trending:ref', ref0)
        end
      end
      redis.call('ZINCRBY', tkey, tostring(2 ^ ((tonumber(d.s) - ref) / hl)), d.v)
    end
    local ck = root .. ':stats:' .. d.k
    local t = sums[ck]
    if not t then t = {}; sums[ck] = t end
    for f, by in pairs(d.c) do t[f] = (t[f] or 0) + by end
    if d.w then floats[ck] = (floats[ck] or 0) + tonumber(d.w) end
    if not once['m' .. d.m] then
      once['m' .. d.m] = true
      redis.call('SADD', ikey, d.m)
    end
    if d.u and not once['u' .. d.u] then
      once['u' .. d.u] = true
      redis.call('SADD', dkey, d.u)
    end
  end
end
for part, c in pairs(cur) do
  if c.noff >= 0 and (c.noff ~= c.off or c.nst ~= c.st) then
    redis.call('HSET', okey, part, c.noff, part .. '@t', c.nst)
  end
end
for ck, t in pairs(sums) do
  for f, by in pairs(t) do
    if by ~= 0 then redis.call('HINCRBY', ck, f, by) end
  end
end
for ck, by in pairs(floats) do
  redis.call('HINCRBYFLOAT', ck, 'watch_time_s', tostring(by))
end
return later
"""


def shard_of(partition: str) -> str:
    """The shard of a position "LOG/topic:partition": "topic:partition" (a broker that
    restarted empty starts a new LOG, not a new shard)."""
    return partition.rsplit("/", 1)[-1] if partition else NO_POSITION_SHARD


class ClusterApplier:
    """The two-step apply on a RedisCluster client (same interface as apply.Applier)."""

    def __init__(self, client: RedisCluster, keys: schema.Keys,
                 weights: ev.FeedbackWeights | None = None,
                 horizon_s: float = DEDUPE_HORIZON_S, trending_min_seen: int = 0) -> None:
        self.r = client
        self.keys = keys
        self.trending_min_seen = trending_min_seen
        self.weights = weights or ev.FeedbackWeights()
        self.horizon_s = horizon_s
        self._a = client.register_script(_STEP_A)
        self._b = client.register_script(_STEP_B)
        self._loaded = False
        self._known_shards: set[str] = set()

    def _load(self) -> None:
        """Scripts on every primary (a cluster pipeline does not load them itself)."""
        for s in (self._a, self._b):
            self.r.script_load(s.script)
        self._loaded = True

    def _run(self, calls: list[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        """One pipelined round trip per node; a NOSCRIPT (a new or failed-over node)
        loads the scripts and runs the calls again (both steps are idempotent)."""
        if not self._loaded:
            self._load()
        for attempt in range(2):
            p = self.r.pipeline(transaction=False)
            for script, keys, args in calls:
                script(keys=keys, args=args, client=p)
            out = p.execute(raise_on_error=False)
            if not any(isinstance(x, NoScriptError) for x in out) or attempt:
                break
            self._load()
        for x in out:
            if isinstance(x, Exception):
                raise x
        return list(out)

    def apply(self, events: Sequence[events_pb2.Event], hist_len: int, neg_len: int,
              half_life_s: float, positions: Sequence[Position | None] | None = None,
              now: float | None = None) -> ApplyResult:
        """Apply every event not applied before (apply.Applier.apply's contract)."""
        plan = self.step_a(events, hist_len, neg_len, positions, now)
        self.step_b(plan, half_life_s)
        return plan.result

    def step_a(self, events: Sequence[events_pb2.Event], hist_len: int, neg_len: int,
               positions: Sequence[Position | None] | None = None,
               now: float | None = None) -> _Plan:
        """The video check and every user's script; what step B needs comes back."""
        res = ApplyResult()
        now = time.time() if now is None else now
        plan = _Plan(res, now, "", {}, {}, {})
        if not events:
            return plan
        k, w = self.keys, self.weights
        pos = list(positions) if positions is not None else [None] * len(events)
        # The videos, the trending reference and the shard index in one round trip.
        vids = sorted({e.video_id for e in events})
        shards = {shard_of(p.partition if p else "") for p in pos}
        p = self.r.pipeline(transaction=False)
        for v in vids:
            p.exists(k.video_features(v))
        p.set(k.trending_ref(), repr(now), nx=True)
        p.get(k.trending_ref())
        new_shards = shards - self._known_shards
        if new_shards:
            p.sadd(k.shards(), *sorted(new_shards))
        out = p.execute()
        known = {v for v, n in zip(vids, out, strict=False) if n}
        ref = _s(out[len(vids) + 1])
        self._known_shards |= new_shards
        # Step A: one call per user, the user's events in order.
        per_user: dict[str, list[Any]] = defaultdict(list)
        records: dict[str, list[tuple[int, int]]] = defaultdict(list)  # step B's positions
        for e, q in zip(events, pos, strict=True):
            if q is not None:
                records[q.partition].append((q.offset, q.timestamp_ms))
            if e.video_id not in known:
                res.unknown_video.append(e)
                continue
            name = ev.NAME_OF[e.type]
            if name == "rating":
                code, weight = "r", e.value
            else:
                weight = ev.base_weight(name, e.value, w)
                code = KIND_CODE[ev.kind_of(name, weight)]
            version, arm = e.model_version or "-", e.experiment_arm or "-"
            watch = e.type == E.EVENT_TYPE_WATCH
            per_user[e.user_id] += [
                e.event_id, q.partition if q else "", q.offset if q else -1, code,
                f"{version}:{arm}", f"{version}|{arm}", COUNTER_FIELD.get(e.type, ""),
                "1" if watch and e.value >= ev.COMPLETE else "0",
                repr(e.watch_time_s) if watch and e.watch_time_s else "0", e.video_id,
                repr(min(e.timestamp or now, now + TRENDING_CLOCK_AHEAD_S)), repr(weight),
                q.timestamp_ms if q else -1]
        head = [hist_len, neg_len, self.horizon_s, repr(now), w.rating_base, w.rating_centred,
                self.trending_min_seen]
        users = list(per_user)
        a_out = self._run([(self._a, [k.user_outbox(u)], [*head, k.user_root(u), u,
                                                         *per_user[u]]) for u in users])
        done: set[str] = set()
        # shard -> [(partition, offset, entry)]; (user, field) to trim once judged
        entries: dict[str, list[tuple[str, int, bytes]]] = defaultdict(list)
        owner: dict[str, list[str]] = defaultdict(list)
        for u, (applied, dup, box) in zip(users, a_out, strict=True):
            done |= {_s(x) for x in applied}
            res.duplicates += int(dup)
            for f, v in zip(box[::2], box[1::2], strict=True):
                field = _s(f)
                # "LOG/topic:partition|offset", or "|event id" for an event without one
                part, _, off = ("", "", "-1") if field.startswith("|") else field.rpartition("|")
                entries[shard_of(part)].append((part, int(off), v))
                owner[field].append(u)
        res.applied = [e for e in events if e.event_id in done]
        plan.ref, plan.records, plan.entries, plan.owner = ref, records, entries, owner
        return plan

    def step_b(self, plan: _Plan, half_life_s: float) -> None:
        """Every shard's script, then the outbox trim."""
        k, now, records, entries = self.keys, plan.now, plan.records, plan.entries
        ref, owner = plan.ref, plan.owner
        by_shard: dict[str, list[str]] = defaultdict(list)
        for part in records:
            by_shard[shard_of(part)].append(part)
        calls = []
        names = sorted(set(by_shard) | set(entries))
        for shard in names:
            args: list[Any] = [k.shard_root(shard), self.horizon_s, repr(now), half_life_s,
                               ref, len(by_shard[shard])]
            for part in by_shard[shard]:
                args += [part, len(records[part])]
                for off, ts in records[part]:
                    args += [off, ts]
            for part, off, v in entries[shard]:
                args += [part, off, v]
            calls.append((self._b, [k.shard_offsets(shard)], args))
        later: set[str] = set()
        for left in self._run(calls):
            later |= {_s(x) for x in left}
        # Judged entries leave the outboxes (best effort: a leftover is judged again).
        try:
            p = self.r.pipeline(transaction=False)
            n = 0
            for field, us in owner.items():
                if field not in later:
                    for u in us:
                        p.hdel(k.user_outbox(u), field)
                        n += 1
            if n:
                p.execute()
        except redis.RedisError:
            log.warning("outbox trim failed; the entries are judged again next time",
                        exc_info=True)


@dataclass
class _Plan:
    """Step A's outcome: the result so far and what step B is to judge."""

    result: ApplyResult
    now: float
    ref: str  # the trending reference time, for shards without one yet
    records: dict[str, list[tuple[int, int]]]  # partition -> (offset, record time ms)
    entries: dict[str, list[tuple[str, int, bytes]]]  # shard -> (partition, offset, deltas)
    owner: dict[str, list[str]]  # outbox field -> users holding it


def merge_counters(rows: Sequence[dict[bytes | str, Any]]) -> dict[str, float]:
    """Counter hashes of several shards summed field by field."""
    out: dict[str, float] = defaultdict(float)
    for h in rows:
        for a, b in h.items():
            out[_s(a)] += float(b)
    return dict(out)


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


