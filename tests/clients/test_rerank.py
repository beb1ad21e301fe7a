"""Rerank clients from PyPI against embedserve: Cohere's SDK (ClientV2 with base_url),
LangChain's CohereRerank compressor, and a plain `requests` call in Jina's shape. Every score
must equal sentence-transformers' CrossEncoder.predict (reference.json) within 1e-5."""

import json

import cohere
import pytest
import requests
from langchain_cohere import CohereRerank
from langchain_core.documents import Document

from conftest import MODELS, Server

RERANKERS = sorted(
    f"{group.name}/{folder.name}"
    for group in MODELS.iterdir()
    if group.name.startswith("rerank")
    for folder in group.iterdir()
    if (folder / "reference.json").is_file()
)
MAX_SCORE_ERROR = 1e-5


@pytest.fixture(scope="module")
def server():
    server = Server("--models-dir", MODELS)
    yield server
    server.stop()


def queries(model):
    """reference.json's cases grouped by query: {query: [(document, score), ...]}."""
    grouped = {}
    for case in json.loads((MODELS / model / "reference.json").read_text())["cases"]:
        grouped.setdefault(case["query"], []).append((case["document"], case["score"]))
    return grouped


def test_there_are_rerankers_to_test():
    assert len(RERANKERS) >= 4, RERANKERS


@pytest.mark.parametrize("model", RERANKERS)
def test_cohere_client_v2(server, model):
    client = cohere.ClientV2(api_key="unused", base_url=server.base)
    for query, cases in queries(model).items():
        documents = [document for document, _ in cases]
        response = client.rerank(model=model, query=query, documents=documents)
        assert len(response.results) == len(cases)
        scores = [r.relevance_score for r in response.results]
        assert scores == sorted(scores, reverse=True)
        for result in response.results:
            assert abs(result.relevance_score - cases[result.index][1]) <= MAX_SCORE_ERROR
        top = client.rerank(model=model, query=query, documents=documents, top_n=1)
        assert [r.index for r in top.results] == [response.results[0].index]


@pytest.mark.parametrize("model", RERANKERS)
def test_langchain_cohere_rerank_compressor(server, model):
    reranker = CohereRerank(
        model=model, base_url=server.base, cohere_api_key="unused", top_n=3
    )
    for query, cases in queries(model).items():
        documents = [
            Document(page_content=document, metadata={"position": i})
            for i, (document, _) in enumerate(cases)
        ]
        kept = reranker.compress_documents(documents, query)
        assert len(kept) == min(3, len(cases))
        best = sorted(range(len(cases)), key=lambda i: -cases[i][1])[: len(kept)]
        assert [d.metadata["position"] for d in kept] == best
        for document in kept:
            want = cases[document.metadata["position"]][1]
            assert abs(document.metadata["relevance_score"] - want) <= MAX_SCORE_ERROR


@pytest.mark.parametrize("model", RERANKERS)
def test_jina_shaped_requests(server, model):
    for query, cases in queries(model).items():
        response = requests.post(
            f"{server.base}/v1/rerank",
            json={
                "model": model,
                "query": query,
                "documents": [{"text": document} for document, _ in cases],
                "top_n": len(cases),
                "return_documents": True,
            },
            timeout=60,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == model
        assert body["usage"]["total_tokens"] > 0
        for result in body["results"]:
            document, score = cases[result["index"]]
            assert result["document"] == {"text": document}
            assert abs(result["relevance_score"] - score) <= MAX_SCORE_ERROR
