"""How one request becomes what the batch runs: its tool plan, the grammar
its output must follow, its text pipeline, its sampling and its token budget.

The parts of scheduling that look at one request alone (no batch, no cache),
shared by the text and vision schedulers. Every method may refuse: with an
``ErrorInfo`` naming the field, or by raising ``GrammarError`` /
``PromptError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocol.messages import ChatRequest, ErrorInfo

from .generation_config import Sampling, SamplingDefaults
from .grammar import GrammarCompiler, GrammarProcessor, answer_schema, response_format_grammar, tool_call_grammar
from .prompt import template_variables
from .raw_prompt import untrimmed
from .text_stream import THINK_CLOSE, TextStream
from .tool_format import FALLBACK, ToolFormat, ToolPlan

if TYPE_CHECKING:
    from .scheduler import SchedulerLimits


class RequestSetup:
    """Mixed into ``Scheduler``, which sets these attributes."""

    tokenizer: Any
    tool_format: ToolFormat
    marker_tokens: dict[str, int]
    grammars: GrammarCompiler
    template_defaults: dict[str, Any]
    sampling_defaults: SamplingDefaults
    limits: SchedulerLimits
    vocab_size: int
    context_length: int

    def tool_plan(self, req: ChatRequest) -> ToolPlan:
        """How this request's tools and tool history go into the prompt
        (tool_format.py). A forced call in a family whose format kmlx cannot
        enforce uses the fallback format for that request."""
        fmt = self.tool_format
        if req.tool_choice.mode in ("required", "function") and req.tools and not fmt.constrainable:
            fmt = FALLBACK
        return ToolPlan(fmt, req.tools or [], req.tool_choice, req.parallel_tool_calls)

    def constraint(self, req: ChatRequest, starts_in_reasoning: bool) -> GrammarProcessor | None:
        """The grammar this request's output must follow, if any (grammar.py);
        raises GrammarError naming what cannot be enforced."""
        plan = self.tool_plan(req)
        forced = plan.offered and req.tool_choice.mode in ("required", "function")
        fmt = req.response_format
        if forced:
            grammar, param = tool_call_grammar(plan, tokens=self.marker_tokens), "tools"
        elif fmt.type != "text" and plan.offered and plan.format.constrainable:
            grammar, param = tool_call_grammar(plan, answer=answer_schema(fmt), tokens=self.marker_tokens), "response_format"
        elif fmt.type != "text":
            grammar, param = response_format_grammar(fmt), "response_format"
        else:
            return None
        matcher = self.grammars.matcher(grammar, param)
        gate = THINK_CLOSE.encode() if starts_in_reasoning else None
        return GrammarProcessor(matcher, self.grammars.tokenizer(param), gate=gate)

    def text_stream(self, req: ChatRequest, starts_in_reasoning: bool) -> TextStream:
        """The request's output pipeline: stop strings, <think> split, tool calls."""
        chat = req.prompt is None
        plan = self.tool_plan(req)
        parser = plan.format.parser(req.tools, parallel=req.parallel_tool_calls) if chat and plan.offered else None
        return TextStream.create(
            req.sampling.stop, strip_thinking=req.strip_thinking, starts_in_reasoning=starts_in_reasoning,
            split_thinking=chat, tools=parser,
        )

    def template_variables(self, req: ChatRequest, tokenizer: Any = None) -> dict[str, Any]:
        """Extra chat-template variables for this request; raises PromptError."""
        return template_variables(
            tokenizer or self.tokenizer, req.chat_template_kwargs, defaults=self.template_defaults,
            reasoning_effort=req.reasoning_effort,
        )

    def resolve_sampling(self, req: ChatRequest) -> Sampling | ErrorInfo:
        """The request's sampling with every unset field defaulted
        (generation_config.py), or why it cannot be honoured."""
        if sampling_n(req) > self.limits.max_running:
            return ErrorInfo(
                f"n is {req.sampling.n}, but this worker runs at most {self.limits.max_running} sequences together",
                param="n", code="invalid_value",
            )
        sampling = self.sampling_defaults.resolve(req.sampling)
        bad = [t for t in sampling.logit_bias if not 0 <= t < self.vocab_size] if self.vocab_size else []
        if bad:
            return ErrorInfo(
                f"logit_bias names token id {bad[0]}, but this model's vocabulary has {self.vocab_size} tokens",
                param="logit_bias", code="invalid_value",
            )
        return sampling

    def detokenizer(self, req: ChatRequest) -> Any:
        """A fresh streaming detokenizer for one choice of ``req``."""
        return self.tokenizer.detokenizer if req.prompt is None else untrimmed(self.tokenizer.detokenizer)

    def completion_budget(
        self, req: ChatRequest, n_prompt: int, what: str = "the messages", *, sampling: Sampling | None = None
    ) -> int | ErrorInfo:
        """Tokens this request may generate: its own limit (or the model's
        default), the operator's cap and the room left in the context — or
        why it cannot run at all."""
        room = self.context_length - n_prompt
        if room <= 0:
            return ErrorInfo(
                f"this model's maximum context length is {self.context_length} tokens; {what} are {n_prompt} tokens",
                param="messages" if req.prompt is None else "prompt",
                code="context_length_exceeded",
            )
        asked = sampling.max_tokens if sampling is not None else req.sampling.max_tokens
        wanted = asked or self.limits.default_max_tokens or room
        return max(1, min(wanted, room, self.limits.max_tokens_limit or room))


def sampling_n(req: ChatRequest) -> int:
    return max(1, req.sampling.n)
