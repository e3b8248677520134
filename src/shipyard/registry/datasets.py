"""Datasets: rows (`input`, optional `expected`, optional `metadata`) checked on the way in, stored as canonical
JSON Lines in the artifact store under their content hash, with immutable numbered versions in the store.

The parsing and checking functions are pure; `DatasetService` joins them to the repository and artifact store.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from shipyard.errors import InvalidRequest, NotFound, ServerError
from shipyard.registry.artifacts import ArtifactStore
from shipyard.registry.prompts import check_name
from shipyard.store.registry import DatasetRepo

__all__ = [
    "FORMATS",
    "DatasetService",
    "canonical_jsonl",
    "check_rows",
    "parse_rows",
    "rows_from_records",
    "rows_from_traces",
]

FORMATS = ("jsonl", "csv", "parquet")
_FIELDS = frozenset({"input", "expected", "metadata"})
MAX_ROWS = 1_000_000


def _bad_row(where: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: {why}", code="invalid_dataset_row")


def check_row(row: Any, where: str) -> dict[str, Any]:
    """One row, checked: an object with `input` (not null), maybe `expected`, maybe `metadata` (an object)."""
    if not isinstance(row, Mapping):
        raise _bad_row(where, "expected an object with 'input' (and optionally 'expected', 'metadata')")
    unknown = sorted(set(row) - _FIELDS)
    if unknown:
        raise _bad_row(where, f"unknown field(s) {', '.join(unknown)}; put extra data under 'metadata'")
    if row.get("input") is None:
        raise _bad_row(where, "'input' is missing or null")
    metadata = row.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise _bad_row(where, "'metadata' must be an object")
    out: dict[str, Any] = {"input": row["input"]}
    if row.get("expected") is not None:
        out["expected"] = row["expected"]
    if metadata:
        out["metadata"] = dict(metadata)
    return out


def check_rows(rows: Any) -> list[dict[str, Any]]:
    if not isinstance(rows, list) or not rows:
        raise InvalidRequest("'rows' must be a non-empty list of row objects.", param="rows")
    if len(rows) > MAX_ROWS:
        raise InvalidRequest(f"At most {MAX_ROWS} rows per version.", param="rows")
    return [check_row(row, f"row {index + 1}") for index, row in enumerate(rows)]


def parse_rows(data: bytes, fmt: str) -> list[dict[str, Any]]:
    """Rows from a JSON Lines or CSV file; a bad row is named by its line number."""
    if fmt == "jsonl":
        rows = []
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise _bad_row(f"line {number}", f"not valid JSON ({exc})") from None
            rows.append(check_row(value, f"line {number}"))
        if not rows:
            raise InvalidRequest("The file has no rows.", code="invalid_dataset_row")
        return rows
    if fmt == "csv":
        return _parse_csv(data)
    if fmt == "parquet":
        return _parse_parquet(data)
    raise InvalidRequest(f"Unsupported dataset format {fmt!r}; use one of {', '.join(FORMATS)}.", param="format")


def _parse_csv(data: bytes) -> list[dict[str, Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequest("The CSV file is not UTF-8.", code="invalid_dataset_row") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = set(reader.fieldnames or [])
    if "input" not in columns:
        raise InvalidRequest("The CSV header needs an 'input' column.", code="invalid_dataset_row")
    extra = sorted(columns - _FIELDS)
    if extra:
        raise _bad_row("line 1", f"unknown column(s) {', '.join(extra)}; allowed: input, expected, metadata")
    rows = []
    for record in reader:
        where = f"line {reader.line_num}"
        if None in record:
            raise _bad_row(where, "more fields than the header has")
        row: dict[str, Any] = {"input": record.get("input") or None, "expected": record.get("expected") or None}
        if record.get("metadata"):
            try:
                row["metadata"] = orjson.loads(record["metadata"])
            except orjson.JSONDecodeError:
                raise _bad_row(where, "'metadata' must be a JSON object") from None
        rows.append(check_row(row, where))
    if not rows:
        raise InvalidRequest("The file has no rows.", code="invalid_dataset_row")
    return rows


def _parse_parquet(data: bytes) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InvalidRequest("Parquet needs pyarrow on the server (pip install pyarrow).", param="format") from None
    try:
        records = pq.read_table(io.BytesIO(data)).to_pylist()
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InvalidRequest(f"Not a readable Parquet file: {exc}", code="invalid_dataset_row") from None
    rows = []
    for number, record in enumerate(records, start=1):
        metadata = record.get("metadata")
        if isinstance(metadata, str):
            try:
                record = {**record, "metadata": orjson.loads(metadata) if metadata else None}
            except orjson.JSONDecodeError:
                raise _bad_row(f"row {number}", "'metadata' must be a JSON object") from None
        rows.append(check_row(record, f"row {number}"))
    if not rows:
        raise InvalidRequest("The file has no rows.", code="invalid_dataset_row")
    return rows


def canonical_jsonl(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """One row per line, keys sorted: the same rows always give the same bytes (and hash)."""
    return b"".join(orjson.dumps(row, option=orjson.OPT_SORT_KEYS) + b"\n" for row in rows)


def rows_from_traces(exported: Iterable[Mapping[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Rows from traces as `TraceRepo.export` yields them: each trace's root span gives `input` (the messages or
    prompt) and `expected` (the answer); the trace id, deployment, model and prompt version go to metadata.
    Traces without a recorded input (content capture off) are skipped."""
    records = []
    for trace in exported:
        root = next((s for s in trace.get("spans", []) if s.get("span_id") == trace.get("root_span_id")), None)
        if root is None or root.get("input") is None:
            continue
        records.append({"input": root["input"], "output": root.get("output"), "trace_id": trace.get("id"),
                        "deployment": trace.get("deployment"), "model": root.get("model"),
                        "prompt_ref": root.get("prompt_ref")})  # fmt: skip
        if len(records) >= limit:
            break
    if not records:
        raise InvalidRequest("No trace with recorded input matches the filter.", code="no_matching_traces")
    return rows_from_records(records)


