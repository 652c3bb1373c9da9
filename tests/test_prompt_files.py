"""Prompt files as editors save them (case 15): a UTF-8 byte-order mark, CRLF line ends, blank
and whitespace-only lines, non-ASCII text; and the one-line message when a file is not usable."""

import os

import pytest

from engine.errors import UserError
from engine.job.prompts import build_pool
from engine.spec import parse_spec

from .conftest import BASE_SPEC

FIELD = os.path.join(os.path.dirname(__file__), "fixtures", "field")


def jsonl(tmp_path, data: bytes):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(data)
    return parse_spec({**BASE_SPEC, "output": str(tmp_path / "out"), "classes": ["circle", "square"],
                       "prompts": {"source": "jsonl", "path": str(path)}})


def test_a_notepad_file_loads_like_its_plain_copy(tmp_path):
    """BOM, CRLF, blank and whitespace-only lines, French, Japanese and typographic characters."""
    data = open(os.path.join(FIELD, "prompts_notepad.jsonl"), "rb").read()
    assert data.startswith(b"\xef\xbb\xbf") and b"\r\n\r\n" in data
    items = build_pool(jsonl(tmp_path, data))
    assert [(i.prompt, i.classes, i.negative_prompt) for i in items] == [
        ("une photo d'un cercle rouge près d'un carré bleu", ("circle", "square"), ""),
        ("a photograph of a circle — «sharp», 4K", ("circle",), ""),
        ("写真: a square on a table", ("square",), ""),
        ("a photograph of two circles", ("circle", "circle"), "blurry")]
    plain = data.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")
    assert build_pool(jsonl(tmp_path, plain)) == items


def test_old_mac_line_ends_and_tabs(tmp_path):
    items = build_pool(jsonl(tmp_path, b'\t{"prompt": "a circle"}\r\r{"prompt": "two squares"}\r'))
    assert [i.classes for i in items] == [("circle",), ("square",)]


@pytest.mark.parametrize("data, message", [
    ('{"prompt": "a circle"}\n'.encode("utf-16"), "expected UTF-8 text, got a UTF-16 file"),
    (b'{"prompt": "a circle"}\n{"prompt": "caf\xe9"}\n', "line 2: expected UTF-8 text, got bytes that do not decode"),
    (b'{"prompt": "a circle"}\n{"prompt": 3}\n', "line 2: expected a JSON object with a 'prompt' string, got"),
    (b'{"prompt": "a circle", "classes": "circle"}\n', "line 1: expected 'classes' to be a list of class names, "
                                                       "got 'circle'"),
    (b"\xef\xbb\xbf\r\n \r\n", "expected at least one prompt, got an empty file"),
])
def test_an_unusable_file_gets_one_line_naming_the_problem(tmp_path, data, message):
    with pytest.raises(UserError, match=f"^prompts.path.*{message}"):
        build_pool(jsonl(tmp_path, data))
