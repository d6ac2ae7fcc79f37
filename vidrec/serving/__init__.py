"""Shared serving plumbing: gRPC server lifecycle, health, deadlines, model holder."""
