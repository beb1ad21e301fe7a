"""Every curl example in the README runs and gives what the README says it gives."""

import json
import re
import subprocess

import pytest

from conftest import MINILM, MODELS, ROOT, Server

README = (ROOT / "README.md").read_text()
# A ```sh block with curl in it, and the ```json block that follows it, if the next block is one.
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, re.S)
EXAMPLES = [
    (code, BLOCKS[i + 1][1] if i + 1 < len(BLOCKS) and BLOCKS[i + 1][0] == "json" else None)
    for i, (lang, code) in enumerate(BLOCKS)
    if lang == "sh" and "curl " in code
]


@pytest.fixture(scope="module")
def readme_server():
    # The README's own start command serves MiniLM from ../shared/models.
    server = Server("--models-dir", MODELS, "--model", MINILM)
    yield server
    server.stop()


def documents(text):
    """The JSON documents in `text`, one after another (curl prints them back to back)."""
    decoder, position, found = json.JSONDecoder(), 0, []
    text = text.strip()
    while position < len(text):
        document, position = decoder.raw_decode(text, position)
        found.append(document)
        while position < len(text) and text[position].isspace():
            position += 1
    return found


def contains(actual, expected, path="$"):
    """`expected` is `actual` with arrays cut short: every value shown must be there."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), path
        for key, value in expected.items():
            assert key in actual, f"{path}.{key} missing"
            contains(actual[key], value, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) >= len(expected), path
        for i, value in enumerate(expected):
            contains(actual[i], value, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert abs(actual - expected) < 1e-6, f"{path}: {actual} != {expected}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def test_the_readme_has_curl_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("code,expected", EXAMPLES, ids=[c.splitlines()[0][:50] for c, _ in EXAMPLES])
def test_curl_example(readme_server, code, expected):
    script = code.replace("http://127.0.0.1:8080", readme_server.base)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outputs = documents(result.stdout)
    assert outputs, "prints JSON"
    for output in outputs:
        assert "error" not in output, output
    if expected is not None:
        contains(outputs[0], json.loads(expected))
