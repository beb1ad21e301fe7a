"""Cohere's embed API as its own clients call it, unmodified: cohere.ClientV2 and cohere.Client
(v1) with base_url, and LangChain's CohereEmbeddings. The float vectors must be
sentence-transformers' (reference.json); the other types, what quantize_embeddings makes of
them; errors, Cohere's `{"message"}`."""

import base64

import cohere
import numpy as np
import pytest
import requests
from langchain_cohere import CohereEmbeddings

from conftest import MINILM, cosine, reference

TEXTS = [case["input"] for case in reference()["cases"]]
EXPECTED = [case["embedding"] for case in reference()["cases"]]


def test_client_v2_gets_every_type_at_once(server):
    client = cohere.ClientV2(api_key="unused", base_url=server.base)
    types = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
    response = client.embed(model=MINILM, texts=TEXTS, input_type="search_document", embedding_types=types)
    embeddings = response.embeddings
    for got, want in zip(embeddings.float_, EXPECTED):
        assert cosine(got, want) >= 0.99999
    floats = np.array(embeddings.float_, dtype=np.float32)
    bits = np.packbits(floats > 0, axis=-1)
    assert np.array_equal(np.array(embeddings.ubinary), bits)
    assert np.array_equal(np.array(embeddings.binary), bits.astype(np.int16) - 128)
    decoded = np.array([np.frombuffer(base64.b64decode(b), "<f4") for b in embeddings.base64])
    assert np.array_equal(decoded, floats)
    int8, uint8 = np.array(embeddings.int8), np.array(embeddings.uint8)
    assert int8.shape == uint8.shape == floats.shape
    assert int8.min() >= -128 and int8.max() <= 127 and uint8.min() >= 0 and uint8.max() <= 255
    # Codes keep the order of the floats in each dimension.
    for dimension in range(floats.shape[1]):
        order = np.argsort(floats[:, dimension], kind="stable")
        assert np.all(np.diff(int8[order, dimension]) >= 0)
    assert response.meta.billed_units.input_tokens > len(TEXTS)
    assert response.texts == TEXTS


def test_client_v2_output_dimension_and_query_type(server):
    client = cohere.ClientV2(api_key="unused", base_url=server.base)
    response = client.embed(
        model=MINILM, texts=TEXTS[:2], input_type="search_query", embedding_types=["float"], output_dimension=64
    )
    for got, want in zip(response.embeddings.float_, EXPECTED):
        assert len(got) == 64
        shortened = np.array(want[:64]) / np.linalg.norm(want[:64])
        assert np.allclose(got, shortened, atol=1e-5)


def test_max_tokens_embeds_each_texts_first_tokens(server):
    """max_tokens=6 is [CLS], the text's first four tokens and [SEP]: the vector of the text
    cut where its fourth token ends (TEI's /tokenize says where)."""
    client = cohere.ClientV2(api_key="unused", base_url=server.base)
    text = TEXTS[0]
    tokens = requests.post(
        server.base + "/tokenize", json={"inputs": text, "add_special_tokens": False}, timeout=30
    ).json()[0]
    assert len(tokens) > 4, tokens
    cut = text[: tokens[3]["stop"]]
    expected = requests.post(
        server.base + "/v1/embeddings", json={"model": MINILM, "input": cut}, timeout=30
    ).json()["data"][0]["embedding"]
    response = client.embed(
        model=MINILM, texts=[text], input_type="search_document", embedding_types=["float"], max_tokens=6
    )
    assert cosine(response.embeddings.float_[0], expected) >= 0.99999
    assert response.meta.billed_units.input_tokens == 6
    with pytest.raises(cohere.errors.BadRequestError):
        client.embed(
            model=MINILM, texts=[text], input_type="search_document", embedding_types=["float"],
            max_tokens=6, truncate="NONE",
        )


def test_truncate_start_embeds_each_texts_last_tokens(server):
    """Words of one token each: cut at the start, the long text is its last 254 words, and
    NONE refuses it."""
    client = cohere.ClientV2(api_key="unused", base_url=server.base)
    tail = " ".join((["one", "you", "all", "there", "would", "their"] * 50)[:254])
    long = "the of and to in is " * 2000 + tail
    embed = lambda text, truncate: client.embed(
        model=MINILM, texts=[text], input_type="search_document", embedding_types=["float"], truncate=truncate
    )
    expected = embed(tail, "NONE").embeddings.float_[0]
    response = embed(long, "START")
    assert cosine(response.embeddings.float_[0], expected) >= 0.99999
    assert response.meta.billed_units.input_tokens == 256
    assert cosine(embed(long, "END").embeddings.float_[0], expected) < 0.99
    with pytest.raises(cohere.errors.BadRequestError):
        embed(long, "NONE")


def test_client_v1_and_langchain(server):
    client = cohere.Client(api_key="unused", base_url=server.base)
    response = client.embed(model=MINILM, texts=TEXTS, input_type="search_document", embedding_types=["float"])
    for got, want in zip(response.embeddings.float_, EXPECTED):
        assert cosine(got, want) >= 0.99999
    embeddings = CohereEmbeddings(model=MINILM, cohere_api_key="unused", base_url=server.base)
    for got, want in zip(embeddings.embed_documents(TEXTS), EXPECTED):
        assert cosine(got, want) >= 0.99999
    assert cosine(embeddings.embed_query(TEXTS[0]), EXPECTED[0]) >= 0.99999


def test_errors_are_cohere_shaped(server):
    client = cohere.ClientV2(api_key="unused", base_url=server.base)
    with pytest.raises(cohere.errors.BadRequestError) as error:
        client.embed(model=MINILM, texts=TEXTS, input_type="search_document", embedding_types=["float16"])
    assert "float16" in error.value.body["message"]
    for body, status in [
        ({"model": MINILM, "texts": []}, 400),
        ({"model": MINILM, "texts": ["a"], "truncate": "MIDDLE"}, 400),
        ({"model": "no/such-model", "texts": ["a"]}, 404),
        ({"model": MINILM}, 400),
    ]:
        answer = requests.post(server.base + "/v2/embed", json=body, timeout=30)
        assert answer.status_code == status, answer.text
        assert set(answer.json()) == {"message"} and answer.json()["message"], answer.text
    # Cohere's rerank path too; the same request elsewhere keeps OpenAI's envelope.
    body = {"model": "no/such-reranker", "query": "q", "documents": ["d"]}
    cohere_shaped = requests.post(server.base + "/v2/rerank", json=body, timeout=30)
    assert cohere_shaped.status_code == 404 and set(cohere_shaped.json()) == {"message"}, cohere_shaped.text
    openai_shaped = requests.post(server.base + "/v1/rerank", json=body, timeout=30)
    assert openai_shaped.status_code == 404 and "error" in openai_shaped.json(), openai_shaped.text
