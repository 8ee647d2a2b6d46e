"""How one model calls tools: its family, how tools and tool history are
rendered into its prompt, and which parser reads its calls.

Templates that render ``tools`` themselves keep doing so, and the model's
own call format is parsed (``tool_parsers.py``; the family comes from
mlx-lm's detection on the template, plus Llama 3's JSON format, which
mlx-lm does not name). Templates without tool support get kmlx's fallback
(docs/agents.md): the tools in a system preamble, calls written as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, and tool
history rewritten into that same text, so every model can call tools.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from typing import Any

from protocol.messages import ToolChoice

from .tool_parsers import Llama3JSONParser, MistralParser, TaggedJSONParser, ToolCallParser, WholeCallParser

FALLBACK_START, FALLBACK_END = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class ToolFormat:
    family: str  # "hermes", "llama3", "mistral", "fallback", or another mlx-lm family's name
    native: bool  # the chat template renders tools and tool history itself
    start: str = FALLBACK_START
    end: str = FALLBACK_END

    def parser(self, tools: list[dict[str, Any]] | None, *, parallel: bool = True) -> ToolCallParser:
        p: ToolCallParser
        if self.family in ("hermes", "fallback"):
            p = TaggedJSONParser(self.start, self.end)
        elif self.family == "llama3":
            p = Llama3JSONParser()
        elif self.family == "mistral":
            p = MistralParser()
        else:
            module = importlib.import_module(f"mlx_lm.tool_parsers.{self.family}")
            p = WholeCallParser(self.start, self.end, module.parse_tool_call, tools)
        p.limit = None if parallel else 1
        return p

    @property
    def constrainable(self) -> bool:
        """Whether required/named calls can be forced in this family's own format
        (otherwise the fallback format is forced, and parsed, for that request)."""
        return self.family in ("hermes", "fallback", "llama3")


FALLBACK = ToolFormat("fallback", native=False)


def detect(tokenizer: Any, template: str) -> ToolFormat:
    """This model's tool format, from its chat template (mlx-lm's detection first)."""
    if not re.search(r"\btools\b", template):
        return FALLBACK
    inner = getattr(tokenizer, "_tokenizer", tokenizer)
    family = (getattr(inner, "init_kwargs", None) or {}).get("tool_parser_type")
    start = getattr(tokenizer, "tool_call_start", None)
    end = getattr(tokenizer, "tool_call_end", None)
    if family == "json_tools":
        return ToolFormat("hermes", True, start or FALLBACK_START, end or FALLBACK_END)
    if family == "mistral":
        return ToolFormat("mistral", True, "[TOOL_CALLS]", "")
    if family:
        return ToolFormat(family, True, start or "", end or "")
    if "<|python_tag|>" in template or '"parameters": dictionary of argument name' in template:
        return ToolFormat("llama3", True, "", "")
    return FALLBACK  # it renders tools in a format we cannot read back


@dataclass(frozen=True)
class ToolPlan:
    """What one request's prompt gets for tools."""

    format: ToolFormat
    tools: list[dict[str, Any]]
    choice: ToolChoice
    parallel: bool = True

    @property
    def offered(self) -> bool:
        """Whether the model is told about the tools (tool_choice "none" hides them)."""
        return bool(self.tools) and self.choice.mode != "none"

    def template_tools(self) -> list[dict[str, Any]] | None:
        return self.tools if self.offered and self.format.native else None

    def chat(self, chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages as this template should see them."""
        if self.format.native:
            return [_native_history(m) for m in chat]
        out = _fallback_history(chat)
        if self.offered:
            out = _with_preamble(out, fallback_preamble(self.tools, self.choice, self.parallel))
        return out


def _native_history(m: dict[str, Any]) -> dict[str, Any]:
    """Templates expect a call's arguments as a mapping (they ``tojson`` it);
    OpenAI clients send a JSON string."""
    calls = m.get("tool_calls")
    if not calls:
        return m
    fixed = []
    for c in calls:
        fn = dict(c.get("function") or {})
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                parsed = json.loads(args)
                fn["arguments"] = parsed if isinstance(parsed, dict) else args
            except ValueError:
                pass
        fixed.append({**c, "function": fn})
    return {**m, "tool_calls": fixed}


def call_text(name: str, arguments: Any) -> str:
    """One call in the fallback format."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    return f"{FALLBACK_START}{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}{FALLBACK_END}"


def _fallback_history(chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls and results as plain text in roles every template knows."""
    out: list[dict[str, Any]] = []
    for m in chat:
        if m.get("tool_calls"):
            calls = "\n".join(call_text(c["function"]["name"], c["function"].get("arguments", {})) for c in m["tool_calls"])
            text = f"{m['content']}\n{calls}" if m.get("content") else calls
            out.append({"role": "assistant", "content": text})
        elif m["role"] == "tool":
            result = f"<tool_response>\n{m.get('content', '')}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1]["content"].startswith("<tool_response>"):
                out[-1] = {"role": "user", "content": out[-1]["content"] + "\n" + result}
            else:
                out.append({"role": "user", "content": result})
        else:
            out.append({k: v for k, v in m.items() if k not in ("tool_calls", "tool_call_id")})
    return out


def fallback_preamble(tools: list[dict[str, Any]], choice: ToolChoice, parallel: bool) -> str:
    listed = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    lines = [
        "You can call these tools; each line is a tool's name, description and the JSON Schema of its arguments:",
        f"<tools>\n{listed}\n</tools>",
        "To call a tool, reply with only this, with the arguments as a JSON object:",
        f'{FALLBACK_START}{{"name": "<tool name>", "arguments": {{...}}}}{FALLBACK_END}',
    ]
    if parallel:
        lines.append("To call several tools, write one such line per call.")
    if choice.mode == "required":
        lines.append("You must call a tool now.")
    elif choice.mode == "function":
        lines.append(f"You must call the tool {choice.name} now.")
    else:
        lines.append("If no tool is needed, answer normally.")
    return "\n".join(lines)


def _with_preamble(chat: list[dict[str, Any]], preamble: str) -> list[dict[str, Any]]:
    if chat and chat[0]["role"] == "system":
        first = chat[0]
        return [{**first, "content": f"{first['content']}\n\n{preamble}" if first["content"] else preamble}, *chat[1:]]
    return [{"role": "system", "content": preamble}, *chat]
