"""Typed tables of a data directory (DESIGN.md §7): loading with validation, and writing.

Loading is vectorised (pandas over string columns, numpy masks) so that a million interaction
rows load in about a second; per-row Python work happens only to build the messages of the
few rows that are reported. Every complaint names file, line (1-based, header = line 1) and
column, because whoever fixes the data has only the file in front of them.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from vidrec import schema

logger = logging.getLogger(__name__)

BadRowPolicy = Literal["fail", "skip"]

# Known string columns ('' when missing) and numeric ones (NaN when missing).
_VIDEO_STR = tuple(c for c, k in schema.VIDEO_COLUMNS.items() if k != "numeric")
_VIDEO_NUM = tuple(c for c, k in schema.VIDEO_COLUMNS.items() if k == "numeric")
_USER_STR = tuple(c for c, k in schema.USER_COLUMNS.items() if k != "numeric")
_USER_NUM = tuple(c for c, k in schema.USER_COLUMNS.items() if k == "numeric")
_INTERACTION_REQUIRED = ("user_id", "video_id", "timestamp", "event")
# Numeric known columns that cannot be negative (upload_ts can: old films predate 1970).
_NON_NEGATIVE = frozenset({"duration_s", "age"})
_NON_FINITE_WORDS = frozenset({"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity",
                               "+infinity", "-infinity"})
_EXAMPLES_PER_REASON = 3


class DataError(ValueError):
    """A malformed input, located by file, line (1-based, header = line 1) and column."""

    def __init__(self, file: Path | str, line: int | None, column: str | None, message: str):
        self.file, self.line, self.column, self.reason = str(file), line, column, message
        where = self.file
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")


@dataclass
class BadRowReport:
    """What `on_bad_rows="skip"` dropped, so that skipping is never silent.

    counts: rows dropped per reason, keyed "<file name>: <reason>"; a row with several
      problems is counted once, under the first check it failed.
    examples: per key, the first few DataErrors (file, line, column, message).
    """

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[DataError]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def messages(self) -> list[str]:
        """Every kept example as its full 'file, line N, column C: message' text."""
        return [str(e) for errs in self.examples.values() for e in errs]

    def summary(self) -> str:
        """One line per reason with its count and first example, for logs and CLIs."""
        if not self:
            return "no bad rows"
        lines = [f"{self.total} bad rows skipped"]
        for key, n in self.counts.items():
            first = self.examples.get(key, [])
            lines.append(f"  {n} x {key}" + (f" (e.g. {first[0]})" if first else ""))
        return "\n".join(lines)


@dataclass
class Dataset:
    """A loaded data directory.

    videos: video_id (str) + known columns typed (title/category/tags/creator_id/language:
      str, '' when missing; duration_s/upload_ts: float64, NaN when missing) + extra columns.
    users: user_id (str) + age (float64, NaN when missing), gender/country/language/
      occupation (str) + extras.
    interactions: user_id (str), video_id (str), timestamp (int64 unix s), event (str, one of
      schema.EVENT_TYPES), value (float64, NaN when empty); sorted by timestamp (stable).
    Extra columns are float64 when every non-empty value is a number (and none has a
    leading zero, like a zip code), else str.
    Known columns absent from the file are present, filled with ''/NaN, so code downstream
    never has to ask whether a column exists.
    bad_rows: what on_bad_rows="skip" dropped (empty otherwise).
    """

    videos: pd.DataFrame
    users: pd.DataFrame
    interactions: pd.DataFrame
    root: Path | None = None
    bad_rows: BadRowReport = field(default_factory=BadRowReport)


# --- reading raw tables ---------------------------------------------------------------


@dataclass
class _Issue:
    """Rows that failed one check: positions in the table (or None for unparsed lines)."""

    reason: str
    column: str | None
    lines: np.ndarray  # file line numbers, ascending
    message: Callable[[int], str]  # k-th offending row -> message naming its value
    rows: np.ndarray | None = None  # positions in the raw table, aligned with lines


@dataclass
class _Raw:
    """A CSV as string columns, with the file line each row came from."""

    path: Path
    df: pd.DataFrame
    lines: np.ndarray
    issues: list[_Issue] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name


def _read_raw(path: Path, required: tuple[str, ...]) -> _Raw:
    """Read a CSV as strings; rows with the wrong number of fields become issues."""
    if not path.is_file():
        raise DataError(path, None, None, "file not found (a data directory needs "
                        f"{schema.VIDEOS_FILE}, {schema.USERS_FILE}, {schema.INTERACTIONS_FILE})")
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    first_end = data.find(b"\n")
    header_bytes = data if first_end < 0 else data[:first_end]
    try:
        header_text = header_bytes.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as e:
        raise DataError(path, 1, None, f"not UTF-8 text: {e}") from None
    if not header_text.strip():
        raise DataError(path, 1, None, "empty header: a header row naming the columns is "
                        "required")
    cols = [c.strip() for c in next(csv.reader([header_text]))]
    seen: set[str] = set()
    for c in cols:
        if not c:
            raise DataError(path, 1, None, "empty column name in header")
        if c in seen:
            raise DataError(path, 1, c, "duplicate column in header")
        seen.add(c)
    for c in required:
        if c not in seen:
            raise DataError(path, 1, c, f"missing required column {c!r} (header has: "
                            f"{', '.join(cols)})")
    try:
        if b'"' in data:
            raw = _read_quoted(path, data, cols)
        else:
            raw = _read_unquoted(path, data, cols)
    except UnicodeDecodeError as e:
        raise DataError(path, None, None, f"not UTF-8 text: {e}") from None
    return raw


def _field_count_message(n: int, found: np.ndarray) -> Callable[[int], str]:
    return lambda k: f"expected {n} fields (as in the header), found {int(found[k])}"


def _read_unquoted(path: Path, data: bytes, cols: list[str]) -> _Raw:
    """Fast path: without quotes, fields per line are commas per line + 1 (numpy)."""
    n = len(cols)
    arr = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(arr == 10)
    starts = np.concatenate(([0], nl + 1))
    ends = np.concatenate((nl, [len(arr)]))
    if len(data) and data.endswith(b"\n"):
        starts, ends = starts[:-1], ends[:-1]
    content_end = ends.copy()
    has_cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13)
    content_end[has_cr] -= 1
    commas = np.flatnonzero(arr == 44)
    fields = np.searchsorted(commas, content_end) - np.searchsorted(commas, starts) + 1
    blank = content_end == starts
    line_no = np.arange(1, len(starts) + 1)
    good = ~blank & (fields == n)
    good[0] = True  # the header, already checked
    wrong = ~good & ~blank
    issues = []
    if wrong.any():
        found = fields[wrong]
        issues.append(_Issue("wrong number of fields", None, line_no[wrong],
                             _field_count_message(n, found)))
    if good.all():
        body = data
    else:
        nxt = np.concatenate((starts[1:], [len(arr)]))
        keep = np.repeat(good, nxt - starts)
        body = arr[keep].tobytes()
        if not body.endswith(b"\n"):
            body += b"\n"
    lines = line_no[good][1:]
    df = pd.read_csv(io.BytesIO(body), dtype=str, na_filter=False, keep_default_na=False,
                     header=0, names=cols, skip_blank_lines=False, engine="c")
    if len(df) != len(lines):
        # Line endings pandas splits differently (a bare '\r'): take the exact slow path.
        return _read_quoted(path, data, cols)
    return _Raw(path, df, lines, issues)


def _read_quoted(path: Path, data: bytes, cols: list[str]) -> _Raw:
    """Exact path for files with quoted fields (a title may hold commas or newlines)."""
    n = len(cols)
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    rows: list[list[str]] = []
    lines: list[int] = []
    bad_lines: list[int] = []
    bad_found: list[int] = []
    prev_end = 0
    try:
        next(reader)
        prev_end = reader.line_num
        for rec in reader:
            start, prev_end = prev_end + 1, reader.line_num
            if not rec:
                continue
            if len(rec) == n:
                rows.append(rec)
                lines.append(start)
            else:
                bad_lines.append(start)
                bad_found.append(len(rec))
    except csv.Error as e:
        raise DataError(path, prev_end + 1, None, f"unreadable CSV: {e}") from None
    df = pd.DataFrame(rows, columns=cols, dtype=str) if rows else _empty_str_frame(cols)
    issues = []
    if bad_lines:
        found = np.asarray(bad_found)
        issues.append(_Issue("wrong number of fields", None, np.asarray(bad_lines),
                             _field_count_message(n, found)))
    return _Raw(path, df, np.asarray(lines, dtype=np.int64), issues)


def _empty_str_frame(cols: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=str) for c in cols})


# --- checks ---------------------------------------------------------------------------


class _Checker:
    """Accumulates the issues of one table as boolean masks over its rows."""

    def __init__(self, raw: _Raw) -> None:
        self.raw = raw
        self.bad = np.zeros(len(raw.df), dtype=bool)

    def flag(self, mask: np.ndarray, reason: str, column: str | None,
             message: Callable[[str], str], values: pd.Series | None = None) -> None:
        """Record rows in mask; message gets the offending cell's text."""
        rows = np.flatnonzero(mask)
        if len(rows) == 0:
            return
        cells = values if values is not None else (
            self.raw.df[column] if column is not None else None)

        def msg(k: int) -> str:
            return message("" if cells is None else str(cells.iloc[rows[k]]))

        self.raw.issues.append(_Issue(reason, column, self.raw.lines[rows], msg, rows))
        self.bad[rows] = True

    def numeric(self, column: str, *, required_nonneg: bool = False,
                allow_empty: bool = True) -> np.ndarray:
        """Parse a numeric column (float64, NaN for empty); flag non-numbers and NaN/inf."""
        s = self.raw.df[column]
        values, empty, nonnumeric, nonfinite = _parse_numbers(s)
        self.flag(nonnumeric, "non-numeric value", column,
                  lambda v: f"non-numeric value {v!r} in numeric column {column!r}")
        self.flag(nonfinite, "NaN or infinite number", column,
                  lambda v: f"value {v!r} is not a finite number")
        if not allow_empty:
            self.flag(empty, "empty value", column, lambda v: f"empty {column}")
        if required_nonneg:
            neg = ~empty & ~nonnumeric & ~nonfinite & (values < 0)
            self.flag(neg, "negative value", column,
                      lambda v: f"negative value {v} in column {column!r}")
        return values

    def nonempty(self, column: str) -> None:
        empty = (self.raw.df[column] == "").to_numpy()
        self.flag(empty, f"empty {column}", column, lambda v: f"empty {column}")

    def unique(self, column: str) -> None:
        """Flag repeats of an id among rows that are otherwise fine, naming the first line."""
        ok = np.flatnonzero(~self.bad)
        ids = self.raw.df[column].iloc[ok]
        dup = ids.duplicated(keep="first").to_numpy()
        if not dup.any():
            return
        first_row = ids[~dup].reset_index(drop=True)
        first_line = pd.Series(self.raw.lines[ok][~dup], index=first_row.to_numpy())
        mask = np.zeros(len(self.raw.df), dtype=bool)
        mask[ok[dup]] = True
        self.flag(mask, f"duplicate {column}", column,
                  lambda v: f"duplicate {column} {v!r} (first on line {first_line[v]})")


