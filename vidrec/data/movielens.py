"""Import MovieLens-100K (u.data, u.item, u.user) into a data directory (DESIGN.md §7).

MovieLens is the public benchmark the project's offline numbers can be compared against;
importing it into the ordinary data directory format lets every tool read it unchanged.

Mapping:
- movies -> videos: video_id = movie id, title as given, tags = every flagged genre
  '|'-joined (in u.genre order), category = the movie's *most specific* genre, i.e. the
  one flagged on the fewest movies in the whole catalogue (ties -> u.genre order), so that
  "Toy Story" is Animation rather than the catch-all Comedy or Children's. The placeholder
  genre "unknown" is never a tag or category. upload_ts = release date (UTC midnight, unix
  seconds; empty when missing); creator_id, language and duration_s are empty.
- users keep age, gender, occupation and the zip code as the extra string column `zip`.
- ratings -> `rating` events with the 1-5 rating as value.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from vidrec import schema
from vidrec.data.dataset import DataError, Dataset, load_dataset, write_dataset

logger = logging.getLogger(__name__)

# u.genre order, used when the file itself is absent.
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western")
_ITEM_FIXED = ("movie_id", "title", "release_date", "video_release_date", "imdb_url")


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataError(path, None, None, "file not found (expected a MovieLens-100K "
                        "directory with u.data, u.item, u.user)")
    return path


def _genres(src: Path) -> list[str]:
    path = src / "u.genre"
    if not path.is_file():
        return list(GENRES)
    g = pd.read_csv(path, sep="|", header=None, names=["genre", "idx"], encoding="latin-1",
                    dtype={"genre": str, "idx": int})
    return list(g.sort_values("idx")["genre"])


def _videos(src: Path) -> pd.DataFrame:
    genres = _genres(src)
    path = _need(src / "u.item")
    items = pd.read_csv(path, sep="|", header=None, encoding="latin-1", dtype=str,
                        names=[*_ITEM_FIXED, *genres], na_filter=False, quoting=3)
    flags = items[genres].to_numpy() == "1"
    usable = np.array([g != "unknown" for g in genres])
    flags &= usable
    # Most specific = rarest genre over the catalogue; argmin over masked frequencies.
    freq = flags.sum(axis=0).astype(float)
    rank = np.where(flags, freq[None, :], np.inf)
    has_genre = flags.any(axis=1)
    best = np.argmin(rank, axis=1)
    names = np.array(genres, dtype=object)
    category = np.where(has_genre, names[best], "")
    tags = [schema.TAG_SEPARATOR.join(names[row]) for row in flags]
    released = pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce",
                              utc=True)
    upload_ts = (released - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    n = len(items)
    return pd.DataFrame({
        schema.VIDEO_ID: items["movie_id"].str.strip(),
        "title": items["title"],
        "category": category.astype(str),
        "tags": tags,
        "creator_id": [""] * n,
        "language": [""] * n,
        "duration_s": np.full(n, np.nan),
        "upload_ts": upload_ts.astype("float64"),
    })


def _users(src: Path) -> pd.DataFrame:
    path = _need(src / "u.user")
    u = pd.read_csv(path, sep="|", header=None, names=["user_id", "age", "gender",
                    "occupation", "zip"], dtype=str, na_filter=False, encoding="latin-1")
    n = len(u)
    return pd.DataFrame({
        schema.USER_ID: u["user_id"].str.strip(),
        "age": pd.to_numeric(u["age"], errors="coerce").astype("float64"),
        "gender": u["gender"],
        "country": [""] * n,
        "language": [""] * n,
        "occupation": u["occupation"],
        "zip": u["zip"],
    })


def _interactions(src: Path) -> pd.DataFrame:
    path = _need(src / "u.data")
    r = pd.read_csv(path, sep="\t", header=None, names=["user_id", "video_id", "rating", "ts"],
                    dtype={"user_id": str, "video_id": str, "rating": "float64",
                           "ts": "int64"})
    return pd.DataFrame({
        "user_id": r["user_id"], "video_id": r["video_id"], "timestamp": r["ts"],
        "event": ["rating"] * len(r), "value": r["rating"],
    })


def import_movielens(src: Path | str, out: Path | str) -> Dataset:
    """Convert MovieLens-100K at src into a data directory at out, and load it back.

    Loading the written directory with the ordinary validating loader makes the import
    prove that its output satisfies the contract.
    """
    src, out = Path(src), Path(out)
    ds = Dataset(videos=_videos(src), users=_users(src), interactions=_interactions(src))
    write_dataset(ds, out)
    loaded = load_dataset(out)
    logger.info("imported MovieLens from %s into %s: %d users, %d videos, %d ratings", src, out,
                len(loaded.users), len(loaded.videos), len(loaded.interactions))
    return loaded
