"""Vector index behind one small interface; two backends.

- EdgeIndex (default): qdrant-edge-py, the Qdrant engine in-process. One shard directory
  per collection under `root`; the alias is a small file replaced atomically, so a reader
  never sees a half-switched alias. A shard directory is opened by one process at a time:
  the candidate service owns the live one and applies new-video upserts itself.
- ServerIndex: a Qdrant server through qdrant-client (VIDREC_QDRANT_URL), with real
  collection aliases.

Each point carries three named vectors ("tt": two-tower, "mf": matrix factorization,
"content": content-only), so every candidate source is an ANN query, not a scan.
Point ids are a stable 63-bit hash of the video id (so a re-upsert replaces the point);
the payload carries the video id and the filterable fields. Hidden videos are not in the
index at all (deleted on hide), so no search pays for a "not hidden" condition. Flags
(age_restricted) are 0/1 ints: qdrant-edge 0.9 does not match bool payloads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

ALIAS = "videos"
TT, MF, CONTENT = "tt", "mf", "content"
# HNSW graph (m, ef_construct) per named vector, and the default search breadth.
# User-tower queries do not come from the video distribution, which graph indexes find
# hard; a denser build (ef_construct) helps them more than more links (m). On 100k
# two-tower vectors with 200 real user queries, recall@100 vs exact (int8, see below):
#   (m, efc) = (48, 400): ef 768 -> 0.940, ef 1280 -> 0.964 (1.3 ms)
#   (m, efc) = (32, 800): ef 512 -> 0.943, ef 768 -> 0.963 (0.7 ms), ef 1024 -> 0.973
# (16, 128) with ef 256 gave 0.72. The denser graph takes ~2.5x longer to build (once per
# published version). The side sources (mf, content) need only a few good neighbours.
GRAPH = {TT: (32, 800), "default": (16, 128)}
HNSW_EF = 768
# The two-tower graph is searched over int8 copies of the vectors (4x less memory to walk),
# then the best oversampling x limit are rescored with the float vectors: at (48, 400),
# ef 1280, recall@100 0.962 at 1.1 ms vs 0.962 at 1.7 ms unquantized.
QUANTIZED = (TT,)
OVERSAMPLING = 2.0


def _nonzero_rows(vectors: Mapping[str, np.ndarray], start: int, n: int
                  ) -> dict[str, np.ndarray]:
    """Per named vector, which rows of [start, start + n) are not all zero. An all-zero
    vector is left out of its point: it scores 0 against every query, so it can never be
    a useful neighbour, and it costs graph building. MF gives exactly 0 to every video
    nobody interacted with (92% of a 1M-video synthetic catalog), and a new upload has no
    MF vector yet."""
    return {name: np.any(m[start: start + n] != 0, axis=1) for name, m in vectors.items()}


def point_id(video_id: str) -> int:
    return int.from_bytes(hashlib.sha1(video_id.encode()).digest()[:8], "big") >> 1


@dataclass(frozen=True)
class SearchFilter:
    languages: tuple[str, ...] = ()
    exclude_age_restricted: bool = False
    exclude_categories: tuple[str, ...] = ()
    exclude_ids: tuple[str, ...] = field(default=())


class VectorIndex(Protocol):
    def create_collection(self, name: str, dims: Mapping[str, int]) -> None: ...
    def upsert(self, name: str, video_ids: Sequence[str], vectors: Mapping[str, np.ndarray],
               payloads: Sequence[dict[str, Any]]) -> None: ...
    def delete(self, name: str, video_ids: Sequence[str]) -> None: ...
    def finalize(self, name: str) -> None: ...
    def search(self, name: str, vector: np.ndarray, limit: int,
               flt: SearchFilter | None = None, exact: bool = False, using: str = TT,
               ef: int | None = None) -> list[tuple[str, float]]:
        """Top `limit` by dot product on the named vector `using`; `ef` trades recall for
        speed (default HNSW_EF, never below limit)."""
        ...
    def set_alias(self, name: str, alias: str = ALIAS) -> None: ...

    def remember_ids(self, video_ids: Sequence[str]) -> None: ...
    def resolve_alias(self, alias: str = ALIAS) -> str | None: ...
    def delete_collection(self, name: str) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class CollectionLayout:
    """How a Qdrant server spreads a published collection (ignored by the embedded engine).

    shards: pieces of the collection, spread over the cluster's nodes (searches fan out to
    all; more shards = more nodes share memory and search work). replicas: copies of each
    shard (a node may fail). write_consistency: replicas that must confirm a write.
    on_disk: original vectors on disk (the int8-quantized two-tower vectors stay in RAM and
    answer searches; the originals only rescore), for catalogs larger than RAM allows."""

    shards: int = 1
    replicas: int = 1
    write_consistency: int = 1
    on_disk: bool = False

    def __post_init__(self) -> None:
        if self.shards < 1 or self.replicas < 1:
            raise ValueError("qdrant shards and replicas must be >= 1")
        if not 1 <= self.write_consistency <= self.replicas:
            raise ValueError(f"qdrant write consistency must be in 1..replicas "
                             f"({self.replicas}), got {self.write_consistency}")

    @classmethod
    def from_settings(cls, s: Any) -> CollectionLayout:
        """VIDREC_QDRANT_SHARDS, _REPLICAS, _WRITE_CONSISTENCY, _ON_DISK (TrainerSettings)."""
        return cls(getattr(s, "qdrant_shards", 1), getattr(s, "qdrant_replicas", 1),
                   getattr(s, "qdrant_write_consistency", 1), getattr(s, "qdrant_on_disk", False))


def open_index(qdrant_url: str, index_root: str | Path, api_key: str = "",
               layout: CollectionLayout | None = None) -> VectorIndex:
    if qdrant_url:
        return ServerIndex(qdrant_url, api_key, layout)
    return EdgeIndex(Path(index_root))


class EdgeIndex:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, Any] = {}
        self._lock = threading.Lock()
        # point id -> video id. Searches return ids only: reading the video_id payload of
        # 300 hits cost more than the search itself (2.2 ms vs 1.8 ms, 100k catalog).
        self._names: dict[int, str] = {}

    def remember_ids(self, video_ids: Sequence[str]) -> None:
        """Tell the index which video ids its points may hold (a shard built by another
        process, e.g. `vidrec publish`), so searches need not read payloads."""
        self._names.update((point_id(v), v) for v in video_ids)

    def _shard(self, name: str) -> Any:
        from qdrant_edge import EdgeShard

        with self._lock:
            shard = self._shards.get(name)
            if shard is None:
                path = self.root / name
                if not path.exists():
                    raise KeyError(f"no collection {name!r} under {self.root}")
                shard = EdgeShard.load(str(path))
                self._shards[name] = shard
            return shard

    def create_collection(self, name: str, dims: Mapping[str, int]) -> None:
        from qdrant_edge import (
            Distance,
            EdgeConfig,
            EdgeShard,
            EdgeVectorParams,
            HnswIndexConfig,
            ScalarQuantizationConfig,
            ScalarType,
        )

        path = self.root / name
        if path.exists():
            self.delete_collection(name)
        def params(n: str, d: int) -> EdgeVectorParams:
            m, efc = GRAPH.get(n, GRAPH["default"])
            quant = ScalarQuantizationConfig(type=ScalarType.Int8, quantile=0.99,
                                             always_ram=True) if n in QUANTIZED else None
            return EdgeVectorParams(size=d, distance=Distance.Dot, quantization_config=quant,
                                    hnsw_config=HnswIndexConfig(m=m, ef_construct=efc,
                                                                full_scan_threshold=1000))

        cfg = EdgeConfig(vectors={n: params(n, d) for n, d in dims.items()})
        from qdrant_edge import PayloadSchemaType, UpdateOperation

        shard = EdgeShard.create(str(path), cfg)
        # Indexed payload fields: a filtered search checks an index, not every payload.
        for key, kind in (("language", PayloadSchemaType.Keyword),
                          ("category", PayloadSchemaType.Keyword),
                          ("video_id", PayloadSchemaType.Keyword),
                          ("age_restricted", PayloadSchemaType.Integer)):
            shard.update(UpdateOperation.create_field_index(key, kind))
        with self._lock:
            self._shards[name] = shard

    def upsert(self, name: str, video_ids: Sequence[str], vectors: Mapping[str, np.ndarray],
               payloads: Sequence[dict[str, Any]]) -> None:
        from qdrant_edge import Point, UpdateOperation

        shard = self._shard(name)
        self.remember_ids(video_ids)
        batch = 2048
        for s in range(0, len(video_ids), batch):
            # Python lists per batch only: the whole catalog as lists of floats took
            # 32 bytes a number (1M videos: ~7 GB beside the 0.9 GB of arrays).
            lists = {n: m[s: s + batch].astype(np.float32).tolist()
                     for n, m in vectors.items()}
            has = _nonzero_rows(vectors, s, batch)
            pts = [Point(point_id(v), {n: lst[i] for n, lst in lists.items() if has[n][i]},
                         {**payloads[s + i], "video_id": v})
                   for i, v in enumerate(video_ids[s: s + batch])]
            shard.update(UpdateOperation.upsert_points(pts))

    def delete(self, name: str, video_ids: Sequence[str]) -> None:
        from qdrant_edge import UpdateOperation

        self._shard(name).update(UpdateOperation.delete_points([point_id(v) for v in video_ids]))

    def finalize(self, name: str) -> None:
        """Build the HNSW graph and flush: after this a fresh process can load the shard."""
        shard = self._shard(name)
        shard.optimize()
        shard.flush()

    def search(self, name: str, vector: np.ndarray, limit: int,
               flt: SearchFilter | None = None, exact: bool = False, using: str = TT,
               ef: int | None = None) -> list[tuple[str, float]]:
        from qdrant_edge import QuantizationSearchParams, Query, QueryRequest, SearchParams

        quant = QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING) if (
            using in QUANTIZED and not exact) else None
        params = SearchParams(hnsw_ef=max(ef or HNSW_EF, limit), exact=exact, quantization=quant)
        query = Query.Nearest(vector.astype(np.float32).tolist(), using=using)
        flt_ = _edge_filter(flt)
        shard = self._shard(name)
        res = shard.query(QueryRequest(limit=limit, query=query, filter=flt_,
                                       with_payload=False, params=params))
        names = self._names
        try:
            return [(names[p.id], p.score) for p in res]
        except KeyError:  # a point this process was not told about: read the payloads
            pass
        res = shard.query(QueryRequest(limit=limit, query=query, filter=flt_,
                                       with_payload=["video_id"], params=params))
        out = [(str((p.payload or {})["video_id"]), float(p.score)) for p in res]
        self.remember_ids([v for v, _ in out])
        return out

    def _alias_file(self, alias: str) -> Path:
        return self.root / f"ALIAS_{alias}"

    def set_alias(self, name: str, alias: str = ALIAS) -> None:
        tmp = self._alias_file(alias).with_suffix(".tmp")
        tmp.write_text(name)
        os.replace(tmp, self._alias_file(alias))

    def resolve_alias(self, alias: str = ALIAS) -> str | None:
        f = self._alias_file(alias)
        return f.read_text().strip() if f.exists() else None

    def delete_collection(self, name: str) -> None:
        with self._lock:
            shard = self._shards.pop(name, None)
        if shard is not None:
            shard.close()
        shutil.rmtree(self.root / name, ignore_errors=True)

    def release(self, name: str) -> None:
        """Close this process's handle so another process may open the shard."""
        with self._lock:
            shard = self._shards.pop(name, None)
        if shard is not None:
            shard.flush()
            shard.close()

    def close(self) -> None:
        for name in list(self._shards):
            self.release(name)


