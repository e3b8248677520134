"""The local engine worker with the real bundled model: every parameter honoured or refused, never ignored."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.model
PROMPT = [{"role": "user", "content": "Write a long story about a ship at sea."}]


@pytest.fixture(scope="module")
def worker(bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("worker") / "worker.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shipyard.engines.local.worker",
            "--model-dir",
            str(bundled_model_dir),
            "--served-name",
            "smol",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, "the worker exited"
        try:
            return httpx.get(url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 120, 0.2, "the local worker")
    yield url
    process.terminate()
    process.wait(30)
    log.close()


@pytest.fixture(scope="module")
def client(worker: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=worker + "/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer(bundled_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model_dir)


def _chat(client: openai.OpenAI, **kwargs: object):
    params = {"model": "smol", "messages": PROMPT, "max_tokens": 8, **kwargs}
    return client.chat.completions.create(**params)  # type: ignore[call-overload]


def _text(answer) -> str:
    return answer.choices[0].message.content


def test_temperature_zero_is_deterministic(client: openai.OpenAI) -> None:
    assert _text(_chat(client, temperature=0)) == _text(_chat(client, temperature=0))


def test_tiny_top_p_behaves_like_greedy(client: openai.OpenAI) -> None:
    assert _text(_chat(client, temperature=1.0, top_p=1e-6)) == _text(_chat(client, temperature=0))


def test_seed_reproduces_and_different_seeds_differ(client: openai.OpenAI) -> None:
    runs = {
        seed: [_text(_chat(client, temperature=1.2, seed=seed, max_tokens=12)) for _ in range(2)] for seed in (1, 2, 3)
    }
    for texts in runs.values():
        assert texts[0] == texts[1]
    assert len({texts[0] for texts in runs.values()}) >= 2


def test_seed_reproduces_inside_a_batch(client: openai.OpenAI) -> None:
    alone = _text(_chat(client, temperature=1.2, seed=42, max_tokens=12))
    results: dict[int, str] = {}

    def call(index: int) -> None:
        seed = 42 if index == 0 else 1000 + index
        results[index] = _text(_chat(client, temperature=1.2, seed=seed, max_tokens=12))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0] == alone


def test_seeded_choices_with_n(client: openai.OpenAI) -> None:
    first = _chat(client, temperature=1.2, seed=9, n=3, max_tokens=10)
    second = _chat(client, temperature=1.2, seed=9, n=3, max_tokens=10)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_gives_exactly_that_many(client: openai.OpenAI, field: str) -> None:
    answer = client.chat.completions.create(model="smol", messages=PROMPT, temperature=0, **{field: 7})
    assert answer.usage.completion_tokens == 7
    assert answer.choices[0].finish_reason == "length"


def test_usage_matches_the_tokenizer(client: openai.OpenAI, tokenizer) -> None:
    answer = _chat(client, temperature=0, max_tokens=6)
    prompt_ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)
    if hasattr(prompt_ids, "keys"):
        prompt_ids = prompt_ids["input_ids"]
    assert answer.usage.prompt_tokens == len(prompt_ids)
    completion = tokenizer(_text(answer), add_special_tokens=False)["input_ids"]
    assert abs(answer.usage.completion_tokens - len(completion)) <= 1  # re-tokenizing may merge differently


def test_stop_cuts_before_the_stop_string(client: openai.OpenAI) -> None:
    full = _text(_chat(client, temperature=0, max_tokens=24))
    words = full.split()
    assert len(words) > 3
    stop = " " + words[2]
    cut = _chat(client, temperature=0, max_tokens=24, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert _text(cut) == full[: full.index(stop)]
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in _chat(client, temperature=0, max_tokens=24, stop=stop, stream=True)
        if c.choices
    )
    assert streamed == _text(cut) and stop not in streamed


def test_n_choices_stream(client: openai.OpenAI) -> None:
    chunks = list(_chat(client, n=3, max_tokens=5, stream=True, stream_options={"include_usage": True}))
    finishes = {
        c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    }
    assert finishes == {0: "length", 1: "length", 2: "length"}
    assert chunks[-1].usage.completion_tokens == 15


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ],
)
def test_unsupported_parameters_are_refused(client: openai.OpenAI, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _chat(client, **extra)
    error = info.value.body
    assert error["code"] == "unsupported_parameter" and error["param"] == param


def test_response_format_text_is_accepted(client: openai.OpenAI) -> None:
    assert _text(_chat(client, response_format={"type": "text"}, max_tokens=3))


def test_image_parts_are_refused(worker: str) -> None:
    content = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
    response = httpx.post(
        worker + "/v1/chat/completions",
        timeout=30,
        json={"model": "smol", "messages": [{"role": "user", "content": content}]},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content"


def test_context_length_exceeded(worker: str) -> None:
    long = [{"role": "user", "content": "word " * 20000}]
    response = httpx.post(worker + "/v1/chat/completions", json={"model": "smol", "messages": long}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


def test_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="other", messages=PROMPT)
    assert info.value.body["code"] == "model_not_found"


def test_completions_forms(client: openai.OpenAI, tokenizer) -> None:
    single = client.completions.create(model="smol", prompt="The sea is", max_tokens=4, temperature=0)
    assert single.usage.completion_tokens == 4
    several = client.completions.create(model="smol", prompt=["One", "Two"], max_tokens=3, temperature=0, n=2)
    assert sorted(c.index for c in several.choices) == [0, 1, 2, 3]
    ids = tokenizer("The sea is", add_special_tokens=False)["input_ids"]
    by_ids = client.completions.create(model="smol", prompt=ids, max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == single.choices[0].text
    echoed = client.completions.create(model="smol", prompt="The sea is", max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text == "The sea is" + single.choices[0].text
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="smol", prompt=[49152 * 10], max_tokens=2)


def test_disconnect_cancels_the_generation(worker: str) -> None:
    before = httpx.get(worker + "/stats", timeout=5).json()
    with httpx.stream(
        "POST",
        worker + "/v1/chat/completions",
        timeout=60,
        json={"model": "smol", "messages": PROMPT, "max_tokens": 400, "stream": True},
    ) as response:
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # leave after the first token
    wait_until(
        lambda: httpx.get(worker + "/stats", timeout=5).json()["cancelled"] == before["cancelled"] + 1,
        20,
        what="the worker to cancel the abandoned generation",
    )
    stats = httpx.get(worker + "/stats", timeout=5).json()
    assert stats["active"] == 0 and stats["result_handlers"] == 0
