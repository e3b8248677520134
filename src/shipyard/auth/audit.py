"""The audit log: who changed what on the control plane, when, before and after; hash-chained.

Each row's hash is SHA-256 over the previous row's hash and the row's own canonical JSON, so changing a row
breaks its hash, and deleting one breaks the link of the row after it. `verify` recomputes the chain.
Deleting the newest rows leaves a valid shorter chain: compare `head()` with a copy kept elsewhere to catch that.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from shipyard.errors import StoreError
from shipyard.store.auth import AuditRepo

__all__ = ["GENESIS", "AuditLog", "redact", "row_hash", "verify_chain"]

GENESIS = "0" * 64
_SECRET_FIELDS = frozenset(
    {
        "secret",
        "value",
        "token",
        "password",
        "api_key",
        "key",
        "ciphertext",
        "digest",
        "salt",
        "lookup",
        "authorization",
    }
)


def redact(value: Any) -> Any:
    """A copy with every secret-bearing field replaced by "[redacted]"."""
    if isinstance(value, Mapping):
        return {k: "[redacted]" if str(k).lower() in _SECRET_FIELDS else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def row_hash(row: Mapping[str, Any]) -> str:
    content = {k: row.get(k) for k in ("seq", "at", "actor", "action", "target", "before", "after")}
    payload = row["prev_hash"].encode() + b"|" + orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()


def verify_chain(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Problems found walking the chain in `seq` order; empty when intact."""
    problems: list[str] = []
    expected_prev, expected_seq = GENESIS, 1
    for row in rows:
        seq = row["seq"]
        if seq != expected_seq:
            problems.append(f"rows {expected_seq}..{seq - 1} are missing")
        if row["prev_hash"] != expected_prev:
            problems.append(f"row {seq}: does not follow the row before it (a row was deleted or changed)")
        if row_hash(row) != row["hash"]:
            problems.append(f"row {seq}: its contents do not match its hash (the row was changed)")
        expected_prev, expected_seq = row["hash"], seq + 1
    return problems


class AuditLog:
    def __init__(self, repo: AuditRepo) -> None:
        self.repo = repo

    def record(
        self,
        actor: str | None,
        action: str,
        target: str,
        before: Any = None,
        after: Any = None,
    ) -> dict[str, Any]:
        """Append one row (secrets redacted), retrying when another writer extended the chain first."""
        for _ in range(20):
            last = self.repo.last()
            row: dict[str, Any] = {
                "seq": (last["seq"] + 1) if last else 1,
                "at": time.time(),
                "actor": actor,
                "action": action[:64],
                "target": target[:512],
                "before": redact(before),
                "after": redact(after),
                "prev_hash": last["hash"] if last else GENESIS,
            }
            row["hash"] = row_hash(row)
            if self.repo.append(row):
                return row
            time.sleep(0.005)
        raise StoreError("could not append to the audit log: too much contention")

    def verify(self) -> list[str]:
        return verify_chain(self.repo.all())

    def head(self) -> dict[str, Any] | None:
        return self.repo.last()
