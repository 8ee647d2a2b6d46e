"""Stop strings and <think> splitting, fed token by token the way models emit them."""

from __future__ import annotations

import pytest

from worker.text_stream import StopFilter, TextStream, ThinkSplitter


def run(stream: TextStream, pieces: list[str]) -> tuple[str, str]:
    content, reasoning = [], []
    for p in pieces:
        c, r = stream.feed(p)
        content.append(c)
        reasoning.append(r)
        if stream.stopped:
            break
    c, r = stream.finish()
    return "".join(content) + c, "".join(reasoning) + r


@pytest.mark.parametrize(
    "pieces, stops, expected",
    [
        (["Hello", " wor", "ld", "!"], ["world"], "Hello "),
        (["ab", "c", "STO", "P", "tail"], ["STOP"], "abc"),
        (["x", "S", "T", "y"], ["STOP"], "xSTy"),  # partial match that fails is released
        (["one\n", "\ntwo"], ["\n\n"], "one"),
        (["plain text"], [], "plain text"),
        (["ST"], ["STOP"], "ST"),  # held partial at the end is ordinary text
        (["aXb", "Y"], ["XbY", "b"], "aX"),  # earliest match wins
    ],
)
def test_stop_strings_across_token_boundaries(pieces, stops, expected):
    stream = TextStream.create(stops, strip_thinking=False, starts_in_reasoning=False)
    content, _ = run(stream, pieces)
    assert content == expected


def test_stop_string_never_leaks_partially():
    f = StopFilter(["</end>"])
    emitted = f.feed("ok </e") + f.feed("nd> more")
    assert emitted == "ok "
    assert f.stopped


@pytest.mark.parametrize("strip", [False, True])
def test_think_split_with_tags_cut_anywhere(strip):
    text = "<think>plan it</think>The answer."
    for cut in range(1, len(text)):
        stream = TextStream.create([], strip_thinking=strip, starts_in_reasoning=False)
        content, reasoning = run(stream, [text[:cut], text[cut:]])
        assert content == "The answer."
        assert reasoning == ("" if strip else "plan it")


def test_template_opened_think_block():
    stream = TextStream.create([], strip_thinking=False, starts_in_reasoning=True)
    content, reasoning = run(stream, ["hmm", " let me", " see</th", "ink>", "Paris"])
    assert reasoning == "hmm let me see"
    assert content == "Paris"


def test_unclosed_think_at_end_stays_reasoning():
    s = ThinkSplitter()
    c1, r1 = s.feed("<think>never closed <")
    c2, r2 = s.flush()
    assert c1 + c2 == ""
    assert r1 + r2 == "never closed <"


def test_less_than_in_normal_text_passes_through():
    stream = TextStream.create([], strip_thinking=True, starts_in_reasoning=False)
    content, _ = run(stream, ["a <", "b and <t", "able>"])
    assert content == "a <b and <table>"
