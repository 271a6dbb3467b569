"""Where a batch job reads and writes: any pyarrow filesystem, and an output committed whole.

A job writes under ``<output>/_temporary/<job_id>/`` (a name that pyarrow, pandas, Spark
and DuckDB's folder readers skip) and, only once it succeeded, moves ``predictions/`` and
``errors/`` into ``<output>/`` and writes ``<output>/_SUCCESS`` last, holding the job's
figures. A failed or cancelled job's staging is deleted: nothing it leaves looks finished,
and ``_SUCCESS`` is the mark a reader can trust.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.fs as pafs

from app.batch.spec import InputFormat

STAGING = "_temporary"
SUCCESS = "_SUCCESS"
PREDICTIONS = "predictions"
ERRORS = "errors"


class InputError(ValueError):
    """The input cannot be read, or lacks a column the job needs: the message says which."""


class OutputTaken(ValueError):
    """The output already holds files: a job never writes over data."""


@dataclass(frozen=True)
class Location:
    """A folder or file on a pyarrow filesystem."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @classmethod
    def of(cls, uri: str) -> Location:
        """Resolve a local path or a URI (s3://, gs://, file://, hdfs://).

        Raises:
            InputError: a URI no pyarrow filesystem understands.
        """
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, ValueError):
            try:  # a relative or plain local path
                fs, path = pafs.LocalFileSystem(), _absolute(uri)
            except OSError as exc:
                raise InputError(f"{uri!r} is not a path or filesystem URI: {exc}") from exc
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"cannot open the filesystem of {uri!r}: {exc}") from exc
        return cls(fs, path.rstrip("/") or "/", uri)

    def child(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        return Location(self.fs, path, posixpath.join(self.uri.rstrip("/"), *parts))


def _absolute(path: str) -> str:
    import os

    return os.path.abspath(os.path.expanduser(path))


def dataset(location: Location, fmt: InputFormat) -> pds.Dataset:
    """The input as a pyarrow dataset: its schema comes from file metadata (Parquet) or the
    first block of the first file (CSV, JSON lines), never from a full read.

    Raises:
        InputError: missing, unreadable, empty, or not in that format.
    """
    try:
        info = location.fs.get_file_info(location.path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read input {location.uri!r}: {exc}") from exc
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input {location.uri!r} does not exist")
    try:
        data = pds.dataset(location.path, filesystem=location.fs, format=pyarrow_format(fmt))
        if not data.files:
            raise InputError(f"input {location.uri!r} holds no {fmt} files")
        data.schema  # noqa: B018 - inferring it reads the first file: fail here, clearly
        return data
    except InputError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read input {location.uri!r} as {fmt}: {exc}") from exc


def pyarrow_format(fmt: InputFormat) -> Any:
    """The pyarrow dataset format of ``fmt`` (JSON: lines)."""
    return pds.JsonFileFormat() if fmt == "json" else fmt


def require_columns(schema: pa.Schema, needed: list[str], uri: str) -> None:
    """Raises InputError naming every column of ``needed`` that ``schema`` lacks."""
    missing = [name for name in needed if name not in schema.names]
    if missing:
        raise InputError(
            f"input {uri!r} has no column {', '.join(repr(m) for m in missing)} "
            f"(it has: {', '.join(schema.names[:20])}{'...' if len(schema.names) > 20 else ''})"
        )


def count_rows(data: pds.Dataset, fmt: InputFormat) -> int | None:
    """Rows of a Parquet input, from its footers; None for formats that must be read."""
    return data.count_rows() if fmt == "parquet" else None


def ensure_empty(output: Location) -> None:
    """Raises OutputTaken where the output folder already holds any file."""
    info = output.fs.get_file_info(output.path)
    if info.type == pafs.FileType.NotFound:
        return
    if info.type == pafs.FileType.File:
        raise OutputTaken(f"output {output.uri!r} is a file; name a new or empty folder")
    entries = output.fs.get_file_info(pafs.FileSelector(output.path, recursive=False))
    if entries:
        names = ", ".join(sorted(posixpath.basename(e.path) for e in entries)[:5])
        raise OutputTaken(
            f"output {output.uri!r} already holds {names}: a job never writes over data; "
            "name a new or empty folder"
        )


def staging(output: Location, job_id: str) -> Location:
    return output.child(STAGING, job_id)


def commit(output: Location, job_id: str, manifest: dict[str, Any]) -> None:
    """Move a succeeded job's files into ``output`` and write ``_SUCCESS`` last."""
    stage = staging(output, job_id)
    for part in (PREDICTIONS, ERRORS):
        _move_tree(output.fs, stage.child(part).path, output.child(part).path)
    abort(output, job_id)
    with output.fs.open_output_stream(output.child(SUCCESS).path) as stream:
        stream.write(json.dumps(manifest, indent=2, sort_keys=True).encode())


def abort(output: Location, job_id: str) -> bool:
    """Delete a job's staging (and ``_temporary`` once empty); whether there was any."""
    stage = staging(output, job_id)
    info = output.fs.get_file_info(stage.path)
    if info.type == pafs.FileType.NotFound:
        return False
    output.fs.delete_dir(stage.path)
    parent = output.child(STAGING).path
    if not output.fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True)):
        output.fs.delete_dir(parent)
    return True


def _move_tree(fs: pafs.FileSystem, source: str, target: str) -> None:
    """Move a folder: one rename on a local disk, file by file on an object store."""
    if fs.get_file_info(source).type == pafs.FileType.NotFound:
        return
    if isinstance(fs, pafs.LocalFileSystem):
        fs.move(source, target)
        return
    fs.create_dir(target)
    for entry in fs.get_file_info(pafs.FileSelector(source, recursive=True)):
        if entry.type == pafs.FileType.File:
            fs.move(entry.path, posixpath.join(target, posixpath.relpath(entry.path, source)))


__all__ = [
    "ERRORS",
    "PREDICTIONS",
    "STAGING",
    "SUCCESS",
    "InputError",
    "Location",
    "OutputTaken",
    "abort",
    "commit",
    "count_rows",
    "dataset",
    "ensure_empty",
    "pyarrow_format",
    "require_columns",
    "staging",
]
