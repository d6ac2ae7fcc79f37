"""Stores: Redis feature store, vector index backends, artifact directories."""
