"""Reranker service: the business rules of vidrec.rerank over the ranker's top candidates."""
