"""JSON-lines journals: what makes a batch job resumable. One place for every batch job of the CLI
(Florence-2 tasks over a folder, Florence-VL questions from a file).

A journal holds one JSON object per finished item, each carrying the item's key (e.g. "image" or "id").
Finished batches are appended, flushed and fsynced, so after a crash the journal holds every finished
batch and at most one torn last line, which `read_journal` cuts off. A file whose other lines are not such
records is not a journal of ours: InputError, so nothing is overwritten by mistake.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable

from .errors import InputError


def read_journal(path: str | os.PathLike, key: str) -> list[dict]:
    """The records already written (a torn last line is cut off the file); [] when there is no file."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    records, good_bytes = [], 0
    for line in raw.splitlines(keepends=True):
        try:
            record = json.loads(line)
            if not line.endswith(b"\n") or not isinstance(record, dict) or key not in record:
                raise ValueError
        except ValueError:
            if good_bytes + len(line) < len(raw):  # not the last line: the file is not ours
                raise InputError(f"{path} is not a results journal (bad line {len(records) + 1}); "
                                 "use another --out") from None
            break
        records.append(record)
        good_bytes += len(line)
    if good_bytes < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return records


class JournalWriter:
    """Append records batch by batch; each batch is on disk (fsynced) when `append` returns."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = None

    def __enter__(self) -> "JournalWriter":
        self._file = open(self.path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def append(self, records: Iterable[dict]) -> None:
        self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled)


def stderr_log(message: str) -> None:
    """One line on stderr that does not break an open progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)
