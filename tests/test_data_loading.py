"""load_dataset / write_dataset: typing, and one test per kind of malformed input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vidrec.data.dataset import DataError, Dataset, load_dataset, write_dataset

VIDEOS = """video_id,title,category,tags,creator_id,language,duration_s,upload_ts,hd
v1,Cats,animals,cat|cute,c1,en,120,1700000000,1
v2,Dogs,animals,dog,c1,en,60.5,1700000100,0
v3,News,news,,c2,fr,,,1
"""
USERS = """user_id,age,gender,country,language,occupation,segment
u1,25,F,US,en,student,a
u2,,M,FR,fr,,b
"""
INTERACTIONS = """user_id,video_id,timestamp,event,value
u1,v1,1700000300,impression,
u1,v1,1700000310,click,
u1,v1,1700000320,watch,0.5
u2,v2,1700000200,rating,4
u2,v3,1700000400,like,
"""


def make_dir(tmp_path: Path, videos: str = VIDEOS, users: str = USERS,
             interactions: str = INTERACTIONS) -> Path:
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    (root / "videos.csv").write_text(videos)
    (root / "users.csv").write_text(users)
    (root / "interactions.csv").write_text(interactions)
    return root


def load_error(tmp_path: Path, **files: str) -> DataError:
    with pytest.raises(DataError) as info:
        load_dataset(make_dir(tmp_path, **files))
    return info.value


def assert_located(err: DataError, file: str, line: int | None, column: str | None) -> None:
    """The message must let a person find the cell: file, line and column."""
    text = str(err)
    assert err.file.endswith(file) and file in text
    assert err.line == line
    assert err.column == column
    if line is not None:
        assert f"line {line}" in text
    if column is not None:
        assert repr(column) in text


# --- the happy path -------------------------------------------------------------------


def test_valid_directory_loads_typed(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path))
    v, u, i = ds.videos, ds.users, ds.interactions
    assert list(v["video_id"]) == ["v1", "v2", "v3"]
    assert v["duration_s"].dtype == np.float64 and np.isnan(v["duration_s"].iloc[2])
    assert v["upload_ts"].dtype == np.float64
    assert v["tags"].iloc[0] == "cat|cute" and v["tags"].iloc[2] == ""
    assert v["hd"].dtype == np.float64  # numeric extra column
    assert u["age"].dtype == np.float64 and np.isnan(u["age"].iloc[1])
    assert u["occupation"].iloc[1] == ""
    assert u["segment"].iloc[0] == "a"  # string extra column stays a string
    assert i["timestamp"].dtype == np.int64 and i["value"].dtype == np.float64
    assert list(i["timestamp"]) == sorted(i["timestamp"])
    assert i["event"].iloc[0] == "rating" and i["value"].iloc[0] == 4.0
    assert np.isnan(i["value"].iloc[1])
    assert not ds.bad_rows and ds.root == make_dir(tmp_path)


def test_minimal_columns_get_known_columns_filled(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path, videos="video_id\nv1\nv2\nv3\n",
                               users="user_id\nu1\nu2\n",
                               interactions="user_id,video_id,timestamp,event\n"
                                            "u1,v1,5,click\n"))
    assert (ds.videos["category"] == "").all() and ds.videos["duration_s"].isna().all()
    assert ds.users["age"].isna().all() and (ds.users["country"] == "").all()
    assert ds.interactions["value"].isna().all()


def test_header_only_files_give_empty_typed_tables(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path, videos="video_id,duration_s\n", users="user_id\n",
                               interactions="user_id,video_id,timestamp,event,value\n"))
    assert len(ds.videos) == len(ds.users) == len(ds.interactions) == 0
    assert ds.interactions["timestamp"].dtype == np.int64
    assert ds.videos["duration_s"].dtype == np.float64


def test_sort_is_stable_for_equal_timestamps(tmp_path: Path) -> None:
    rows = "".join(f"u1,v1,100,{e},\n" for e in ("impression", "click", "like", "share"))
    ds = load_dataset(make_dir(tmp_path, interactions="user_id,video_id,timestamp,event,value\n"
                               "u1,v1,200,skip,\n" + rows))
    assert list(ds.interactions["event"]) == ["impression", "click", "like", "share", "skip"]


def test_quoted_fields_and_crlf(tmp_path: Path) -> None:
    videos = ('video_id,title,tags\r\nv1,"Cats, dogs and ""more""",a|b\r\n'
              'v2,"two\nlines",c\r\nv3,x,\r\n')
    ds = load_dataset(make_dir(tmp_path, videos=videos))
    assert ds.videos["title"].iloc[0] == 'Cats, dogs and "more"'
    assert ds.videos["title"].iloc[1] == "two\nlines"


