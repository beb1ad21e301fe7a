"""TEI's clients against embedserve's TEI routes: huggingface_hub's InferenceClient
(feature_extraction posts to the base URL) and LangChain's HuggingFaceEndpointEmbeddings.
Vectors must equal sentence-transformers' (reference.json)."""

import asyncio
import json

import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient
from langchain_huggingface import HuggingFaceEndpointEmbeddings

from conftest import MINILM, MODELS, ROOT, Server, cosine, reference

MIN_COSINE = 0.99999


@pytest.fixture(scope="module")
def server():
    server = Server("--models-dir", MODELS, "--default-model", MINILM)
    yield server
    server.stop()


def test_inference_client_feature_extraction(server):
    client = InferenceClient(base_url=server.base)
    cases = reference()["cases"]
    vectors = client.feature_extraction([case["input"] for case in cases])
    assert vectors.shape == (len(cases), 384)
    for vector, case in zip(vectors, cases):
        assert cosine(vector.tolist(), case["embedding"]) >= MIN_COSINE
    one = client.feature_extraction(cases[0]["input"], normalize=True, truncate=True)
    assert cosine(one[0].tolist(), cases[0]["embedding"]) >= MIN_COSINE


def test_inference_client_sentence_similarity(server):
    client = InferenceClient(base_url=server.base)
    cases = reference()["cases"]
    source, others = cases[0], cases[1:6]
    scores = client.sentence_similarity(source["input"], other_sentences=[c["input"] for c in others])
    assert len(scores) == len(others)
    for score, other in zip(scores, others):
        assert abs(score - cosine(source["embedding"], other["embedding"])) <= 1e-5


def test_inference_client_endpoint_info_and_health(server):
    # These two are offered for the "hf-inference" provider only, which a base URL leaves unset.
    client = InferenceClient(base_url=server.base, provider="hf-inference")
    info = client.get_endpoint_info()
    assert info["model_id"] == MINILM
    assert info["max_input_length"] == reference()["max_seq_length"]
    assert client.health_check()


def test_inference_client_errors_are_raised_with_the_message(server):
    client = InferenceClient(base_url=server.base)
    with pytest.raises(Exception) as raised:
        client.feature_extraction("word " * 1000, truncate=False)
    assert "truncation is off" in str(raised.value)


def test_inference_client_truncation_from_the_left(server):
    """Words of one token each: cut from the left, the long text is its last 254 words."""
    client = InferenceClient(base_url=server.base)
    tail = " ".join(["one", "you", "all", "there", "would", "their"] * 50)
    tail = " ".join(tail.split()[:254])
    long = "the of and to in is " * 2000 + tail
    expected = client.feature_extraction(tail, truncate=False)
    got = client.feature_extraction(long, truncation_direction="Left")
    assert cosine(got[0].tolist(), expected[0].tolist()) >= MIN_COSINE
    cut_at_the_end = client.feature_extraction(long, truncation_direction="Right")
    assert cosine(cut_at_the_end[0].tolist(), expected[0].tolist()) < 0.99


def test_langchain_huggingface_endpoint_embeddings(server):
    embeddings = HuggingFaceEndpointEmbeddings(model=MINILM)
    # langchain-huggingface >= 1.2.2 refuses a URL as `model`; a self-hosted TEI endpoint is
    # reached through clients made for its URL.
    embeddings.client = InferenceClient(base_url=server.base)
    embeddings.async_client = AsyncInferenceClient(base_url=server.base)
    cases = [case for case in reference()["cases"] if "\n" not in case["input"]]
    documents = embeddings.embed_documents([case["input"] for case in cases])
    for vector, case in zip(documents, cases):
        assert cosine(vector, case["embedding"]) >= MIN_COSINE
    query = embeddings.embed_query(cases[0]["input"])
    assert cosine(query, cases[0]["embedding"]) >= MIN_COSINE
    documents = asyncio.run(embeddings.aembed_documents([case["input"] for case in cases[:3]]))
    for vector, case in zip(documents, cases):
        assert cosine(vector, case["embedding"]) >= MIN_COSINE


CLASSIFIER = ROOT.parent / "shared" / "kinds" / "text-classifier-4labels"


@pytest.fixture(scope="module")
def classifier_server():
    server = Server("--model", CLASSIFIER)
    yield server
    server.stop()


def test_inference_client_text_classification(classifier_server):
    """InferenceClient posts to the base URL, which answers as TEI's /predict for a classifier.
    With TEI's answer for one text (a flat list, best first) the client returns its first
    element: the top label."""
    client = InferenceClient(base_url=classifier_server.base)
    cases = json.loads((CLASSIFIER / "reference.json").read_text())["cases"]
    for case in cases[:6]:
        top = client.text_classification(case["input"])
        assert top.label == case["label"]
        assert abs(top.score - max(case["softmax"])) < 1e-5
