"""LangChain's OpenAIEmbeddings with its defaults: tiktoken ids on the wire, offline."""

import asyncio
import json

import httpx
import pytest
from langchain_openai import OpenAIEmbeddings

from conftest import MINILM, cosine, reference


@pytest.fixture
def sent():
    return []


def embeddings(server, sent, **kwargs):
    def record(request):
        if request.method == "POST":
            sent.append(json.loads(request.content))

    async def record_async(request):
        record(request)

    return OpenAIEmbeddings(
        base_url=server.base + "/v1",
        api_key="unused",
        model=MINILM,
        http_client=httpx.Client(event_hooks={"request": [record]}),
        http_async_client=httpx.AsyncClient(event_hooks={"request": [record_async]}),
        **kwargs,
    )


def assert_matches(vectors, cases):
    assert len(vectors) == len(cases)
    for vector, case in zip(vectors, cases):
        assert cosine(vector, case["embedding"]) >= 0.99999, case["input"][:40]


def test_defaults_send_tiktoken_ids_and_get_the_text_vectors(server, sent):
    cases = reference()["cases"]
    client = embeddings(server, sent)
    assert_matches([client.embed_query(cases[0]["input"])], cases[:1])
    assert_matches(client.embed_documents([c["input"] for c in cases]), cases)
    # What LangChain put on the wire: arrays of cl100k_base ids, not text.
    assert all(isinstance(item, list) and all(isinstance(i, int) for i in item) for item in sent[-1]["input"])
    # The long case is under 8191 tiktoken tokens: LangChain sends it in one piece, and the
    # server truncates it at the model's 256 tokens as sentence-transformers does.
    assert max(len(item) for item in sent[-1]["input"]) < 8191


def test_empty_text_is_embedded(server, sent):
    client = embeddings(server, sent)
    vectors = client.embed_documents(["", "Hello"])
    assert len(vectors) == 2 and len(vectors[0]) == 384
    plain = embeddings(server, sent, check_embedding_ctx_length=False).embed_documents([""])
    assert cosine(vectors[0], plain[0]) >= 0.99999


def test_without_context_length_check_text_is_sent(server, sent):
    cases = reference()["cases"]
    client = embeddings(server, sent, check_embedding_ctx_length=False)
    assert_matches(client.embed_documents([c["input"] for c in cases]), cases)
    assert all(isinstance(item, str) for item in sent[-1]["input"])


def test_async_embed_documents(server, sent):
    cases = reference()["cases"]
    client = embeddings(server, sent)
    assert_matches(asyncio.run(client.aembed_documents([c["input"] for c in cases])), cases)


def test_1500_documents_go_in_two_requests(server, sent):
    cases = reference()["cases"]
    documents = [cases[i % len(cases)] for i in range(1500)]
    client = embeddings(server, sent)
    vectors = client.embed_documents([c["input"] for c in documents])
    assert sorted(len(body["input"]) for body in sent) == [500, 1000]
    assert_matches(vectors, documents)
