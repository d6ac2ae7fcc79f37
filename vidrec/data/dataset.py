"""Typed tables of a data directory. (Interface; the loader with validation lives here.)"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd


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
class Dataset:
    """A loaded data directory.

    videos: video_id (str) + known columns typed (title/category/tags/creator_id/language:
      str, '' when missing; duration_s/upload_ts: float64, NaN when missing) + extra columns.
    users: user_id (str) + age (float64, NaN when missing), gender/country/language/
      occupation (str) + extras.
    interactions: user_id (str), video_id (str), timestamp (int64 unix s), event (str, one of
      schema.EVENT_TYPES), value (float64, NaN when empty); sorted by timestamp (stable).
    """

    videos: pd.DataFrame
    users: pd.DataFrame
    interactions: pd.DataFrame
    root: Path | None = None