def test_write_round_trip(tmp_path: Path) -> None:
    ds = load_dataset(make_dir(tmp_path))
    write_dataset(ds, tmp_path / "copy")
    again = load_dataset(tmp_path / "copy")
    for a, b in ((ds.videos, again.videos), (ds.users, again.users),
                 (ds.interactions, again.interactions)):
        pd.testing.assert_frame_equal(a, b)
    text = (tmp_path / "copy" / "videos.csv").read_text().splitlines()
    assert text[0].startswith("video_id,title,category,tags")
    assert text[1] == "v1,Cats,animals,cat|cute,c1,en,120.0,1700000000,1"


def test_write_joins_tag_lists(tmp_path: Path) -> None:
    ds = Dataset(videos=pd.DataFrame({"video_id": ["v1"], "tags": [["a", "b"]]}),
                 users=pd.DataFrame({"user_id": ["u1"]}),
                 interactions=pd.DataFrame({"user_id": ["u1"], "video_id": ["v1"],
                                            "timestamp": [1], "event": ["click"],
                                            "value": [np.nan]}))
    write_dataset(ds, tmp_path / "out")
    assert load_dataset(tmp_path / "out").videos["tags"].iloc[0] == "a|b"


# --- structural problems: always raise ------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    root = make_dir(tmp_path)
    (root / "users.csv").unlink()
    with pytest.raises(DataError) as info:
        load_dataset(root, on_bad_rows="skip")
    assert_located(info.value, "users.csv", None, None)
    assert "not found" in str(info.value)


def test_empty_file_needs_header(tmp_path: Path) -> None:
    err = load_error(tmp_path, videos="")
    assert_located(err, "videos.csv", 1, None)
    assert "header" in str(err)


@pytest.mark.parametrize("file,text,column", [
    ("videos", "title,category\nx,y\n", "video_id"),
    ("users", "age\n3\n", "user_id"),
    ("interactions", "user_id,video_id,timestamp,value\nu1,v1,1,\n", "event"),
    ("interactions", "user_id,video_id,event,value\nu1,v1,click,\n", "timestamp"),
])
def test_missing_required_column(tmp_path: Path, file: str, text: str, column: str) -> None:
    root = make_dir(tmp_path, **{file: text})
    for policy in ("fail", "skip"):
        with pytest.raises(DataError) as info:
            load_dataset(root, on_bad_rows=policy)  # type: ignore[arg-type]
        assert_located(info.value, f"{file}.csv", 1, column)
        assert "missing required column" in str(info.value)


def test_duplicate_header_column(tmp_path: Path) -> None:
    err = load_error(tmp_path, users="user_id,age,age\nu1,3,4\nu2,5,6\n")
    assert_located(err, "users.csv", 1, "age")


# --- bad rows -------------------------------------------------------------------------


def test_unknown_event_type(tmp_path: Path) -> None:
    err = load_error(tmp_path, interactions=INTERACTIONS + "u1,v2,1700000500,purchase,\n")
    assert_located(err, "interactions.csv", 7, "event")
    assert "unknown event type 'purchase'" in str(err)


@pytest.mark.parametrize("value", ["0", "6", "5.5", "great", ""])
def test_rating_outside_1_to_5_or_not_a_number(tmp_path: Path, value: str) -> None:
    err = load_error(tmp_path, interactions=INTERACTIONS + f"u1,v2,1700000500,rating,{value}\n")
    assert_located(err, "interactions.csv", 7, "value")
    assert "rating" in str(err)


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half", ""])
def test_watch_fraction_outside_0_to_1(tmp_path: Path, value: str) -> None:
    err = load_error(tmp_path, interactions=INTERACTIONS + f"u1,v2,1700000500,watch,{value}\n")
    assert_located(err, "interactions.csv", 7, "value")
    assert "watch" in str(err)


def test_non_numeric_timestamp(tmp_path: Path) -> None:
    err = load_error(tmp_path, interactions=INTERACTIONS + "u1,v2,yesterday,click,\n")
    assert_located(err, "interactions.csv", 7, "timestamp")
    assert "'yesterday'" in str(err)


def test_negative_timestamp(tmp_path: Path) -> None:
    err = load_error(tmp_path, interactions=INTERACTIONS + "u1,v2,-5,click,\n")
    assert_located(err, "interactions.csv", 7, "timestamp")
    assert "negative" in str(err)


