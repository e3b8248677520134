"""The prompt repository on SQLite and PostgreSQL: numbered versions, labels, protection, concurrency."""

from __future__ import annotations

import threading

import pytest

from shipyard.registry.prompts import parse_spec
from shipyard.store import Store
from shipyard.store.registry import LabelProtected

pytestmark = pytest.mark.postgres


def _spec(text: str) -> dict:
    return parse_spec({"template": text, "message": f"msg {text}"})


def test_versions_are_numbered_and_latest_follows(store_url: str) -> None:
    store = Store(store_url)
    repo = store.registry.prompts
    one = repo.create_version("bot", _spec("v1 {{ a }}"), ["staging"], "alice")
    two = repo.create_version("bot", _spec("v2 {{ a }}"), [], "bob")
    assert (one["version"], two["version"]) == (1, 2)
    assert repo.resolve_label("bot", "latest")["template"] == "v2 {{ a }}"
    assert repo.resolve_label("bot", "staging")["version"] == 1
    assert repo.get_version("bot", 1)["author"] == "alice" and repo.get_version("bot", 1)["variables"] == ["a"]
    assert repo.get_version("bot", 3) is None and repo.resolve_label("bot", "production") is None
    assert repo.list() == [
        {**repo.list()[0], "name": "bot", "latest_version": 2, "labels": {"latest": 2, "staging": 1}}
    ]
    moved = repo.move_label("bot", "staging", 2, "carol")
    assert moved == {"label": "staging", "version": 2, "previous": 1, "protected": False}
    assert [e["version"] for e in repo.label_history("bot", "staging")] == [1, 2]
    store.close()


def test_protected_labels_move_only_with_force(store_url: str) -> None:
    store = Store(store_url)
    repo = store.registry.prompts
    for text in ("a", "b", "c"):
        repo.create_version("p", _spec(text), [], "x")
    assert repo.move_label("p", "production", 1, "x", protect=True)["protected"] is True
    with pytest.raises(LabelProtected):
        repo.move_label("p", "production", 2, "x")
    with pytest.raises(LabelProtected):
        repo.move_label("p", "production", 1, "x", protect=False)  # unprotecting needs force too
    with pytest.raises(LabelProtected):
        repo.create_version("p", _spec("d"), ["production"], "x")  # a push cannot move it either
    assert repo.resolve_label("p", "production")["version"] == 1
    assert repo.get_version("p", 4) is None  # the refused push left nothing behind
    assert repo.move_label("p", "production", 3, "admin", force=True) == {
        "label": "production", "version": 3, "previous": 1, "protected": True}  # fmt: skip
    store.close()


def test_concurrent_label_moves_are_atomic(store_url: str) -> None:
    """Many writers move one label at once: every move lands, and each history entry's `previous` is the version
    the entry before it set (no lost update, no torn read)."""
    store = Store(store_url)
    repo = store.registry.prompts
    versions = [repo.create_version("race", _spec(f"t{i}"), [], "x")["version"] for i in range(6)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def mover(worker: int) -> None:
        try:
            barrier.wait()
            for step in range(8):
                repo.move_label("race", "production", versions[(worker + step) % len(versions)], f"w{worker}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=mover, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    history = repo.label_history("race", "production")
    assert len(history) == 48
    assert history[0]["previous"] is None
    for before, after in zip(history, history[1:], strict=False):
        assert after["previous"] == before["version"]
    assert repo.resolve_label("race", "production")["version"] == history[-1]["version"]
    store.close()


def test_concurrent_pushes_get_distinct_numbers(store_url: str) -> None:
    store = Store(store_url)
    repo = store.registry.prompts
    numbers: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def pusher(worker: int) -> None:
        try:
            barrier.wait()
            for step in range(5):
                numbers.append(repo.create_version("fresh", _spec(f"{worker}-{step}"), [], "x")["version"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pusher, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(numbers) == list(range(1, 21))
    assert repo.resolve_label("fresh", "latest")["version"] == 20
    store.close()
