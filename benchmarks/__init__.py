"""Benchmarks: outside recommenders and protocols that vidrec's own models are measured against.

Nothing in vidrec imports this package; its extra dependencies are listed in
benchmarks/requirements.txt and are not runtime dependencies.
"""
