import base64
from pathlib import Path

import pytest

from client.attachments import build_content, load_image, parse_input, sniff_mime
from client.errors import AttachmentError

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.fixture
def pics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "My Pictures").mkdir()
    (tmp_path / "My Pictures" / "a b.png").write_bytes(PNG)
    (tmp_path / "cat.png").write_bytes(PNG)
    (tmp_path / "dog.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 8)
    (tmp_path / "notes.txt").write_text("hello")
    return tmp_path


def test_no_images_is_plain_text() -> None:
    p = parse_input("  just a question  ")
    assert p.text == "just a question" and p.images == []
    assert build_content(p) == "just a question"


def test_image_token_anywhere(pics: Path) -> None:
    p = parse_input("Describe image:~/cat.png please")
    assert p.images == ["~/cat.png"] and p.text == "Describe please"


def test_quoted_paths_with_spaces(pics: Path) -> None:
    p = parse_input('image:"~/My Pictures/a b.png" and image:\'~/cat.png\' compare')
    assert p.images == ["~/My Pictures/a b.png", "~/cat.png"]
    assert p.text == "and compare"


def test_backslash_escaped_spaces(pics: Path) -> None:
    p = parse_input(r"image:~/My\ Pictures/a\ b.png what is it")
    assert p.images == ["~/My Pictures/a b.png"] and p.text == "what is it"


def test_unescaped_spaces_resolved_against_the_filesystem(pics: Path) -> None:
    p = parse_input("image:~/My Pictures/a b.png what is it")
    assert p.images == ["~/My Pictures/a b.png"] and p.text == "what is it"


def test_several_images_and_case(pics: Path) -> None:
    p = parse_input("IMAGE:~/cat.png image:~/dog.jpg two pets")
    assert p.images == ["~/cat.png", "~/dog.jpg"]
    content = build_content(p)
    assert isinstance(content, list)
    assert [c["type"] for c in content] == ["image_url", "image_url", "text"]
    assert content[0]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert content[2] == {"type": "text", "text": "two pets"}


def test_not_a_token_when_glued_or_followed_by_space() -> None:
    assert parse_input("docker:image:nginx").images == []
    assert parse_input("image: nginx:latest").images == []
    assert parse_input("image:").images == []


def test_urls_pass_through() -> None:
    p = parse_input("image:https://example.com/x.png what")
    assert build_content(p)[0]["image_url"]["url"] == "https://example.com/x.png"  # type: ignore[index]


def test_friendly_errors(pics: Path) -> None:
    with pytest.raises(AttachmentError, match="image not found: ~/nope.png"):
        build_content(parse_input("image:~/nope.png hi"))
    with pytest.raises(AttachmentError, match="not an image"):
        load_image(str(pics / "notes.txt"))
    with pytest.raises(AttachmentError, match="folder"):
        load_image(str(pics / "My Pictures"))
    with pytest.raises(AttachmentError, match="unclosed quote"):
        parse_input('image:"~/cat.png hi')
    with pytest.raises(AttachmentError, match="empty image path"):
        parse_input('image:"" hi')


def test_only_an_image(pics: Path) -> None:
    content = build_content(parse_input("image:~/cat.png"))
    assert isinstance(content, list) and len(content) == 1


def test_sniff_mime_falls_back_to_extension() -> None:
    assert sniff_mime(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_mime(b"????", "x.heic") in ("image/heic", None)
    assert sniff_mime(b"????", "x.txt") is None
