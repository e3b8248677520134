"""The Grafana dashboard (deploy/grafana/) only uses metrics that /metrics exposes (issue 3, item 6)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from shipyard.config import Settings
from shipyard.store import Store
from shipyard.tracing.service import Tracing

REPO = Path(__file__).resolve().parent.parent


def _exposed(tmp_path: Path) -> set[str]:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        tracing = Tracing(Settings(data_dir=tmp_path), store)
        text = tracing.metrics.render().decode()
    finally:
        store.close()
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def test_dashboard_queries_use_exposed_metrics(tmp_path: Path) -> None:
    exposed = _exposed(tmp_path)
    dashboard = json.loads((REPO / "deploy" / "grafana" / "shipyard-tracing.json").read_text())
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"shipyard_[a-z_]+", target["expr"])}
    assert used and used <= exposed, used - exposed
    for required in ("requests_total", "tokens_total", "cost_dollars_total", "itl_seconds", "ttft_seconds"):
        assert f"shipyard_{required}" in used
    for required in ("queue_depth", "records_journaled_total", "records_replayed_total"):
        assert f"shipyard_trace_{required}" in used
