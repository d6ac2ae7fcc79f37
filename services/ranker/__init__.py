"""Ranker service: content-based scoring of candidates with the two-tower model."""