def test_empty_timestamp(tmp_path: Path) -> None:
    err = load_error(tmp_path, interactions=INTERACTIONS + "u1,v2,,click,\n")
    assert_located(err, "interactions.csv", 7, "timestamp")


def test_unknown_video(tmp_path: Path) -> None:
    err = load_error(tmp_path, interactions=INTERACTIONS + "u1,v99,1700000500,click,\n")
    assert_located(err, "interactions.csv", 7, "video_id")
    assert "unknown video_id 'v99'" in str(err) and "videos.csv" in str(err)


def test_unknown_user(tmp_path: Path) -> None:
    err = load_error(tmp_path, interactions=INTERACTIONS + "u42,v1,1700000500,click,\n")
    assert_located(err, "interactions.csv", 7, "user_id")
    assert "unknown user_id 'u42'" in str(err)


def test_duplicate_video_id_names_earlier_line(tmp_path: Path) -> None:
    err = load_error(tmp_path, videos=VIDEOS + "v2,Again,x,,,,,,0\n")
    assert_located(err, "videos.csv", 5, "video_id")
    assert "duplicate video_id 'v2'" in str(err) and "line 3" in str(err)


def test_duplicate_user_id_names_earlier_line(tmp_path: Path) -> None:
    err = load_error(tmp_path, users=USERS + "u1,30,F,US,en,,c\n")
    assert_located(err, "users.csv", 4, "user_id")
    assert "first on line 2" in str(err)


def test_empty_id(tmp_path: Path) -> None:
    err = load_error(tmp_path, users=USERS + ",30,F,US,en,,c\n")
    assert_located(err, "users.csv", 4, "user_id")


@pytest.mark.parametrize("row,found", [("v4,T,c,,c1,en,60,1,1,extra\n", 10),
                                       ("v4,T,c\n", 3)])
def test_wrong_number_of_fields(tmp_path: Path, row: str, found: int) -> None:
    err = load_error(tmp_path, videos=VIDEOS + row)
    assert err.file.endswith("videos.csv") and err.line == 5
    assert f"expected 9 fields (as in the header), found {found}" in str(err)


def test_wrong_number_of_fields_in_quoted_file(tmp_path: Path) -> None:
    videos = 'video_id,title\nv1,"a\nb"\nv2,"c, d"\nv3,x,y\n'
    err = load_error(tmp_path, videos=videos)
    assert err.line == 5 and "found 3" in str(err)


@pytest.mark.parametrize("file,row,line,column", [
    ("videos", "v4,T,c,,c1,en,long,1700000000,1\n", 5, "duration_s"),
    ("videos", "v4,T,c,,c1,en,60,2023-01-01,1\n", 5, "upload_ts"),
    ("users", "u3,old,F,US,en,,c\n", 4, "age"),
])
def test_non_numeric_known_column(tmp_path: Path, file: str, row: str, line: int,
                                  column: str) -> None:
    base = {"videos": VIDEOS, "users": USERS}[file]
    err = load_error(tmp_path, **{file: base + row})
    assert_located(err, f"{file}.csv", line, column)
    assert "non-numeric" in str(err)


@pytest.mark.parametrize("file,row,line,column", [
    ("videos", "v4,T,c,,c1,en,nan,1700000000,1\n", 5, "duration_s"),
    ("videos", "v4,T,c,,c1,en,60,inf,1\n", 5, "upload_ts"),
    ("users", "u3,NaN,F,US,en,,c\n", 4, "age"),
    ("videos", "v4,T,c,,c1,en,60,1,-inf\n", 5, "hd"),
    ("interactions", "u1,v1,inf,click,\n", 7, "timestamp"),
    ("interactions", "u1,v1,1700000500,share,nan\n", 7, "value"),
])
def test_nan_and_inf_numbers(tmp_path: Path, file: str, row: str, line: int,
                             column: str) -> None:
    base = {"videos": VIDEOS, "users": USERS, "interactions": INTERACTIONS}[file]
    err = load_error(tmp_path, **{file: base + row})
    assert_located(err, f"{file}.csv", line, column)
    assert "not a finite number" in str(err)


def test_negative_duration_and_age(tmp_path: Path) -> None:
    err = load_error(tmp_path, videos=VIDEOS + "v4,T,c,,c1,en,-3,1,1\n")
    assert_located(err, "videos.csv", 5, "duration_s")
    err = load_error(tmp_path, videos=VIDEOS, users=USERS + "u3,-1,F,US,en,,c\n")
    assert_located(err, "users.csv", 4, "age")


