"""Data files as rows: JSONL, Parquet and saved Hugging Face datasets, read and written back.

Every row keeps where it came from (``RowRef``: the file and its row number) so that errors name it
and the offline filter can write a subset of a file in that file's own format, untouched.
Row numbers: a JSONL row is its 1-based line number (``train.jsonl:12``, as editors count), a
Parquet or dataset row its 0-based index (``train.parquet[11]``, as pandas and ``datasets`` count).
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Iterator


class DataError(ValueError):
    """A data file or row that cannot be used; the message names the file and row."""


class FileFormat(str, Enum):
    jsonl = "jsonl"
    parquet = "parquet"
    hf_dataset = "hf_dataset"  # a directory written by datasets' Dataset.save_to_disk


@dataclass(frozen=True)
class RowRef:
    """Where a row came from: its file and row number (see the module docstring for the numbering)."""

    file: str
    row: int
    format: FileFormat

    def __str__(self) -> str:
        return f"{self.file}:{self.row}" if self.format == FileFormat.jsonl else f"{self.file}[{self.row}]"


class RawRowError(Exception):
    """A row that could not be read at all (invalid JSON, not an object)."""


def file_format(path: str) -> FileFormat:
    p = Path(path)
    if p.is_dir():
        if (p / "dataset_dict.json").is_file():
            splits = sorted(d.name for d in p.iterdir() if (d / "state.json").is_file())
            raise DataError(f"{path} is a saved DatasetDict with splits {splits}: name one split's directory, "
                            f"e.g. {p / (splits[0] if splits else 'train')}")
        if (p / "state.json").is_file() and (p / "dataset_info.json").is_file():
            return FileFormat.hf_dataset
        raise DataError(f"{path} is a directory but not a saved Hugging Face dataset (no state.json; "
                        "write one with Dataset.save_to_disk)")
    suffix = p.suffix
    if suffix == ".jsonl":
        return FileFormat.jsonl
    if suffix == ".parquet":
        return FileFormat.parquet
    raise DataError(f"{path}: unknown data file type {suffix or '(no suffix)'!r}; use .jsonl, .parquet or a "
                    "saved Hugging Face dataset directory")


def expand_files(files: list[str], field_name: str) -> list[str]:
    """The configured files with globs expanded (sorted), each checked to exist."""
    if not files:
        raise DataError(f"{field_name} is empty: give at least one data file")
    out: list[str] = []
    for f in files:
        if glob.has_magic(f) and not os.path.exists(f):
            matches = sorted(glob.glob(f))
            if not matches:
                raise DataError(f"{field_name}: {f!r} matches no file")
            out += matches
        elif not os.path.exists(f):
            where = "" if os.path.isabs(f) else f" (relative to {Path.cwd()})"
            raise DataError(f"{field_name}: data file {f!r} does not exist{where}")
        else:
            out.append(f)
    return out


def read_raw_rows(path: str) -> Iterator[tuple[RowRef, dict | RawRowError]]:
    """Every row of one file, as a dict or the reason it is not one. Blank JSONL lines are not rows."""
    fmt = file_format(path)
    if fmt == FileFormat.jsonl:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                ref = RowRef(path, line_no, fmt)
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield ref, RawRowError(f"invalid JSON ({exc.msg})")
                    continue
                yield ref, row if isinstance(row, dict) else RawRowError(f"a JSON {type(row).__name__}, not an object")
    elif fmt == FileFormat.parquet:
        import pyarrow.parquet as pq

        index = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield RowRef(path, index, fmt), row
                index += 1
    else:
        for index, row in enumerate(_load_hf_dataset(path)):
            yield RowRef(path, index, fmt), row


def _load_hf_dataset(path: str):
    try:
        from datasets import load_from_disk
    except ImportError:  # pragma: no cover - a dependency of or1
        raise DataError(f"{path} is a saved Hugging Face dataset; reading it needs the `datasets` package") from None
    return load_from_disk(path)


def write_subset(path: str, rows: list[int], out: Path) -> Path:
    """Write the rows numbered ``rows`` of ``path`` to ``out`` in ``path``'s own format, unchanged
    (JSONL lines copied verbatim, Parquet with its schema, a dataset with its features). Returns ``out``."""
    fmt = file_format(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if fmt == FileFormat.jsonl:
        wanted = set(rows)
        with open(path, encoding="utf-8", errors="replace") as src, open(tmp, "w", encoding="utf-8") as dst:
            for line_no, line in enumerate(src, 1):
                if line_no in wanted:
                    dst.write(line if line.endswith("\n") else line + "\n")
    elif fmt == FileFormat.parquet:
        import pyarrow.parquet as pq

        pq.write_table(pq.read_table(path).take(sorted(rows)), tmp)
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        _load_hf_dataset(path).select(sorted(rows)).save_to_disk(str(tmp))
        if out.exists():
            shutil.rmtree(out)
    os.replace(tmp, out)  # a reader never sees a half-written subset
    return out