def rows_from_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows from recorded calls (`input`, `output`, anything else but None as metadata)."""
    rows = []
    for record in records:
        extra = {k: v for k, v in record.items() if k not in ("input", "output") and v is not None}
        rows.append({"input": record.get("input"), "expected": record.get("output"), "metadata": extra})
    return check_rows(rows)


class DatasetService:
    def __init__(self, repo: DatasetRepo, artifacts: ArtifactStore) -> None:
        self.repo = repo
        self.artifacts = artifacts

    def create(
        self,
        name: str,
        rows: list[dict[str, Any]],
        *,
        append: bool = False,
        message: str = "",
        source: str = "api",
        author: str = "api",
    ) -> dict[str, Any]:
        """A new version: `rows` alone, or the previous version's rows followed by `rows` when appending."""
        check_name(name, "dataset")

        def make(previous: dict[str, Any] | None, number: int) -> dict[str, Any]:
            body = canonical_jsonl(rows)
            if append and previous is not None:
                body = self._read(previous) + body
            digest = hashlib.sha256(body).hexdigest()
            key = f"datasets/{name}/{digest}.jsonl"  # content-addressed: identical versions share one file
            if not self.artifacts.exists(key):
                self.artifacts.put_bytes(key, body)
            return {
                "uri": key,
                "sha256": digest,
                "rows": body.count(b"\n"),
                "parent": previous["version"] if append and previous else None,
                "source": source[:256],
                "message": message,
            }

        return self.repo.create_version(name, make, author)

    def version(self, name: str, version: int | None = None) -> dict[str, Any]:
        found = self.repo.get_version(name, version)
        if found is None:
            which = f" version {version}" if version is not None else ""
            raise NotFound(f"No dataset '{name}'{which}.", code="dataset_not_found")
        return found

    def rows(self, name: str, version: int | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        found = self.version(name, version)
        return found, [orjson.loads(line) for line in self._read(found).splitlines()]

    def _read(self, version: Mapping[str, Any]) -> bytes:
        body = self.artifacts.get_bytes(version["uri"])
        if hashlib.sha256(body).hexdigest() != version["sha256"]:
            raise ServerError(
                f"Dataset {version['name']}:{version['version']} does not match its content hash; the artifact "
                "store was changed behind Shipyard's back.",
                code="dataset_corrupt",
            )
        return body
