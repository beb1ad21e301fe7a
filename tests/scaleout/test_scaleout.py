"""Three replicas (max_loaded_models = 2 each) behind the router that deploy/ ships: vectors,
model placement, a replica killed under load and a rolling restart under load. The tests run
in order on one fleet, as one story."""

import collections
import re
import signal
import threading
import urllib.request

import pytest
import requests
from langchain_openai import OpenAIEmbeddings

from fleet import DEPLOY, MAX_LOADED_MODELS, MINILM, ROOT, Fleet, cosine, reference

# One model per family, six in all: the fleet's capacity (3 x 2) exactly.
SERVED = [
    MINILM,
    "zoo/bert-mean",
    "zoo/bert-labse",
    "zoo/distilbert-dense",
    "zoo/xlm-roberta-e5",
    "zoo/qwen3-embedding-lasttoken",
]
MIN_COSINE = 0.99999


def plain_cases(model):
    """The reference's cases without prompts or options: text in, vector out."""
    return [c for c in reference(model)["cases"] if set(c) == {"input", "embedding"}]


CASES = {model: plain_cases(model) for model in SERVED}


@pytest.fixture(scope="module")
def fleet(request):
    fleet = Fleet(replicas=3)
    yield fleet
    fleet.stop()
    if request.session.testsfailed:
        print("the router's log:\n" + "\n".join(fleet.router.output().splitlines()[-60:]))


def embed(session, base, model, inputs):
    response = session.post(f"{base}/v1/embeddings", json={"model": model, "input": inputs},
                            timeout=60)
    response.raise_for_status()
    vectors = [item["embedding"] for item in response.json()["data"]]
    assert len(vectors) == len(inputs), (model, len(vectors), len(inputs))
    return vectors


def test_every_model_through_the_router_matches_sentence_transformers(fleet):
    session = requests.Session()
    for model in SERVED:
        cases = CASES[model]
        assert cases, f"{model}: no plain cases in reference.json"
        vectors = embed(session, fleet.router.base, model, [c["input"] for c in cases])
        for case, vector in zip(cases, vectors):
            assert cosine(vector, case["embedding"]) >= MIN_COSINE, (model, case["input"])


def test_each_model_lives_on_exactly_one_replica_and_nothing_was_evicted(fleet):
    placement = fleet.loaded_models()
    print("models per replica:", {name: sorted(models) for name, models in placement.items()})
    for model in SERVED:
        holders = {name: loads for name, models in placement.items()
                   for m, loads in models.items() if m == model}
        assert list(holders.values()) == [1], f"{model} loaded by {holders}"
    for name, models in placement.items():
        assert len(models) <= MAX_LOADED_MODELS, (name, models)
    assert all(not e for e in fleet.evictions().values()), fleet.evictions()


def test_langchain_defaults_through_the_router_are_exact(fleet):
    # OpenAIEmbeddings' defaults: cl100k token arrays in chunks, with its own retries off
    # so that only the router's retries count.
    embeddings = OpenAIEmbeddings(model=MINILM, base_url=fleet.router.base + "/v1",
                                  api_key="unused", max_retries=0)
    cases = CASES[MINILM]
    vectors = embeddings.embed_documents([c["input"] for c in cases])
    assert len(vectors) == len(cases)
    for case, vector in zip(cases, vectors):
        assert cosine(vector, case["embedding"]) >= MIN_COSINE, case["input"]


class Load:
    """Client threads sending the models' reference inputs through the router without
    pause, checking each vector; they count what succeeded and what failed, per model."""

    def __init__(self, base, threads=6, models=SERVED):
        self.base = base
        self.models = models
        self.ok = collections.Counter()
        self.failures = []
        self.condition = threading.Condition()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self, index):
        session = requests.Session()
        step = index
        while not self.stopping.is_set():
            model = self.models[step % len(self.models)]
            cases = CASES[model][step % 3 :: 3]
            step += 1
            try:
                vectors = embed(session, self.base, model, [c["input"] for c in cases])
                bad = [c["input"] for c, v in zip(cases, vectors)
                       if cosine(v, c["embedding"]) < MIN_COSINE]
                error = f"{model}: wrong vectors for {bad}" if bad else None
            except (requests.RequestException, ValueError, KeyError, AssertionError) as e:
                error = f"{model}: {e!r}"
            with self.condition:
                if error:
                    self.failures.append(error)
                else:
                    self.ok[model] += 1
                self.condition.notify_all()

    def wait_for(self, what, condition, timeout=180):
        """Until `condition(ok counts)` holds, under load."""
        with self.condition:
            if not self.condition.wait_for(lambda: condition(self.ok) or self.failures, timeout):
                raise AssertionError(f"timed out waiting for {what}; served {dict(self.ok)}")

    def served(self):
        with self.condition:
            return collections.Counter(self.ok)

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=120)
        return sum(self.ok.values()), list(self.failures)


