"""`kmlx`: the terminal client (chat, models, health), plus `kmlx serve` and
`kmlx service`, which live in their own modules.

Commands import their machinery lazily so `kmlx --help` stays quick.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated

import typer

from client.config import (
    DEFAULT_BASE_URL,
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_MODEL,
    ENV_OPENAI_API_KEY,
)

if TYPE_CHECKING:
    from client.api import Gateway
    from client.turn import ChatSettings

app = typer.Typer(
    name="kmlx",
    help="Chat with MLX models from the terminal; run and check the kmlx server.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Options shared by every command that talks to a gateway.
BaseUrl = Annotated[
    str,
    typer.Option(
        "--base-url", "-u", envvar=ENV_BASE_URL, metavar="URL", help="Gateway URL, up to and including /v1."
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar=[ENV_API_KEY, ENV_OPENAI_API_KEY],
        metavar="KEY",
        show_default=False,
        help="Bearer token, if the gateway wants one.",
    ),
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"kmlx: error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _gateway(base_url: str, api_key: str | None) -> Gateway:
    from client.api import Gateway

    return Gateway(base_url, api_key=api_key)


@app.command()
def chat(
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", "-p", metavar="TEXT", help="Ask once, print only the answer on stdout, exit."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", envvar=ENV_MODEL, metavar="ID", help="Model id (default: the gateway's first)."),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", "-n", min=1, metavar="N", help="Longest answer, in tokens.")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", "-t", min=0.0, metavar="T", help="Sampling temperature.")
    ] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", min=0.0, max=1.0, metavar="P", help="Nucleus sampling.")] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", metavar="TEXT", help="System prompt.")] = None,
    image: Annotated[
        list[str] | None,
        typer.Option("--image", "-i", metavar="PATH", help="Attach an image file or URL to the one-shot prompt (repeatable)."),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            metavar="KEY=VALUE",
            help="Extra request field, value as JSON if it parses (repeatable): -o top_k=20 -o seed=1.",
        ),
    ] = None,
    no_stream: Annotated[bool, typer.Option("--no-stream", metavar="", help="Wait for the whole answer.")] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", metavar="", help="Per turn: time to first token, tok/s, tokens, cache (X-Conv-KV)."
        ),
    ] = False,
    conversation_id: Annotated[
        str | None,
        typer.Option("--conversation-id", "-c", metavar="ID", help="Conversation id for the server's KV cache (default: new)."),
    ] = None,
    hide_reasoning: Annotated[
        bool, typer.Option("--hide-reasoning", metavar="", help="Do not show a thinking model's reasoning.")
    ] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown/--plain", metavar="", help="Redraw finished answers as Markdown.")
    ] = True,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Chat with a model: a REPL in a terminal, one answer with -p or piped stdin.

    In the REPL: [bold]Enter[/] sends, [bold]Alt-Enter[/] adds a line, [bold]Ctrl-N[/] starts a new
    conversation, [bold]Ctrl-C[/] stops an answer, [bold]Ctrl-C[/] twice or [bold]Ctrl-D[/] quits.
    Attach images with [bold]image:PATH[/] ([bold]image:"~/My Pictures/a.png"[/] for spaces).

    Examples:

      kmlx chat -v

      kmlx chat -p "Say hello"

      git diff | kmlx chat -s "Write a commit message for this diff."
    """
    from client.conversation import Conversation
    from client.turn import ChatSettings

    interactive = prompt is None and sys.stdin.isatty()
    if interactive and image:
        raise _fail("--image goes with -p or piped input; in the chat, type image:PATH")
    settings = ChatSettings(
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stream=not no_stream,
        extra=_parse_options(option or []),
    )
    conv = Conversation(system=system)
    if conversation_id:
        conv.id = conversation_id
    try:
        text = prompt
        if not interactive and text is None:
            text = sys.stdin.read()
            if not text.strip():
                raise _fail("nothing to ask: stdin was empty (use -p TEXT, or run in a terminal to chat)")
        with _gateway(base_url, api_key) as gw:
            _resolve_model(gw, settings, check=interactive)
            if interactive:
                from client.config import history_path
                from client.repl import Repl

                repl = Repl(
                    gw,
                    conv,
                    settings,
                    verbose=verbose,
                    show_reasoning=not hide_reasoning,
                    markdown=markdown,
                    history_file=history_path(),
                )
                code = repl.run()
            else:
                from client.oneshot import run_oneshot

                code = run_oneshot(
                    gw,
                    conv,
                    settings,
                    text or "",
                    images=image,
                    parse_images=prompt is not None,
                    verbose=verbose,
                    show_reasoning=not hide_reasoning,
                )
    except KeyboardInterrupt:  # outside a turn (turns handle their own)
        code = 130
    raise typer.Exit(code)


