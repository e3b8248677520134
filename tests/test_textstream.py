"""Incremental detokenization and stop sequences, with the bundled model's real tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.engines.local.textstream import IncrementalDecoder, StopMatcher


@pytest.fixture(scope="module")
def tokenizer(bundled_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model_dir)


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! This is a test of spaces  and   runs.",
        "Café naïve façade — déjà vu. 日本語のテキスト。",
        "Emoji: 🚢⚓️🌊 and family 👨‍👩‍👧 done",
        "  leading spaces\nnew lines\n\n\ttabs",
    ],
)
def test_token_by_token_equals_one_shot_decode(tokenizer, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(ids[: i + 1]) for i in range(len(ids))]
    pieces.append(decoder.flush())
    assert "".join(pieces) == tokenizer.decode(ids)
    assert all("\ufffd" not in p for p in pieces[:-1]), "a half character was emitted"


def test_multibyte_character_waits_for_its_last_token(tokenizer) -> None:
    ids = tokenizer("🚢", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1  # byte-level BPE splits the emoji
    decoder = IncrementalDecoder(tokenizer)
    assert [decoder.push(ids[: i + 1]) for i in range(len(ids) - 1)] == [""] * (len(ids) - 1)
    assert decoder.push(ids) == "🚢"


def test_special_tokens_are_not_emitted(tokenizer) -> None:
    ids = tokenizer("Hi", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    decoder = IncrementalDecoder(tokenizer)
    text = "".join(decoder.push(ids[: i + 1]) for i in range(len(ids))) + decoder.flush()
    assert text == "Hi"


def _feed(matcher: StopMatcher, parts: list[str]) -> str:
    out = "".join(matcher.feed(p) for p in parts)
    return out + matcher.flush()


def test_stop_split_across_deltas() -> None:
    matcher = StopMatcher(["END"])
    assert _feed(matcher, ["abc E", "N", "D more"]) == "abc "
    assert matcher.stopped


def test_text_held_back_is_released_when_no_stop_comes() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("value ST") == "value "
    assert matcher.feed("ART") == "START"
    assert matcher.feed("x S") == "x "
    assert matcher.flush() == "S"
    assert not matcher.stopped


def test_earliest_of_several_stops_wins() -> None:
    matcher = StopMatcher(["\n\n", "##", "b"])
    assert _feed(matcher, ["a", "#", "#c b"]) == "a"


def test_stop_that_prefixes_another() -> None:
    matcher = StopMatcher(["ab", "abc"])
    assert _feed(matcher, ["xa", "bc"]) == "x"


def test_no_stops_passes_everything_through() -> None:
    matcher = StopMatcher([])
    assert _feed(matcher, ["a", "b"]) == "ab"
    assert matcher.feed("after") == "after"


def test_nothing_after_a_stop() -> None:
    matcher = StopMatcher(["x"])
    assert matcher.feed("1x2") == "1"
    assert matcher.feed("more") == ""
    assert matcher.flush() == ""
