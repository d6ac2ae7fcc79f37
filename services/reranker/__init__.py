"""Reranker service: business rules over the ranker's top candidates (see rules.py)."""

from services.reranker.rules import (
    DEFAULT_RULES,
    RULES,
    SOURCES,
    CapConstraint,
    Constraint,
    Item,
    Ranked,
    RerankConfig,
    RerankPlan,
    Rule,
    UserState,
    dedupe,
    minimal_rules,
    reason_for,
    recency,
    rerank,
)

__all__ = [
    "DEFAULT_RULES",
    "RULES",
    "SOURCES",
    "CapConstraint",
    "Constraint",
    "Item",
    "Ranked",
    "RerankConfig",
    "RerankPlan",
    "Rule",
    "UserState",
    "dedupe",
    "minimal_rules",
    "reason_for",
    "recency",
    "rerank",
]