def _resolve_model(gw: Gateway, settings: ChatSettings, *, check: bool) -> None:
    """Default to the gateway's first model. With `check` (the REPL), ask even
    when a model was given: 'gateway not running' or 'no such model' is
    better said before anyone types a question."""
    from client.errors import ApiError, ClientError

    if settings.model and not check:
        return
    try:
        models = gw.models()
    except ApiError:
        return  # an OpenAI-compatible server without /models: let it choose
    except ClientError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    ids = [str(m.get("id")) for m in models]
    if not settings.model:
        settings.model = ids[0] if ids else None
    elif ids and settings.model not in ids:
        typer.secho(f"kmlx: warning: the gateway lists no model {settings.model!r} (it serves: {', '.join(ids)})",
                    err=True, fg=typer.colors.YELLOW)


def _parse_options(items: list[str]) -> dict[str, object]:
    import json

    extra: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--option")
        try:
            extra[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            extra[key.strip()] = raw  # a bare word is a string
    return extra


@app.command()
def models(
    json_out: Annotated[bool, typer.Option("--json", metavar="", help="Print the raw JSON list.")] = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """List the models the gateway serves (one id per line when piped)."""
    import json

    from client.errors import ClientError

    with _gateway(base_url, api_key) as gw:
        try:
            items = gw.models()
        except ClientError as exc:
            raise _fail(str(exc), exc.exit_code) from None
    if json_out:
        typer.echo(json.dumps(items, indent=2))
        return
    if not sys.stdout.isatty():
        for m in items:
            typer.echo(m.get("id", ""))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "owned by", "created", box=None, header_style="bold")
    for m in items:
        created = m.get("created")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) if isinstance(created, (int, float)) else ""
        table.add_row(str(m.get("id", "")), str(m.get("owned_by", "")), when)
    console = Console()
    console.print(table if items else "[dim](the gateway serves no models yet)[/]")


@app.command()
def health(
    wait: Annotated[
        float, typer.Option("--wait", "-w", min=0.0, metavar="SECONDS", help="Keep asking up to this many seconds until ready.")
    ] = 0.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No output; just the exit code.")] = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Is the gateway up and ready? Exit code 0 when ready, 1 when not.

    [dim]until kmlx health -q; do sleep 1; done[/]   or   [dim]kmlx health --wait 60[/]
    """
    from client.api import root_url
    from client.errors import ClientError

    deadline = time.monotonic() + wait
    with _gateway(base_url, api_key) as gw:
        while True:
            try:
                status, body = gw.health()
                problem = None if status == 200 else f"not ready (HTTP {status}): {_summary(body)}"
            except ClientError as exc:
                status, body, problem = 0, {}, str(exc)
            if problem is None or time.monotonic() >= deadline:
                break
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    if problem is not None:
        if not quiet:
            typer.secho(f"kmlx: {problem}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    if not quiet:
        typer.echo(f"ready · {root_url(gw.base_url)}/health · {_summary(body)}")


def _summary(body: dict) -> str:
    parts = [f"{k}={v}" for k, v in body.items() if isinstance(v, (str, int, float, bool))]
    return ", ".join(parts) or "(no details)"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"kmlx {version('kmlx')}")
        except PackageNotFoundError:
            typer.echo("kmlx (not installed as a package)")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, metavar="", is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Chat with MLX models from the terminal; run and check the kmlx server."""


def _register_serve() -> None:
    """`kmlx serve` (client/serve.py): a worker and a gateway in one command."""
    try:
        from client.serve import serve
    except ModuleNotFoundError as exc:
        if exc.name == "client.serve":
            return
        raise
    app.command("serve")(serve)


def _register_service() -> None:
    """`kmlx service` lives in client/service/ (written separately); the
    client must work with or without it, and a broken one must not take
    `kmlx chat` down with it."""
    try:
        from client.service.cli import service_app
    except ModuleNotFoundError as exc:
        if exc.name in ("client.service", "client.service.cli"):
            return
        _service_unavailable(exc)
        return
    except Exception as exc:  # noqa: BLE001 - report it when used, not at startup
        _service_unavailable(exc)
        return
    app.add_typer(service_app, name="service", help="Manage kmlx as a background service.")


def _service_unavailable(exc: BaseException) -> None:
    @app.command("service", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def _service() -> None:
        """(unavailable) Manage kmlx as a background service."""
        raise _fail(f"`kmlx service` is unavailable: {type(exc).__name__}: {exc}")


_register_serve()
_register_service()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
