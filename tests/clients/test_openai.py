"""The official openai client, unmodified, against the server."""

import base64
import json
import math
import struct

import httpx
import numpy as np
import openai
import pytest

from conftest import MINILM, cosine, reference


@pytest.fixture
def sent():
    """Request bodies the client sent, captured on the wire."""
    return []


@pytest.fixture
def client(server, sent):
    def record(request):
        if request.method == "POST":
            sent.append(json.loads(request.content))

    http = httpx.Client(event_hooks={"request": [record]})
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", http_client=http, max_retries=0)


def test_default_call_is_base64_and_matches_sentence_transformers(client, sent):
    cases = reference()["cases"]
    response = client.embeddings.create(model=MINILM, input=[c["input"] for c in cases])
    assert sent[-1]["encoding_format"] == "base64", "the client asks for base64 by default"
    assert [d.index for d in response.data] == list(range(len(cases)))
    for case, data in zip(cases, response.data):
        assert cosine(data.embedding, case["embedding"]) >= 0.99999, case["input"][:40]
    assert response.model == MINILM
    assert response.usage.prompt_tokens > 0


def test_float_format_gives_the_same_vectors(client):
    text = reference()["cases"][0]["input"]
    as_float = client.embeddings.create(model=MINILM, input=text, encoding_format="float")
    as_base64 = client.embeddings.create(model=MINILM, input=text)
    # The same f32 values: JSON prints each in its shortest form, base64 carries its bits.
    as_f32 = lambda v: struct.unpack(f"{len(v)}f", struct.pack(f"{len(v)}f", *v))
    assert as_f32(as_float.data[0].embedding) == as_f32(as_base64.data[0].embedding)


def test_dimensions(client):
    text = reference()["cases"][0]["input"]
    full = client.embeddings.create(model=MINILM, input=text).data[0].embedding
    short = client.embeddings.create(model=MINILM, input=text, dimensions=64).data[0].embedding
    assert len(short) == 64
    norm = math.sqrt(sum(x * x for x in full[:64]))
    assert all(abs(s - f / norm) < 1e-6 for s, f in zip(short, full[:64]))


def test_binary_vectors_are_numpys_packbits_of_the_floats(client):
    """What sentence-transformers' quantize_embeddings(precision="ubinary"/"binary") gives."""
    texts = [c["input"] for c in reference()["cases"]]
    floats = np.array([d.embedding for d in client.embeddings.create(model=MINILM, input=texts, dimensions=100).data])
    bits = np.packbits(floats > 0, axis=-1)
    ubinary = client.embeddings.create(model=MINILM, input=texts, dimensions=100, encoding_format="ubinary")
    assert [d.embedding for d in ubinary.data] == bits.tolist()
    binary = client.embeddings.create(
        model=MINILM, input=texts, extra_body={"output_dtype": "binary", "output_dimension": 100}, encoding_format="base64"
    )
    as_bytes = [np.frombuffer(base64.b64decode(d.embedding), np.int8) for d in binary.data]
    assert [b.tolist() for b in as_bytes] == (bits.astype(np.int16) - 128).tolist()


def test_many_inputs_keep_their_order(client):
    cases = reference()["cases"] * 10
    response = client.embeddings.create(model=MINILM, input=[c["input"] for c in cases])
    assert len(response.data) == len(cases)
    for case, data in zip(cases, response.data):
        assert cosine(data.embedding, case["embedding"]) >= 0.99999


def test_unknown_model_is_not_found_error(client):
    with pytest.raises(openai.NotFoundError) as error:
        client.embeddings.create(model="no/such-model", input="x")
    assert "no/such-model" in error.value.message
    assert error.value.code == "model_not_found"


def test_bad_input_is_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.embeddings.create(model=MINILM, input=[])
    assert "empty" in error.value.message
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MINILM, input="x", dimensions=10_000)
