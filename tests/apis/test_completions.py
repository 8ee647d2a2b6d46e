"""Legacy `/v1/completions` with the OpenAI SDK against real processes:
raw prompts (text and token ids), streaming, echo, stop, fill-in-the-middle
on a model that has FIM tokens (and a 400 on one that has not)."""

from __future__ import annotations

import json
import shutil

import openai
import pytest
from tokenizers import Tokenizer

from tests.support.e2e import starts_processes
from tests.support.processes import start_stack

GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def client(tiny_stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_stack.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_model_path / "tokenizer.json"))


def test_a_text_prompt_is_the_input_as_is(client, tokenizer):
    c = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, **GREEDY)
    assert c.object == "text_completion" and c.id.startswith("cmpl-")
    assert c.choices[0].finish_reason == "length" and c.choices[0].text and c.choices[0].index == 0
    assert c.usage.completion_tokens == 6
    assert c.usage.prompt_tokens == len(tokenizer.encode("Once upon a time").ids)  # no chat template around it


def test_token_ids_and_their_text_complete_alike(client, tokenizer):
    ids = tokenizer.encode("The cat sat on the mat").ids
    by_text = client.completions.create(model="tiny", prompt="The cat sat on the mat", max_tokens=6, **GREEDY)
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=6, **GREEDY)
    nested = client.completions.create(model="tiny", prompt=[ids], max_tokens=6, **GREEDY)
    assert by_ids.choices[0].text == by_text.choices[0].text == nested.choices[0].text


