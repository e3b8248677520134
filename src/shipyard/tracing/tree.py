"""Spans to a tree (pure; tested without a store)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["span_tree"]


def span_tree(spans: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nest spans under their parents (`children`, oldest first). Spans whose parent is missing (not sent, or
    outside Shipyard) are roots too, so nothing is hidden."""
    nodes = {s["span_id"]: {**s, "children": []} for s in spans}
    roots = []
    for node in nodes.values():
        parent = nodes.get(node["parent_id"]) if node["parent_id"] else None
        (parent["children"] if parent is not None else roots).append(node)
    for node in nodes.values():
        node["children"].sort(key=lambda n: (n["start_time"], n["span_id"]))
    roots.sort(key=lambda n: (n["start_time"], n["span_id"]))
    return roots