def _parse_numbers(s: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised float parse -> (values, empty, non-numeric, NaN/inf) arrays."""
    text = s.to_numpy(dtype=object)
    empty = (s == "").to_numpy()
    values = np.full(len(s), np.nan)
    nonnumeric = np.zeros(len(s), dtype=bool)
    nonfinite = np.zeros(len(s), dtype=bool)
    idx = np.flatnonzero(~empty)
    if len(idx) == 0:
        return values, empty, nonnumeric, nonfinite
    sub = text[idx]
    try:
        parsed = sub.astype(np.float64)
    except (ValueError, TypeError):
        parsed = pd.to_numeric(pd.Series(sub, dtype=object), errors="coerce").to_numpy(
            dtype=np.float64)
    values[idx] = parsed
    nan = np.isnan(parsed)
    if nan.any():
        words = np.array([str(t).strip().lower() in _NON_FINITE_WORDS for t in sub[nan]])
        where_nan = idx[nan]
        nonfinite[where_nan[words]] = True
        nonnumeric[where_nan[~words]] = True
    nonfinite[idx[np.isinf(parsed)]] = True
    values[nonnumeric | nonfinite] = np.nan
    return values, empty, nonnumeric, nonfinite


def _is_numeric_column(s: pd.Series) -> bool:
    """An extra column is numeric when it has values and every non-empty one is a number,
    unless some value has a leading zero ("02139"): that is a code (zip, phone), a label."""
    _, empty, nonnumeric, _ = _parse_numbers(s)
    if not (~empty).any() or nonnumeric.any():
        return False
    return not bool(s.str.match(r"[+-]?0\d").any())


def _extras(checker: _Checker, known: set[str]) -> dict[str, pd.Series | np.ndarray]:
    """Type the extra (feature) columns: numbers -> float64, anything else -> str."""
    out: dict[str, pd.Series | np.ndarray] = {}
    for c in checker.raw.df.columns:
        if c in known:
            continue
        s = checker.raw.df[c]
        out[c] = checker.numeric(c) if _is_numeric_column(s) else s
    return out


# --- per-table validation -------------------------------------------------------------


def _check_videos(raw: _Raw) -> tuple[_Checker, dict[str, pd.Series | np.ndarray]]:
    ck = _Checker(raw)
    df = raw.df
    ck.nonempty(schema.VIDEO_ID)
    cols: dict[str, pd.Series | np.ndarray] = {schema.VIDEO_ID: df[schema.VIDEO_ID]}
    for c in _VIDEO_STR:
        cols[c] = df[c] if c in df.columns else pd.Series([""] * len(df), dtype=str)
    for c in _VIDEO_NUM:
        cols[c] = (ck.numeric(c, required_nonneg=c in _NON_NEGATIVE) if c in df.columns
                   else np.full(len(df), np.nan))
    cols.update(_extras(ck, {schema.VIDEO_ID, *schema.VIDEO_COLUMNS}))
    ck.unique(schema.VIDEO_ID)
    return ck, cols


def _check_users(raw: _Raw) -> tuple[_Checker, dict[str, pd.Series | np.ndarray]]:
    ck = _Checker(raw)
    df = raw.df
    ck.nonempty(schema.USER_ID)
    cols: dict[str, pd.Series | np.ndarray] = {schema.USER_ID: df[schema.USER_ID]}
    for c in _USER_NUM:
        cols[c] = (ck.numeric(c, required_nonneg=c in _NON_NEGATIVE) if c in df.columns
                   else np.full(len(df), np.nan))
    for c in _USER_STR:
        cols[c] = df[c] if c in df.columns else pd.Series([""] * len(df), dtype=str)
    cols.update(_extras(ck, {schema.USER_ID, *schema.USER_COLUMNS}))
    ck.unique(schema.USER_ID)
    return ck, cols


def _check_interactions(raw: _Raw, video_ids: pd.Series, user_ids: pd.Series
                        ) -> tuple[_Checker, dict[str, pd.Series | np.ndarray]]:
    ck = _Checker(raw)
    df = raw.df
    ck.nonempty("user_id")
    ck.nonempty("video_id")

    ts = ck.numeric("timestamp", allow_empty=False)
    ts_neg = ts < 0  # NaN (already flagged) compares False
    ck.flag(ts_neg, "negative timestamp", "timestamp",
            lambda v: f"negative timestamp {v} (expected unix seconds)")

    event = df["event"]
    known_event = event.isin(schema.EVENT_TYPES).to_numpy()
    allowed = ", ".join(schema.EVENT_TYPES)
    ck.flag(~known_event, "unknown event type", "event",
            lambda v: f"unknown event type {v!r} (expected one of {allowed})")

    if "value" in df.columns:
        vtext = df["value"]
        value, vempty, vnonnum, vnonfin = _parse_numbers(vtext)
    else:
        vtext = pd.Series([""] * len(df), dtype=str)
        value = np.full(len(df), np.nan)
        vempty = np.ones(len(df), dtype=bool)
        vnonnum = vnonfin = np.zeros(len(df), dtype=bool)
    is_rating = (event == "rating").to_numpy()
    is_watch = (event == "watch").to_numpy()
    with np.errstate(invalid="ignore"):
        rating_bad = is_rating & (vempty | vnonnum | vnonfin | ~((value >= 1) & (value <= 5)))
        watch_bad = is_watch & (vempty | vnonnum | vnonfin | ~((value >= 0) & (value <= 1)))
    ck.flag(rating_bad, "rating not a number from 1 to 5", "value",
            lambda v: f"rating must be a number from 1 to 5, got {v!r}", vtext)
    ck.flag(watch_bad, "watch fraction not from 0 to 1", "value",
            lambda v: f"watch value must be the watched fraction from 0 to 1, got {v!r}", vtext)
    other = ~is_rating & ~is_watch
    ck.flag(other & vnonnum, "non-numeric value", "value",
            lambda v: f"non-numeric value {v!r}", vtext)
    ck.flag(other & vnonfin, "NaN or infinite number", "value",
            lambda v: f"value {v!r} is not a finite number", vtext)

    extras = _extras(ck, set(schema.INTERACTION_COLUMNS))

    # References are checked against the rows kept from videos.csv / users.csv, so in
    # "skip" mode an interaction with a dropped video is dropped (and reported) too.
    ok = ~ck.bad
    unknown_video = ok & ~df["video_id"].isin(video_ids).to_numpy()
    ck.flag(unknown_video, "unknown video_id", "video_id",
            lambda v: f"unknown video_id {v!r} (not in {schema.VIDEOS_FILE})")
    unknown_user = ok & ~df["user_id"].isin(user_ids).to_numpy()
    ck.flag(unknown_user, "unknown user_id", "user_id",
            lambda v: f"unknown user_id {v!r} (not in {schema.USERS_FILE})")

    with np.errstate(invalid="ignore"):
        ts_int = np.where(np.isfinite(ts), np.floor(ts), 0).astype(np.int64)
    cols: dict[str, pd.Series | np.ndarray] = {
        "user_id": df["user_id"], "video_id": df["video_id"], "timestamp": ts_int,
        "event": event, "value": value,
    }
    cols.update(extras)
    return ck, cols


# --- policy ---------------------------------------------------------------------------


def _error(raw: _Raw, issue: _Issue, k: int) -> DataError:
    return DataError(raw.path, int(issue.lines[k]), issue.column, issue.message(k))


def _apply_policy(ck: _Checker, cols: dict[str, pd.Series | np.ndarray],
                  policy: BadRowPolicy, report: BadRowReport) -> pd.DataFrame:
    """Raise on the first bad line ("fail") or drop and report bad rows ("skip")."""
    raw = ck.raw
    if raw.issues and policy == "fail":
        issue = min(raw.issues, key=lambda i: int(i.lines[0]))
        raise _error(raw, issue, 0)
    claimed = np.zeros(len(raw.df), dtype=bool)
    for issue in raw.issues:
        if issue.rows is None:
            fresh = np.arange(len(issue.lines))
        else:
            fresh = np.flatnonzero(~claimed[issue.rows])
            claimed[issue.rows] = True
        if len(fresh) == 0:
            continue
        key = f"{raw.name}: {issue.reason}"
        report.counts[key] = report.counts.get(key, 0) + len(fresh)
        examples = report.examples.setdefault(key, [])
        for k in fresh[: max(0, _EXAMPLES_PER_REASON - len(examples))]:
            examples.append(_error(raw, issue, int(k)))
    keep = np.flatnonzero(~ck.bad)
    every = len(keep) == len(raw.df)
    out: dict[str, pd.Series] = {}
    for c, v in cols.items():
        s = v if isinstance(v, pd.Series) else pd.Series(v)
        out[c] = (s if every else s.iloc[keep]).reset_index(drop=True)
    return pd.DataFrame(out)


def load_dataset(root: Path | str, on_bad_rows: BadRowPolicy = "fail") -> Dataset:
    """Load and validate a data directory (videos.csv, users.csv, interactions.csv).

    on_bad_rows="fail" raises DataError at the first bad row of the first file that has
    one; "skip" drops bad rows, logs a warning and records them in Dataset.bad_rows.
    Missing files, unreadable headers and missing required columns always raise.
    """
    if on_bad_rows not in ("fail", "skip"):
        raise ValueError(f"on_bad_rows must be 'fail' or 'skip', not {on_bad_rows!r}")
    root = Path(root)
    t0 = time.perf_counter()
    report = BadRowReport()

    raw_v = _read_raw(root / schema.VIDEOS_FILE, (schema.VIDEO_ID,))
    raw_u = _read_raw(root / schema.USERS_FILE, (schema.USER_ID,))
    raw_i = _read_raw(root / schema.INTERACTIONS_FILE, _INTERACTION_REQUIRED)

    videos = _apply_policy(*_check_videos(raw_v), on_bad_rows, report)
    users = _apply_policy(*_check_users(raw_u), on_bad_rows, report)
    ck, cols = _check_interactions(raw_i, videos[schema.VIDEO_ID], users[schema.USER_ID])
    interactions = _apply_policy(ck, cols, on_bad_rows, report)
    interactions = interactions.sort_values("timestamp", kind="stable").reset_index(drop=True)

    if report:
        logger.warning("%s: %s", root, report.summary())
    logger.info("loaded %s: %d videos, %d users, %d interactions in %.1fs", root,
                len(videos), len(users), len(interactions), time.perf_counter() - t0)
    return Dataset(videos=videos, users=users, interactions=interactions, root=root,
                   bad_rows=report)


def load_users(path: Path | str) -> pd.DataFrame:
    """One users.csv on its own (new users for `vidrec recommend`), checked like a data
    directory's: a bad age or a repeated user_id raises DataError naming line and column
    instead of silently becoming an unknown profile value."""
    raw = _read_raw(Path(path), (schema.USER_ID,))
    return _apply_policy(*_check_users(raw), "fail", BadRowReport())


def user_profiles(users: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """user_id -> that users.csv row as a profile, a missing number (NaN) as None: the
    form the feature encoder and serving's profile messages share."""
    return {str(r[schema.USER_ID]): {k: None if isinstance(v, float) and v != v else v
                                     for k, v in r.items()}
            for r in users.to_dict("records")}


# --- writing --------------------------------------------------------------------------


def _for_csv(df: pd.DataFrame, first: tuple[str, ...]) -> pd.DataFrame:
    """Order columns (contract columns first) and print whole-number floats without '.0'."""
    order = [c for c in first if c in df.columns] + [c for c in df.columns if c not in first]
    out = df[order].copy()
    for c in out.columns:
        s = out[c]
        if c == "tags":
            out[c] = s.map(lambda t: schema.TAG_SEPARATOR.join(map(str, t))
                           if isinstance(t, list | tuple | np.ndarray) else t)
        elif pd.api.types.is_float_dtype(s):
            v = s.to_numpy(dtype=np.float64)
            fin = v[np.isfinite(v)]
            if len(fin) and np.all(fin == np.round(fin)) and np.all(np.abs(fin) < 2**53):
                out[c] = s.astype("Int64")
    return out


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False, na_rep="", lineterminator="\n")
    os.replace(tmp, path)


_FIRST_COLUMNS: dict[str, tuple[str, ...]] = {
    schema.VIDEOS_FILE: (schema.VIDEO_ID, *schema.VIDEO_COLUMNS),
    schema.USERS_FILE: (schema.USER_ID, *schema.USER_COLUMNS),
    schema.INTERACTIONS_FILE: schema.INTERACTION_COLUMNS,
}


def write_table(df: pd.DataFrame, path: Path | str) -> None:
    """Write one table in the contract format; the file name (videos.csv, users.csv,
    interactions.csv) picks the column order. Lets tools write a lone users.csv of new
    users or a later batch of videos exactly as load_dataset expects."""
    path = Path(path)
    _write_csv(_for_csv(df, _FIRST_COLUMNS.get(path.name, ())), path)


def write_dataset(ds: Dataset, root: Path | str) -> None:
    """Write the three CSVs of the data directory contract (tags stay '|'-joined)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_table(ds.videos, root / schema.VIDEOS_FILE)
    write_table(ds.users, root / schema.USERS_FILE)
    write_table(ds.interactions, root / schema.INTERACTIONS_FILE)
