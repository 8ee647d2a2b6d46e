"""The routing rule (gateway/routing.py) and the workers file, without processes."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from gateway.config import WorkersFileError, load_workers_file
from gateway.routing import Candidate, pick, rendezvous_order


def idle(*ids: str, slack: int = 4) -> list[Candidate]:
    return [Candidate(i, 0, slack) for i in ids]


def test_a_conversation_keeps_its_worker_whatever_the_list_order():
    a = pick(idle("w0", "w1", "w2"), "conv-1")
    b = pick(list(reversed(idle("w0", "w1", "w2"))), "conv-1")
    assert a is not None and b is not None
    assert idle("w0", "w1", "w2")[a[0]].worker_id == list(reversed(idle("w0", "w1", "w2")))[b[0]].worker_id
    assert not a[1] and not b[1]


def test_new_conversations_spread_over_the_workers():
    ids = ["w0", "w1", "w2"]
    hits = Counter(ids[pick(idle(*ids), f"conv-{n}")[0]] for n in range(300))
    assert set(hits) == set(ids)
    assert min(hits.values()) > 60  # roughly a third each


def test_removing_a_worker_moves_only_its_conversations():
    before = {f"c{n}": rendezvous_order(f"c{n}", ["w0", "w1", "w2"])[0] for n in range(200)}
    names = ["w0", "w1", "w2"]
    for key, i in before.items():
        if names[i] != "w2":
            after = ["w0", "w1"][rendezvous_order(key, ["w0", "w1"])[0]]
            assert after == names[i]


def test_busy_home_worker_spills_to_the_next_ranked():
    home = rendezvous_order("conv", ["w0", "w1", "w2"])
    loads = [0, 0, 0]
    loads[home[0]] = 20  # batch of 4 full, far above the mean
    cands = [Candidate(f"w{i}", loads[i], 4) for i in range(3)]
    i, spilled = pick(cands, "conv")
    assert spilled and i == home[1]


def test_home_worker_with_free_batch_slots_keeps_the_conversation():
    home = rendezvous_order("conv", ["w0", "w1"])[0]
    cands = [Candidate(f"w{i}", 3 if i == home else 0, 16) for i in range(2)]
    assert pick(cands, "conv") == (home, False)


def test_full_home_worker_spills_and_all_full_refuses():
    home = rendezvous_order("conv", ["w0", "w1"])[0]
    cands = [Candidate(f"w{i}", 1, 16, full=(i == home)) for i in range(2)]
    assert pick(cands, "conv") == (1 - home, True)
    assert pick([Candidate("w0", 1, full=True), Candidate("w1", 1, full=True)], "conv") is None
    assert pick([Candidate("w0", 1, full=True), Candidate("w1", 1, full=True)], None) is None


def test_without_a_conversation_the_least_loaded_wins_and_ties_rotate():
    assert pick([Candidate("w0", 5), Candidate("w1", 2), Candidate("w2", 7)], None) == (1, False)
    chosen = {pick(idle("w0", "w1", "w2"), None, rotate=r)[0] for r in range(3)}
    assert chosen == {0, 1, 2}


def test_workers_file_toml_and_json(tmp_path):
    t = tmp_path / "pool.toml"
    t.write_text('[[workers]]\naddress = "tcp://a:1"\nmax_queued_requests = 3\n\n[[workers]]\naddress = "tcp://b:2"\n')
    specs = load_workers_file(t)
    assert [(s.address, s.max_queued_requests, s.max_queued_tokens) for s in specs] == [("tcp://a:1", 3, None), ("tcp://b:2", None, None)]
    j = tmp_path / "pool.json"
    j.write_text(json.dumps({"workers": ["tcp://c:3", {"address": "tcp://d:4", "max_queued_tokens": 100}]}))
    assert [(s.address, s.max_queued_tokens) for s in load_workers_file(j)] == [("tcp://c:3", None), ("tcp://d:4", 100)]


@pytest.mark.parametrize(
    "content",
    ['{"workers": []}', '{"workers": [{"addr": "x"}]}', '{"workers": [{"address": "x", "max_queued_requests": -1}]}', "not json"],
)
def test_bad_workers_file_is_a_clear_error(tmp_path, content):
    f = tmp_path / "pool.json"
    f.write_text(content)
    with pytest.raises(WorkersFileError):
        load_workers_file(f)