def test_stream_matches_whole_and_reports_usage(client):
    whole = client.completions.create(model="tiny", prompt="In a hole", max_tokens=8, **GREEDY)
    chunks = list(client.completions.create(model="tiny", prompt="In a hole", max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_echo_puts_the_prompt_first_streamed_or_not(client, tokenizer):
    plain = client.completions.create(model="tiny", prompt="Echo this", max_tokens=4, **GREEDY).choices[0].text
    echoed = client.completions.create(model="tiny", prompt="Echo this", max_tokens=4, echo=True, **GREEDY).choices[0].text
    assert echoed == "Echo this" + plain
    streamed = client.completions.create(model="tiny", prompt="Echo this", max_tokens=4, echo=True, stream=True, **GREEDY)
    assert "".join(c.choices[0].text for c in streamed) == echoed
    ids = client.completions.create(model="tiny", prompt=tokenizer.encode("Echo this").ids, max_tokens=4, echo=True, **GREEDY)
    assert ids.choices[0].text == echoed  # token ids echo as their text
    only = client.completions.create(model="tiny", prompt="Echo this", max_tokens=0, echo=True)
    assert only.choices[0].text == "Echo this" and only.usage.completion_tokens == 0 and only.usage.prompt_tokens > 0


def test_stop_ends_the_text_before_the_stop_string(client):
    base = client.completions.create(model="tiny", prompt="Count", max_tokens=20, **GREEDY).choices[0].text
    stop = base[len(base) // 2 : len(base) // 2 + 3]
    c = client.completions.create(model="tiny", prompt="Count", max_tokens=20, stop=[stop], **GREEDY)
    assert c.choices[0].finish_reason == "stop" and c.choices[0].text == base[: base.index(stop)]


@pytest.mark.parametrize("extra,param", [
    ({"prompt": ["one", "two"]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": "x", "logprobs": 2, "echo": True}, "logprobs"),  # the prompt's logprobs are not computed
    ({"prompt": "x", "logprobs": 6}, "logprobs"),
    ({"prompt": "x", "n": 2, "best_of": 3}, "best_of"),
    ({"prompt": [1, 10**7]}, "prompt"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),  # the tiny model has no FIM tokens
])
def test_what_cannot_be_honoured_is_a_400_naming_it(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", max_tokens=2, **extra)
    assert err.value.body["param"] == param, err.value.body


def test_legacy_logprobs_streamed_and_whole(client):
    c = client.completions.create(model="tiny", prompt="Once upon", max_tokens=5, logprobs=2, **GREEDY)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5 and "".join(lp.tokens) == c.choices[0].text
    assert all(len(top) == 2 and max(top.values()) >= chosen - 1e-5 for top, chosen in zip(lp.top_logprobs, lp.token_logprobs))
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    chunks = list(client.completions.create(model="tiny", prompt="Once upon", max_tokens=5, logprobs=2, stream=True, **GREEDY))
    streamed = [t for ch in chunks if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens]
    offsets = [o for ch in chunks if ch.choices and ch.choices[0].logprobs for o in ch.choices[0].logprobs.text_offset]
    assert streamed == lp.tokens and offsets == lp.text_offset


def test_n_choices_share_the_prompt_and_echo_each(client):
    single = client.completions.create(model="tiny", prompt="Once upon", max_tokens=4, **GREEDY).choices[0].text
    many = client.completions.create(model="tiny", prompt="Once upon", max_tokens=4, n=3, echo=True, **GREEDY)
    assert [c.index for c in many.choices] == [0, 1, 2] and {c.text for c in many.choices} == {"Once upon" + single}
    scored = client.completions.create(model="tiny", prompt="Once upon", max_tokens=4, n=2, logprobs=1, **GREEDY)
    assert all(c.logprobs.text_offset[0] == 0 and len(c.logprobs.tokens) == 4 and c.finish_reason == "length" for c in scored.choices)
    chunks = list(client.completions.create(model="tiny", prompt="Once upon", max_tokens=4, n=2, stream=True, **GREEDY))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert "".join(c.text for c in mine) == single and [c.finish_reason for c in mine if c.finish_reason] == ["length"]


@pytest.fixture(scope="module")
@starts_processes
def fim_stack(tiny_model_path, log_dir, tmp_path_factory):
    """The tiny model with three of its unused special tokens renamed to
    StarCoder's FIM tokens: a model with fill-in-the-middle, built offline."""
    folder = tmp_path_factory.mktemp("fim") / "tiny-fim"
    shutil.copytree(tiny_model_path, folder)
    path = folder / "tokenizer.json"
    tok = json.loads(path.read_text())
    rename = {"<jupyter_start>": "<fim_prefix>", "<jupyter_text>": "<fim_suffix>", "<jupyter_code>": "<fim_middle>"}
    for added in tok["added_tokens"]:
        added["content"] = rename.get(added["content"], added["content"])
    tok["model"]["vocab"] = {rename.get(k, k): v for k, v in tok["model"]["vocab"].items()}
    path.write_text(json.dumps(tok))
    stack = start_stack(folder, log_dir)
    yield stack, Tokenizer.from_file(str(path))
    stack.stop()


def test_suffix_fills_the_middle_with_the_models_fim_tokens(fim_stack):
    stack, tok = fim_stack
    client = openai.OpenAI(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=60)
    c = client.completions.create(model="tiny", prompt="def add(a, b):\n", suffix="\n    return c\n", max_tokens=5, **GREEDY)
    layout = "<fim_prefix>def add(a, b):\n<fim_suffix>\n    return c\n<fim_middle>"
    assert c.usage.prompt_tokens == len(tok.encode(layout).ids)
    assert c.usage.completion_tokens == 5
    plain = client.completions.create(model="tiny", prompt="def add(a, b):\n", max_tokens=5, **GREEDY)
    assert plain.usage.prompt_tokens == len(tok.encode("def add(a, b):\n").ids)


@pytest.fixture(scope="module")
def smol(smol_stack):
    return openai.OpenAI(base_url=smol_stack.base_url, api_key="unused", max_retries=0, timeout=120)


def test_the_real_model_continues_a_raw_prompt(smol):
    c = smol.completions.create(model="m", prompt="The capital of France is", max_tokens=4, **GREEDY)
    assert "Paris" in c.choices[0].text
