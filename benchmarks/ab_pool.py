"""Pool `vidrec simulate` readouts of independent runs (one fresh stack per seed).

    python -m benchmarks.ab_pool RUN/metrics.json [RUN/metrics.json ...]
                                 [--metrics ctr,true_precision] [--arm hybrid]
                                 [--baseline mf_only]

One 20,000-request simulation tells two arms apart only when they differ by about 5%
(CTR) or 8% (true precision) relative. Runs on separate stacks are independent, so their
relative differences combine by inverse-variance weighting: each run's standard error is
its 95% interval's half-width / 1.96 (the per-user bootstrap's percentile interval,
treated as normal), and the pooled interval narrows by about the square root of the
number of runs. Prints each run and the pooled difference with its verdict.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from vidrec.abtest import Z95, Interval, verdict


def pooled(rows: Sequence[Interval]) -> Interval:
    """Inverse-variance pooled estimate of independent relative differences."""
    weights = [1 / ((iv.hi - iv.lo) / (2 * Z95)) ** 2 for iv in rows]
    value = sum(w * iv.value for w, iv in zip(weights, rows, strict=True)) / sum(weights)
    se = math.sqrt(1 / sum(weights))
    return Interval(value, value - Z95 * se, value + Z95 * se)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="metrics.json of each simulation")
    ap.add_argument("--metrics", default="ctr,true_precision")
    ap.add_argument("--arm", default="hybrid")
    ap.add_argument("--baseline", default="mf_only")
    a = ap.parse_args(argv)
    for metric in a.metrics.split(","):
        rows: list[Interval] = []
        for path in a.runs:
            m = json.loads(path.read_text())
            hit = [c for c in m["comparisons"] if c["metric"] == metric
                   and c["arm"] == a.arm and c["baseline"] == a.baseline]
            if not hit:
                print(f"{path}: no {a.arm} vs {a.baseline} {metric}", file=sys.stderr)
                return 2
            iv = Interval(*hit[0]["relative"])
            rows.append(iv)
            t = m["totals"]
            print(f"{metric:15s} {path.parent}: {a.arm} {t[a.arm][metric]:.4f} vs "
                  f"{t[a.baseline][metric]:.4f}  {iv.value:+.1%} [{iv.lo:+.1%}, {iv.hi:+.1%}]")
        p = pooled(rows)
        print(f"{metric:15s} pooled over {len(rows)} runs: {p.value:+.1%} "
              f"[{p.lo:+.1%}, {p.hi:+.1%}] -> {verdict(p.lo, p.hi)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
