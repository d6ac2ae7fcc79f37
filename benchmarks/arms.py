"""Where an experiment arm gains or loses relevance, stage by stage, on a live stack.

    python -m benchmarks.arms [--var var] [--users 400] [--seed 0]

Against a running `make run` (its var/ directory: run/stack.json and the demo data with
its ground truth): a sample of known users goes through each arm's candidate and ranker
stages (the same user through both arms, so users are paired), and the ranker's lists
through the rerank rules here, every rule on, each off in turn and all off. Prints true
precision per stage and arm: the candidates, the ranker's top 10 and the served 10. This
located why the hybrid arm lost online (README: the rules, not its candidates or ranking).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from vidrec.data.synth import GroundTruth
from vidrec.rerank import RerankConfig
from vidrec.security.client import ClientSecurity
from vidrec.serving.convert import profile_proto
from vidrec.serving.rerank import apply_rules
from vidrec.store.features import FeatureStore
from vidrec.v1 import candidate_pb2, candidate_pb2_grpc, common_pb2, ranker_pb2, ranker_pb2_grpc

ARMS = ("hybrid", "mf_only")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--var", default="var")
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    var = Path(a.var)
    stack = json.loads((var / "run" / "stack.json").read_text())
    data = var / "data" / "demo"
    store = FeatureStore.from_url(stack["redis"], prefix=stack.get("key_prefix", "vidrec"))
    truth = GroundTruth.load(data)
    known = set(truth.video_ids)
    users = pd.read_csv(data / "users.csv", dtype=str, keep_default_na=False)["user_id"]
    sample = np.random.default_rng(a.seed).choice(users.to_numpy(), a.users, replace=False)
    # The internal services want the stack's client certificate (mTLS), like the gateway.
    sec = ClientSecurity.from_stack(var)
    cand = candidate_pb2_grpc.CandidateStub(sec.channel(stack["services"]["candidate"]))
    rank = ranker_pb2_grpc.RankerStub(sec.channel(stack["services"]["ranker"]))

    def hits(uid: str, ids: list[str]) -> float:
        ids = [v for v in ids if v in known]
        return float(truth.relevant_matrix([uid], video_ids=ids)[0].sum()) if ids else 0.0

    stages: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    ranked = []
    for uid in map(str, sample):
        s = store.user(uid)
        for arm in ARMS:
            u = common_pb2.UserContext(
                user_id=uid, profile=profile_proto(dict(s.profile)), recent_video_ids=s.history,
                negative_video_ids=s.negatives, seen_video_ids=sorted(s.seen),
                is_new_user=not s.known, experiment_arm=arm)
            if s.mf_vector is not None:
                u.mf_vector.extend(s.mf_vector.tolist())
                u.mf_vector_version = s.mf_version
            c = cand.Generate(candidate_pb2.GenerateRequest(request_id="bench", user=u, n=200),
                              timeout=5)
            r = rank.Score(ranker_pb2.ScoreRequest(
                request_id="bench", user=u, candidates=c.candidates, top_m=50,
                model_version=c.model_version, user_vector=c.user_vector), timeout=5)
            stages[arm]["relevant candidates (of 200)"].append(
                hits(uid, [x.video_id for x in c.candidates]))
            stages[arm]["ranker top 10"].append(hits(uid, [x.video_id for x in r.videos[:10]]) / 10)
            ranked.append((uid, arm, u, list(r.videos)))
    for arm in ARMS:
        print(arm, {k: round(float(np.mean(v)), 4) for k, v in stages[arm].items()})
    base = RerankConfig()
    variants = {"all rules": base, "no rules": replace(base, rules=())}
    variants |= {f"- {r}": replace(base, rules=tuple(x for x in base.rules if x != r))
                 for r in base.rules}
    now = time.time()
    for name, cfg in variants.items():
        served: dict[str, list[float]] = defaultdict(list)
        for uid, arm, u, videos in ranked:
            out = apply_rules(store, u, videos, 10, cfg, now)
            served[arm].append(hits(uid, [x.video_id for x in out]) / 10)
        print(f"served, {name:14s}",
              {arm: round(float(np.mean(v)), 4) for arm, v in served.items()})


if __name__ == "__main__":
    main()
