import io

from rich.console import Console

from client.render import TerminalRenderer, looks_like_markdown, rows_used, sanitize


def written(c: Console) -> str:
    assert isinstance(c.file, io.StringIO)
    return c.file.getvalue()


def console(height: int = 30, width: int = 40, terminal: bool = True) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, width=width, height=height, color_system="standard" if terminal else None)


def test_rows_used() -> None:
    assert rows_used("", 10) == 1
    assert rows_used("abc", 10) == 1
    assert rows_used("a" * 10, 10) == 1  # exactly full: cursor stays on the row
    assert rows_used("a" * 11, 10) == 2
    assert rows_used("a\nb\n", 10) == 3
    assert rows_used("漢字" * 2, 8) == 1 and rows_used("漢字" * 3, 10) == 2
    assert rows_used("漢" * 3, 5) == 2  # a wide char never splits: 2 per row at width 5
    assert rows_used("a" + "漢" * 2, 4) == 2
    assert rows_used("\tx", 4) == 3  # tab expands to 8 cells


def test_sanitize_strips_terminal_controls() -> None:
    assert sanitize("a\x1b[2Jb\x07c\td\n") == "a[2Jbc\td\n"


def test_markdown_detection() -> None:
    assert looks_like_markdown("# Title")
    assert looks_like_markdown("use `x`")
    assert looks_like_markdown("- item")
    assert not looks_like_markdown("Just a sentence, nothing fancy.")


def test_raw_stream_then_newline() -> None:
    c = console()
    r = TerminalRenderer(c, markdown=True)
    r.start()
    r.content("plain ")
    r.content("answer")
    r.finish()
    assert written(c) == "plain answer\n"


def test_reasoning_is_dim_and_separated() -> None:
    c = console()
    r = TerminalRenderer(c)
    r.reasoning("\nhmm")
    r.content("\n\nyes")
    r.finish()
    out = written(c)
    assert out == "\x1b[2mhmm\x1b[0m\n\nyes\n"


def test_hidden_reasoning() -> None:
    c = console()
    r = TerminalRenderer(c, show_reasoning=False)
    r.reasoning("secret")
    r.content("\nyes")
    r.finish()
    assert written(c) == "yes\n"


def test_markdown_redraw_when_it_fits() -> None:
    c = console()
    r = TerminalRenderer(c)
    r.content("# Title\n\nsome **bold**")
    r.finish()
    out = written(c)
    raw, _, redrawn = out.partition("\r\x1b[2A\x1b[J")  # up two rows: the raw answer's three lines
    assert raw == "# Title\n\nsome **bold**"
    assert "Title" in redrawn and "**" not in redrawn


def test_no_redraw_when_too_tall_or_not_a_terminal() -> None:
    c = console(height=5)
    r = TerminalRenderer(c)
    r.content("# T\n" + "line\n" * 10)
    r.finish()
    assert "\x1b[J" not in written(c)
    c = console(terminal=False)
    r = TerminalRenderer(c)
    r.content("# T")
    r.finish()
    assert written(c) == "# T\n"
    c = console()
    r = TerminalRenderer(c, markdown=False)
    r.content("# T")
    r.finish()
    assert written(c) == "# T\n"
