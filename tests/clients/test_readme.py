"""Every curl example in the README and the docs runs and gives what the page says it gives."""

import json
import pathlib
import re
import subprocess

import pytest

from conftest import MINILM, MODELS, ROOT, Server

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "src").glob("*.md"))]


def examples(page):
    """A ```sh block with curl in it, and the ```json block that follows it, if the next block is one."""
    blocks = re.findall(r"```(\w*)\n(.*?)```", page.read_text(), re.S)
    return [
        (page.relative_to(ROOT), code, blocks[i + 1][1] if i + 1 < len(blocks) and blocks[i + 1][0] == "json" else None)
        for i, (lang, code) in enumerate(blocks)
        if lang == "sh" and "curl " in code
    ]


EXAMPLES = [example for page in PAGES for example in examples(page)]


@pytest.fixture(scope="module")
def readme_server():
    # The README's own start command serves MiniLM from ../shared/models; the docs' examples
    # of classification and sparse embeddings add those fixtures; MiniLM stays the default.
    kinds = ROOT.parent / "shared" / "kinds"
    server = Server(
        "--models-dir", MODELS, "--model", MINILM,
        "--model", kinds / "text-classifier-4labels", "--model", kinds / "splade-sparse",
        "--default-model", MINILM,
    )
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


def test_the_readme_and_the_docs_have_curl_examples():
    pages = {page for page, _, _ in EXAMPLES}
    assert pathlib.Path("README.md") in pages and len(pages) >= 3, pages


@pytest.mark.parametrize(
    "page,code,expected", EXAMPLES, ids=[f"{page}: {code.splitlines()[0][:50]}" for page, code, _ in EXAMPLES]
)
def test_curl_example(readme_server, page, code, expected):
    script = code.replace("http://127.0.0.1:8080", readme_server.base)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outputs = documents(result.stdout)
    assert outputs, "prints JSON"
    for output in outputs:
        assert "error" not in output, output
    if expected is not None:
        contains(outputs[0], json.loads(expected))