def _edge_filter(flt: SearchFilter | None) -> Any:
    from qdrant_edge import FieldCondition, Filter, MatchAny, MatchValue

    if flt is None or flt == SearchFilter():
        return None
    must: list[Any] = []
    must_not: list[Any] = []
    if flt.languages:
        must.append(FieldCondition(key="language", match=MatchAny(list(flt.languages))))
    if flt.exclude_age_restricted:
        must_not.append(FieldCondition(key="age_restricted", match=MatchValue(1)))
    if flt.exclude_categories:
        must_not.append(FieldCondition(key="category",
                                       match=MatchAny(list(flt.exclude_categories))))
    if flt.exclude_ids:
        must_not.append(FieldCondition(key="video_id", match=MatchAny(list(flt.exclude_ids))))
    return Filter(must=must or None, must_not=must_not or None)


def collection_spec(dims: Mapping[str, int], layout: CollectionLayout) -> dict[str, Any]:
    """The create_collection arguments of a published collection on a Qdrant server: named
    vectors with their HNSW graph and quantization, and the layout over the cluster."""
    from qdrant_client import models

    return {
        "vectors_config": {
            n: models.VectorParams(
                size=d, distance=models.Distance.DOT, on_disk=layout.on_disk or None,
                hnsw_config=models.HnswConfigDiff(m=GRAPH.get(n, GRAPH["default"])[0],
                                                  ef_construct=GRAPH.get(n, GRAPH["default"])[1]),
                quantization_config=models.ScalarQuantization(
                    scalar=models.ScalarQuantizationConfig(
                        type=models.ScalarType.INT8, quantile=0.99, always_ram=True))
                if n in QUANTIZED else None)
            for n, d in dims.items()},
        "shard_number": layout.shards,
        "replication_factor": layout.replicas,
        "write_consistency_factor": layout.write_consistency,
    }


