"""Trainer: consumes events; keeps histories, counters, vectors and models fresh."""
