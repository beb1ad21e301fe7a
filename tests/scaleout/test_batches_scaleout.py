"""The Files and Batch API behind the router, through the official openai client: a file and
its batches live on the replica that took the upload (their ids say which), every call about
them reaches that replica, lists merge all replicas' newest first, and a replica killed and
started again over its data directory (a StatefulSet pod rescheduled) serves its batches
again while the router answers 503 in between. The tests run in order on one fleet."""

import json
import signal
import time

import openai
import pytest
import requests

from fleet import MINILM, Fleet, cosine, reference, wait_until

REPLICAS = 3
FINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture(scope="module")
def fleet(request):
    fleet = Fleet(replicas=REPLICAS)
    yield fleet
    fleet.stop()
    if request.session.testsfailed:
        print("the router's log:\n" + "\n".join(fleet.router.output().splitlines()[-60:]))


@pytest.fixture(scope="module")
def client(fleet):
    return openai.OpenAI(base_url=fleet.router.base + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def jobs(client):
    """One batch per replica: the uploads go round the replicas in turn."""
    cases = reference()["cases"][:4]
    lines = "\n".join(
        json.dumps({"custom_id": f"case-{i}", "method": "POST", "url": "/v1/embeddings",
                    "body": {"model": MINILM, "input": case["input"]}})
        for i, case in enumerate(cases))
    made = []
    for _ in range(REPLICAS):
        upload = client.files.create(file=("requests.jsonl", lines.encode()), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings",
                                      completion_window="24h")
        made.append((upload, batch))
    return cases, made


def replica_of(object_id):
    return object_id.split("-", 2)[-1] if object_id.startswith("file-") else \
        object_id.split("-", 1)[1]


def wait_done(client, batch_id, within=120):
    deadline = time.monotonic() + within
    while (batch := client.batches.retrieve(batch_id)).status not in FINAL:
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)
    return batch


def test_each_batch_lives_on_the_replica_that_took_its_file(fleet, jobs):
    _, made = jobs
    owners = {replica_of(upload.id) for upload, _ in made}
    assert owners == set(fleet.replicas), owners
    for upload, batch in made:
        assert replica_of(batch.id) == replica_of(upload.id), (upload.id, batch.id)


def test_every_call_about_a_batch_reaches_its_replica(client, jobs):
    cases, made = jobs
    for _, batch in made:
        # Polling goes through the router many times: any call sent elsewhere would fail.
        done = wait_done(client, batch.id)
        assert done.status == "completed", done
        assert replica_of(done.output_file_id) == replica_of(batch.id)
        results = [json.loads(line)
                   for line in client.files.content(done.output_file_id).text.splitlines()]
        assert sorted(r["custom_id"] for r in results) == [f"case-{i}" for i in range(len(cases))]
        for result in results:
            case = cases[int(result["custom_id"].split("-")[1])]
            vector = result["response"]["body"]["data"][0]["embedding"]
            assert cosine(vector, case["embedding"]) >= 0.99999


def test_lists_merge_every_replica_newest_first(client, jobs):
    _, made = jobs
    batch_ids = [b.id for b in client.batches.list(limit=100).data]
    assert batch_ids == sorted((b.id for _, b in made), reverse=True)
    # One at a time, the cursor (another replica's id each step) walks the same list.
    walked, after = [], None
    while True:
        page = client.batches.list(limit=1, **({"after": after} if after else {}))
        walked += [b.id for b in page.data]
        if not page.has_more:
            break
        after = page.data[-1].id
    assert walked == batch_ids
    file_ids = [f.id for f in client.files.list().data]
    uploads = {upload.id for upload, _ in made}
    assert uploads <= set(file_ids) and file_ids == sorted(file_ids, reverse=True)
    # A replica's refusal is the list's answer, in its shape.
    with pytest.raises(openai.BadRequestError, match="limit must be between 1 and 100"):
        client.batches.list(limit=1000)


def test_a_replica_down_is_503_and_back_over_its_disk_serves_its_batches(fleet, client, jobs):
    _, made = jobs
    upload, batch = made[0]
    name = replica_of(batch.id)
    before = client.files.content(client.batches.retrieve(batch.id).output_file_id).text
    replica = fleet.replicas[name]
    replica.process.send_signal(signal.SIGKILL)
    replica.process.wait()
    fleet.router.wait_for([], down=[replica.port])
    response = requests.get(f"{fleet.router.base}/v1/batches/{batch.id}", timeout=10)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "replica_unavailable", response.text
    with pytest.raises(openai.InternalServerError):
        client.files.retrieve(upload.id)
    # The others' batches are still served.
    for _, other in made[1:]:
        assert client.batches.retrieve(other.id).status == "completed"

    fleet.replicas.pop(name)
    fleet.start_replica(name=name)
    restarted = fleet.replicas[name]
    assert restarted.port != replica.port
    url = f"{fleet.router.base}/v1/batches/{batch.id}"
    wait_until(lambda: requests.get(url, timeout=10).status_code == 200,
               "the router sends the batch's calls to its replica again")
    again = wait_done(client, batch.id)
    assert client.files.content(again.output_file_id).text == before
    assert client.files.retrieve(upload.id).id == upload.id
    assert {b.id for b in client.batches.list(limit=100).data} == {b.id for _, b in made}
