"""The stored-responses bound: count, bytes and age (no processes)."""

from __future__ import annotations

from gateway.cli import build_parser
from gateway.response_store import ResponseStore, ResponseStoreConfig, StoredResponse, response_store_config_from_args


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(text: str = "x") -> StoredResponse:
    return StoredResponse({"id": "r", "output_text": text}, [{"role": "user", "content": text}], [], "conv")


def test_the_oldest_goes_first_past_the_count():
    store = ResponseStore(ResponseStoreConfig(max_responses=2))
    for rid in ("a", "b", "c"):
        assert store.put(rid, entry())
    assert store.get("a") is None and store.get("b") and store.get("c") and store.evictions == 1


def test_the_byte_budget_holds_and_an_entry_over_it_alone_is_not_kept():
    one = ResponseStore(ResponseStoreConfig(max_bytes=10**6)).put("probe", entry("y" * 1000))
    assert one
    store = ResponseStore(ResponseStoreConfig(max_bytes=2500))
    assert store.put("a", entry("y" * 1000)) and store.put("b", entry("y" * 1000))
    assert store.get("a") is None and store.nbytes <= 2500
    assert not store.put("huge", entry("z" * 5000)) and store.get("huge") is None and store.get("b")


def test_entries_expire_after_the_ttl():
    clock = Clock()
    store = ResponseStore(ResponseStoreConfig(ttl_seconds=60), clock=clock)
    store.put("a", entry())
    clock.now += 30
    store.put("b", entry())
    clock.now += 31
    assert store.get("a") is None and store.get("b") is not None and len(store) == 1


def test_replacing_and_deleting_keep_the_byte_count_exact():
    store = ResponseStore(ResponseStoreConfig())
    store.put("a", entry("short"))
    store.put("a", entry("much longer text"))
    assert len(store) == 1 and store.nbytes == store.get("a").nbytes
    assert store.delete("a") and not store.delete("a") and store.nbytes == 0


def test_flags():
    args = build_parser().parse_args(["--responses-max-stored", "5", "--responses-max-mb", "1", "--responses-ttl", "90"])
    cfg = response_store_config_from_args(args)
    assert (cfg.max_responses, cfg.max_bytes, cfg.ttl_seconds) == (5, 1024 * 1024, 90.0)
    off = ResponseStore(response_store_config_from_args(build_parser().parse_args(["--responses-max-stored", "0"])))
    assert not off.enabled and not off.put("a", entry())
