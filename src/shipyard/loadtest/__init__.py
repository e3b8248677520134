"""LLM load testing: open- and closed-loop load, per-token timing, SLO gates, reports, stored runs.

    from shipyard.loadtest import LoadShape, RunPlan, parse_slo, run_test

    plan = RunPlan(base_url="http://127.0.0.1:8000/v1", model="smollm2", shape=LoadShape("poisson", rate=2),
                   duration=30)
    record = run_test(plan, [parse_slo("ttft.p95<500ms")])

The CLI is `shipyard loadtest` (docs/loadtesting.md).
"""

from shipyard.loadtest import remote as _remote  # noqa: F401  (registers the dataset and traces sources)
from shipyard.loadtest.execute import run_sweep, run_test
from shipyard.loadtest.histogram import Histogram
from shipyard.loadtest.metrics import Aggregate, RequestResult, summarise
from shipyard.loadtest.report import html_report, json_report
from shipyard.loadtest.runner import RunPlan
from shipyard.loadtest.shapes import LoadShape
from shipyard.loadtest.slo import Slo, evaluate_slos, parse_slo
from shipyard.loadtest.sources import RequestSource, SourceSpec, register_source
from shipyard.loadtest.wire import LoadRequest

__all__ = [
    "Aggregate",
    "Histogram",
    "LoadRequest",
    "LoadShape",
    "RequestResult",
    "RequestSource",
    "RunPlan",
    "Slo",
    "SourceSpec",
    "evaluate_slos",
    "html_report",
    "json_report",
    "parse_slo",
    "register_source",
    "run_sweep",
    "run_test",
    "summarise",
]
