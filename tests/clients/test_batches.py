"""OpenAI's Files and Batch API through the official openai client, unmodified: upload a
JSONL file, create a batch, poll it, download its results (the reference vectors, every
custom_id once) and its errors (bad lines never fail the batch), cancel one midway."""

import json
import tempfile
import time

import openai
import pytest

from conftest import MINILM, MODELS, Server, cosine, reference

FINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture(scope="module")
def server():
    with tempfile.TemporaryDirectory() as data:
        server = Server("--models-dir", MODELS, "--model", MINILM, "--data-dir", data)
        yield server
        server.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)


def request_line(custom_id, body):
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body})


def wait_until(client, batch_id, done, within=300):
    deadline = time.monotonic() + within
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch) or time.monotonic() > deadline:
            return batch
        time.sleep(0.1)


def test_a_batch_runs_its_lines_as_embeddings_would_answer_them(client):
    cases = reference()["cases"]
    lines = [request_line(f"case-{i}", {"model": MINILM, "input": case["input"]}) for i, case in enumerate(cases)]
    lines.append(request_line("no-model", {"model": "no/such-model", "input": "x"}))
    lines.append("this line is not JSON")
    upload = client.files.create(file=("requests.jsonl", "\n".join(lines).encode()), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes > 0
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h", metadata={"job": "test"}
    )
    assert batch.status == "validating" and batch.metadata == {"job": "test"}
    batch = wait_until(client, batch.id, lambda b: b.status in FINAL)
    assert batch.status == "completed", batch
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (len(cases) + 2, len(cases), 2)

    results = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(r["custom_id"] for r in results) == sorted(f"case-{i}" for i in range(len(cases)))
    for result in results:
        case = cases[int(result["custom_id"].split("-")[1])]
        response = result["response"]
        assert response["status_code"] == 200
        assert cosine(response["body"]["data"][0]["embedding"], case["embedding"]) >= 0.99999
    errors = [json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()]
    assert len(errors) == 2
    assert errors[0]["custom_id"] == "no-model" and errors[0]["response"]["status_code"] == 404
    assert errors[0]["response"]["body"]["error"]["message"]
    assert errors[1]["custom_id"] is None and errors[1]["error"]["code"] == "invalid_request"

    assert batch.id in [b.id for b in client.batches.list(limit=100).data]
    assert upload.id in [f.id for f in client.files.list().data]
    assert client.files.delete(upload.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(upload.id)


def test_a_batch_cancelled_midway_keeps_what_ran(client):
    lines = [request_line(f"line-{i}", {"model": MINILM, "input": f"sentence number {i}"}) for i in range(5000)]
    upload = client.files.create(file=("many.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    wait_until(client, batch.id, lambda b: b.request_counts.completed > 0)
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status in {"cancelling", "cancelled"}
    batch = wait_until(client, batch.id, lambda b: b.status in FINAL)
    assert batch.status == "cancelled", batch
    done = batch.request_counts.completed
    assert 0 < done < 5000
    results = client.files.content(batch.output_file_id).text.splitlines()
    assert len(results) == done
    assert [json.loads(r)["custom_id"] for r in results] == [f"line-{i}" for i in range(done)]


def test_errors_come_in_openais_envelope(client):
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h")
    upload = client.files.create(file=("one.jsonl", request_line("a", {"model": MINILM, "input": "a"}).encode()), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
