"""Tiny random-weight models whose chat templates exercise agent features.

The tiny llama (worker/models/tiny.py) with its tokenizer, and a template
written here in the Hermes/Qwen2.5 style: it renders ``tools``, tool
history and ``<tool_call>`` blocks (so mlx-lm detects the ``json_tools``
family), and reads ``enable_thinking``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

HERMES_TEMPLATE = """
{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools

You may call one or more functions to assist with the user query.
You are provided with function signatures within <tools></tools> XML tags:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first %}
{%- elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{% if message.content %}{{ message.content }}
{% endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}<tool_call>
{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}
</tool_call>
{% endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}<think>

</think>

{% endif %}{% endif %}"""


def hermes_variant(tiny: Path, dest: Path, *, generation_config: dict | None = None) -> Path:
    """A copy of the tiny model with the Hermes-style template (weights linked, not copied)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in tiny.iterdir():
        target = dest / f.name
        if target.exists() or f.is_dir():
            continue
        if f.suffix == ".safetensors":
            target.symlink_to(f)
        else:
            shutil.copy(f, target)
    config = json.loads((dest / "tokenizer_config.json").read_text())
    config["chat_template"] = HERMES_TEMPLATE
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    if generation_config is not None:
        (dest / "generation_config.json").write_text(json.dumps(generation_config))
    return dest
