"""Candidate service: collaborative filtering stage (user vector -> ANN over video vectors)."""
