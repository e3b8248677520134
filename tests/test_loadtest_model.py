"""One short load test against Shipyard serving the real bundled model."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.loadtest.execute import run_test
from shipyard.loadtest.runner import RunPlan
from shipyard.loadtest.shapes import LoadShape
from shipyard.loadtest.slo import parse_slo, request_thresholds
from shipyard.loadtest.sources import SourceSpec, build_source
from tests.helpers import ShipyardProcess


@pytest.mark.model
def test_load_test_against_the_bundled_model(bundled_server: ShipyardProcess, bundled_model_dir: Path) -> None:
    source = SourceSpec(input_tokens="24", output_tokens="6", tokenizer=str(bundled_model_dir), pool=4)
    slos = [parse_slo("error_rate<1%"), parse_slo("ttft.p99<120s")]
    plan = RunPlan(
        base_url=bundled_server.url + "/v1",
        model="smollm2",
        shape=LoadShape("concurrency", concurrency=2),
        source=source,
        duration=None,
        requests=4,
        extra_body={"temperature": 0},
        thresholds=request_thresholds(slos),
    )
    record = run_test(plan, slos, in_process=True)
    s = record["summary"]
    assert s["requests"] == s["succeeded"] == 4 and s["errors"] == {}, s
    assert record["passed"] is True and s["good_requests"] == 4
    assert s["tokens_from_usage"]  # the gateway relayed usage for every stream
    assert 4 <= s["output_tokens"] <= 4 * 6
    assert s["input_tokens"] >= 4 * 24  # the prompt's 24 tokens plus the chat template's
    assert s["latency_ms"]["ttft"]["count"] == 4 and s["latency_ms"]["ttft"]["p50"] > 0
    assert s["latency_ms"]["e2e"]["p50"] >= s["latency_ms"]["ttft"]["p50"]
    assert "tokenizer" in record["source"]


@pytest.mark.model
def test_synthetic_prompts_have_exact_lengths_with_the_model_tokenizer(bundled_model_dir: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundled_model_dir / "tokenizer.json"))
    source = build_source(SourceSpec(input_tokens="uniform:10,60", tokenizer=str(bundled_model_dir), pool=20))
    for i in range(20):
        request = source.get(i)
        text = request.messages[0]["content"]
        assert len(tokenizer.encode(text, add_special_tokens=False).ids) == request.input_tokens