def test_fail_reports_the_first_bad_line(tmp_path: Path) -> None:
    rows = "u1,v1,1700000500,watch,7\nu1,v1,1700000501,oops,\n"
    err = load_error(tmp_path, interactions=INTERACTIONS.replace(
        "u1,v1,1700000310,click,", "u9,v1,1700000310,click,") + rows)
    assert_located(err, "interactions.csv", 3, "user_id")


def test_line_numbers_count_blank_and_multiline_rows(tmp_path: Path) -> None:
    videos = 'video_id,title\nv1,"a\nb"\n\nv2,x\nv1,dup\n'
    err = load_error(tmp_path, videos=videos)
    assert_located(err, "videos.csv", 6, "video_id")
    assert "first on line 2" in str(err)
    unquoted = "video_id,title\nv1,a\n\nv2,x\nv2,dup\n"
    err = load_error(tmp_path, videos=unquoted)
    assert_located(err, "videos.csv", 5, "video_id")
    assert "first on line 4" in str(err)


# --- skip policy ----------------------------------------------------------------------


def test_skip_drops_and_reports_bad_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                         ) -> None:
    videos = VIDEOS + "v4,T,c,,c1,en,long,1,1\nv5,T,c\n"
    interactions = INTERACTIONS + (
        "u1,v2,1700000500,purchase,\n"
        "u1,v2,1700000501,purchase,\n"
        "u1,v4,1700000502,click,\n"  # v4 was dropped -> unknown video, reported too
        "u1,v2,1700000503,rating,9\n"
        "u1,v2,1700000504,click,\n"  # fine
    )
    root = make_dir(tmp_path, videos=videos, interactions=interactions)
    with caplog.at_level(logging.WARNING, logger="vidrec.data.dataset"):
        ds = load_dataset(root, on_bad_rows="skip")
    assert list(ds.videos["video_id"]) == ["v1", "v2", "v3"]
    assert len(ds.interactions) == 6
    report = ds.bad_rows
    assert report.total == 6
    assert report.counts == {
        "videos.csv: wrong number of fields": 1,
        "videos.csv: non-numeric value": 1,
        "interactions.csv: unknown event type": 2,
        "interactions.csv: rating not a number from 1 to 5": 1,
        "interactions.csv: unknown video_id": 1,
    }
    unknown = report.examples["interactions.csv: unknown event type"]
    assert [e.line for e in unknown] == [7, 8] and unknown[0].column == "event"
    assert report.examples["interactions.csv: unknown video_id"][0].line == 9
    assert any("line 6" in m for m in report.messages())
    assert "6 bad rows skipped" in caplog.text and "unknown event type" in caplog.text


def test_skip_counts_each_row_once_and_keeps_few_examples(tmp_path: Path) -> None:
    bad = "".join(f"u1,v9,x{k},oops,\n" for k in range(10))
    ds = load_dataset(make_dir(tmp_path, interactions=INTERACTIONS + bad), on_bad_rows="skip")
    assert ds.bad_rows.total == 10
    assert ds.bad_rows.counts == {"interactions.csv: non-numeric value": 10}
    assert len(ds.bad_rows.examples["interactions.csv: non-numeric value"]) == 3


def test_skip_keeps_later_copy_when_first_copy_is_bad(tmp_path: Path) -> None:
    videos = VIDEOS + "v4,T,c,,c1,en,bad,1,1\nv4,T,c,,c1,en,5,1,1\n"
    ds = load_dataset(make_dir(tmp_path, videos=videos), on_bad_rows="skip")
    assert list(ds.videos["video_id"]) == ["v1", "v2", "v3", "v4"]
    assert ds.videos["duration_s"].iloc[3] == 5.0


def test_unknown_policy_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load_dataset(make_dir(tmp_path), on_bad_rows="ignore")  # type: ignore[arg-type]


def test_extra_column_with_leading_zeros_stays_a_string(tmp_path: Path) -> None:
    users = "user_id,zip,score\nu1,02139,7\nu2,94043,8\n"
    ds = load_dataset(make_dir(tmp_path, users=users, interactions=INTERACTIONS.replace(
        "u2,v2,1700000200,rating,4\n", "").replace("u2,v3,1700000400,like,\n", "")))
    assert list(ds.users["zip"]) == ["02139", "94043"]
    assert ds.users["score"].dtype == np.float64