class ServerIndex:
    """A Qdrant server (deployed shape)."""

    def __init__(self, url: str, api_key: str = "", layout: CollectionLayout | None = None
                 ) -> None:
        from qdrant_client import QdrantClient

        self.client = QdrantClient(url=url, timeout=5, api_key=api_key or None)
        self.layout = layout or CollectionLayout()

    def create_collection(self, name: str, dims: Mapping[str, int]) -> None:
        from qdrant_client import models

        if self.client.collection_exists(name):
            self.client.delete_collection(name)
        self.client.create_collection(name, **collection_spec(dims, self.layout))
        for key in ("language", "category", "video_id"):
            self.client.create_payload_index(name, key, models.PayloadSchemaType.KEYWORD)

    def upsert(self, name: str, video_ids: Sequence[str], vectors: Mapping[str, np.ndarray],
               payloads: Sequence[dict[str, Any]]) -> None:
        from qdrant_client import models

        batch = 1024
        for s in range(0, len(video_ids), batch):  # lists per batch: bounded memory
            lists = {n: m[s: s + batch].astype(float).tolist() for n, m in vectors.items()}
            has = _nonzero_rows(vectors, s, batch)
            pts = [models.PointStruct(id=point_id(v),
                                      vector={n: lst[i] for n, lst in lists.items()
                                              if has[n][i]},
                                      payload={**payloads[s + i], "video_id": v})
                   for i, v in enumerate(video_ids[s: s + batch])]
            self.client.upsert(name, pts, wait=True)

    def delete(self, name: str, video_ids: Sequence[str]) -> None:
        from qdrant_client import models

        self.client.delete(name, models.PointIdsList(points=[point_id(v) for v in video_ids]))

    def finalize(self, name: str) -> None:
        return None

    def remember_ids(self, video_ids: Sequence[str]) -> None:
        """Nothing to do: the server returns the video_id payload with each hit."""

    def search(self, name: str, vector: np.ndarray, limit: int,
               flt: SearchFilter | None = None, exact: bool = False, using: str = TT,
               ef: int | None = None) -> list[tuple[str, float]]:
        from qdrant_client import models

        res = self.client.query_points(
            name, query=vector.astype(float).tolist(), using=using, limit=limit,
            query_filter=_server_filter(flt), with_payload=["video_id"],
            search_params=models.SearchParams(
                exact=exact, hnsw_ef=max(ef or HNSW_EF, limit),
                quantization=models.QuantizationSearchParams(
                    rescore=True, oversampling=OVERSAMPLING) if using in QUANTIZED else None)
        ).points
        return [(str((p.payload or {})["video_id"]), float(p.score)) for p in res]

    def set_alias(self, name: str, alias: str = ALIAS) -> None:
        from qdrant_client import models

        ops: list[Any] = []
        if self.resolve_alias(alias):
            ops.append(models.DeleteAliasOperation(
                delete_alias=models.DeleteAlias(alias_name=alias)))
        ops.append(models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=name, alias_name=alias)))
        self.client.update_collection_aliases(change_aliases_operations=ops)

    def resolve_alias(self, alias: str = ALIAS) -> str | None:
        for a in self.client.get_aliases().aliases:
            if a.alias_name == alias:
                return str(a.collection_name)
        return None

    def delete_collection(self, name: str) -> None:
        self.client.delete_collection(name)

    def close(self) -> None:
        self.client.close()


def _server_filter(flt: SearchFilter | None) -> Any:
    from qdrant_client import models

    if flt is None or flt == SearchFilter():
        return None
    must: list[Any] = []
    must_not: list[Any] = []
    if flt.languages:
        must.append(models.FieldCondition(key="language",
                                          match=models.MatchAny(any=list(flt.languages))))
    if flt.exclude_age_restricted:
        must_not.append(models.FieldCondition(key="age_restricted",
                                              match=models.MatchValue(value=1)))
    if flt.exclude_categories:
        must_not.append(models.FieldCondition(
            key="category", match=models.MatchAny(any=list(flt.exclude_categories))))
    if flt.exclude_ids:
        must_not.append(models.FieldCondition(
            key="video_id", match=models.MatchAny(any=list(flt.exclude_ids))))
    return models.Filter(must=must or None, must_not=must_not or None)