def each_model_served_more(load, since, requests_each=5):
    return lambda ok: all(ok[m] >= since[m] + requests_each for m in SERVED)


def test_a_replica_killed_under_load_loses_no_request(fleet):
    load = Load(fleet.router.base)
    try:
        load.wait_for("warm-up", each_model_served_more(load, collections.Counter()))
        placement = fleet.loaded_models()
        victim = max(placement, key=lambda name: len(placement[name]))
        orphans = set(placement[victim])
        moved_before = sum(fleet.router.retries())
        process = fleet.replicas[victim].process
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_at = load.served()
        fleet.router.wait_for([], down=[fleet.replicas[victim].port])
        # Kubernetes would drop the dead pod from the Service and start another.
        fleet.remove(victim)
        load.wait_for("every model served again after the kill",
                      each_model_served_more(load, killed_at, requests_each=20))
    finally:
        total, failures = load.stop()
    after_kill = total - sum(killed_at.values())
    retries, redispatches = fleet.router.retries()
    print(f"kill: {total} requests ({after_kill} after the kill), {len(failures)} failed; "
          f"the router retried {retries} and redispatched {redispatches}; "
          f"{victim}'s models {sorted(orphans)} now on", fleet.loaded_models())
    assert failures == []
    # Each request the router took off the dead replica is a retry or a redispatch.
    assert retries + redispatches > moved_before, "no request met the killed replica"
    survivors = fleet.loaded_models()
    for model in orphans:
        assert any(model in models for models in survivors.values()), (model, survivors)


def test_a_rolling_restart_under_load_loses_no_request(fleet):
    # The Deployment's replacement for the killed pod, then a rolling update of every pod:
    # a new pod first (maxSurge 1), then the old one leaves the Service and gets SIGTERM.
    fleet.start_replica()
    load = Load(fleet.router.base)
    restarted = []
    try:
        load.wait_for("warm-up", each_model_served_more(load, collections.Counter()))
        for old in list(fleet.replicas):
            fleet.start_replica()
            replica = fleet.remove(old)
            replica.process.send_signal(signal.SIGTERM)
            before = load.served()
            assert replica.process.wait(timeout=120) == 0
            restarted.append(old)
            load.wait_for(f"every model served after {old} stopped",
                          each_model_served_more(load, before))
    finally:
        total, failures = load.stop()
    retries, redispatches = fleet.router.retries()
    print(f"rolling restart of {restarted}: {total} requests, {len(failures)} failed; "
          f"the router's retries so far {retries}, redispatches {redispatches}; "
          "models per replica:", fleet.loaded_models())
    assert failures == []
    assert len(restarted) == 3


def test_a_hot_model_spills_onto_a_second_replica():
    # A spill threshold of 2 requests in flight, so that 8 clients of one model exceed it.
    fleet = Fleet(replicas=2, ROUTER_SPILL_MIN="2", ROUTER_SPILL_FACTOR="1")
    try:
        load = Load(fleet.router.base, threads=8, models=[MINILM])
        try:
            load.wait_for("requests", lambda ok: ok[MINILM] >= 200)
        finally:
            total, failures = load.stop()
        holders = [name for name, models in fleet.loaded_models().items() if MINILM in models]
        print(f"hot model: {total} requests, {len(failures)} failed, served by {holders}")
        assert failures == []
        assert len(holders) == 2
    finally:
        fleet.stop()


def test_the_dashboard_and_autoscaler_read_metrics_that_exist(fleet):
    # embedserve's metrics are labelled by model and appear once a model is used, so their
    # names come from where they are registered; HAProxy's from the router's exporter.
    registered = {"embedserve_" + name for name in re.findall(
        r'register_\w+!\(\s*"(\w+)"', (ROOT / "src" / "metrics.rs").read_text())}
    with urllib.request.urlopen(f"http://127.0.0.1:{fleet.router.stats_port}/metrics") as r:
        exported = set(re.findall(r"^# TYPE (\w+) ", r.read().decode(), re.M))
    dashboard = (DEPLOY.parents[1] / "grafana" / "embedserve-dashboard.json").read_text()
    queried = {re.sub(r"_(bucket|sum|count)$", "", name)
               for name in re.findall(r"\b((?:embedserve|haproxy)_\w+)", dashboard)}
    assert len(registered) > 10 and queried, (registered, queried)
    assert queried <= registered | exported, queried - registered - exported
    autoscaler = (DEPLOY / "autoscaler.yaml").read_text()
    assert "name: embedserve_queue_depth" in autoscaler
    assert "embedserve_queue_depth" in registered
