"""MovieLens-100K import: the real data (read in place, never copied) and the mapping rules."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vidrec.data.dataset import DataError, load_dataset
from vidrec.data.movielens import import_movielens

ML100K = Path(os.environ.get("VIDREC_ML100K", "/work/shared/data/ml-100k"))
GENRE_FLAGS = 19


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory):
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found at {ML100K} (set VIDREC_ML100K)")
    out = tmp_path_factory.mktemp("ml")
    return out, import_movielens(ML100K, out)


def test_counts(imported) -> None:
    _, ds = imported
    assert len(ds.users) == 943
    assert len(ds.videos) == 1682
    assert len(ds.interactions) == 100_000
    assert set(ds.interactions["event"]) == {"rating"}
    assert ds.interactions["value"].between(1, 5).all()


def test_output_loads_cleanly(imported) -> None:
    out, _ = imported
    ds = load_dataset(out)  # fail policy: any bad row would raise
    assert not ds.bad_rows
    assert list(ds.interactions["timestamp"]) == sorted(ds.interactions["timestamp"])


def test_movie_mapping(imported) -> None:
    _, ds = imported
    toy = ds.videos.set_index("video_id").loc["1"]
    assert toy["title"] == "Toy Story (1995)"
    assert toy["tags"] == "Animation|Children's|Comedy"
    assert toy["category"] == "Animation"  # the rarest of its genres
    assert toy["upload_ts"] == 788918400  # 01-Jan-1995 UTC
    assert toy["creator_id"] == "" and toy["language"] == "" and np.isnan(toy["duration_s"])
    unknown = ds.videos.set_index("video_id").loc["267"]  # no release date, no genre
    assert np.isnan(unknown["upload_ts"]) and unknown["category"] == ""


def test_user_mapping(imported) -> None:
    _, ds = imported
    u = ds.users.set_index("user_id").loc["1"]
    assert (u["age"], u["gender"], u["occupation"], u["zip"]) == (24, "M", "technician", "85711")
    assert ds.users["zip"].dtype != np.float64  # Canadian zips keep it a string column


def write_tiny(src: Path) -> None:
    """Two movies: category must be the catalogue-wide rarest of each movie's genres."""
    src.mkdir()
    flags = ["0"] * GENRE_FLAGS
    a, b = flags.copy(), flags.copy()
    a[1] = a[8] = "1"  # Action, Drama
    b[8] = "1"  # Drama only
    (src / "u.item").write_bytes(
        ("1|Caf\xe9 (1999)|05-Mar-1999||http://x|" + "|".join(a) + "\n"
         "2|Other (2000)|||http://y|" + "|".join(b) + "\n").encode("latin-1"))
    (src / "u.user").write_text("1|30|F|artist|02139\n")
    (src / "u.data").write_text("1\t1\t5\t900000000\n1\t2\t3\t899999999\n")


def test_tiny_import_rules(tmp_path: Path) -> None:
    write_tiny(tmp_path / "src")
    ds = import_movielens(tmp_path / "src", tmp_path / "out")
    v = ds.videos.set_index("video_id")
    assert v.loc["1", "title"] == "Caf\xe9 (1999)"  # latin-1 decoded, written as UTF-8
    assert v.loc["1", "category"] == "Action" and v.loc["1", "tags"] == "Action|Drama"
    assert v.loc["2", "category"] == "Drama" and np.isnan(v.loc["2", "upload_ts"])
    assert list(ds.interactions["video_id"]) == ["2", "1"]  # sorted by time
    assert ds.users["zip"].iloc[0] == "02139"  # leading zero kept


def test_missing_source_file(tmp_path: Path) -> None:
    write_tiny(tmp_path / "src")
    (tmp_path / "src" / "u.user").unlink()
    with pytest.raises(DataError) as info:
        import_movielens(tmp_path / "src", tmp_path / "out")
    assert "u.user" in str(info.value)
