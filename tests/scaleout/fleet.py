"""A fleet on 127.0.0.1: embedserve replicas with deploy/'s configuration, HAProxy with
deploy/'s router configuration, and a DNS server in place of the cluster's."""

import csv
import io
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "clients"))
from conftest import MINILM, MODELS, ROOT, Server, cosine, reference  # noqa: E402,F401
from srv_dns import SrvDns  # noqa: E402

DEPLOY = ROOT / "deploy" / "kubernetes" / "base"
SRV_NAME = "_http._tcp.embedserve-replicas.scaleout.test"
REPLICA_SLOTS = 10
MAX_LOADED_MODELS = 2
METRIC_LINE = re.compile(r'^(embedserve_\w+)\{([^}]*)\} (\S+)$', re.M)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, what, timeout=120):
    """Polls `condition` until it holds; the fleet has no event to wait on but its state."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def metrics(base):
    """{(name, frozenset(labels)): value} of a replica's /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for name, labels, value in METRIC_LINE.findall(text):
        pairs = frozenset(re.findall(r'(\w+)="([^"]*)"', labels))
        samples[(name, pairs)] = float(value)
    return samples


def per_model(samples, name, **labels):
    """{model: value} of metric `name`, over the samples whose other labels match."""
    wanted = set(labels.items())
    out = {}
    for (metric, pairs), value in samples.items():
        if metric == name and wanted <= pairs:
            model = dict(pairs)["model"]
            out[model] = out.get(model, 0) + value
    return out


class Router:
    """HAProxy running deploy/kubernetes/base/haproxy.cfg as shipped."""

    def __init__(self, nameserver, **settings):
        self.port, self.stats_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(
            os.environ,
            EMBEDSERVE_REPLICAS=SRV_NAME,
            EMBEDSERVE_MAX_REPLICAS=str(REPLICA_SLOTS),
            EMBEDSERVE_NAMESERVER=nameserver,
            ROUTER_MODELS_PER_REPLICA=str(MAX_LOADED_MODELS),
            ROUTER_PORT=str(self.port),
            ROUTER_STATS_PORT=str(self.stats_port),
            **settings,
        )
        self.log = tempfile.NamedTemporaryFile(mode="w+", prefix="haproxy-", suffix=".log")
        self.process = subprocess.Popen(
            ["haproxy", "-db", "-f", str(DEPLOY / "haproxy.cfg")],
            env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def stats(self):
        """The rows of HAProxy's stats CSV."""
        url = f"http://127.0.0.1:{self.stats_port}/stats;csv"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return list(csv.DictReader(io.StringIO(response.read().decode().lstrip("# "))))
        except OSError:
            return []

    def retries(self):
        """(retries on the same replica, redispatches to another) the backend has made."""
        row = next(r for r in self.stats() if r["pxname"] == "replicas" and r["svname"] == "BACKEND")
        return int(row["wretr"] or 0), int(row["wredis"] or 0)

    def servers(self):
        """{replica port: HAProxy's status} of the backend's filled slots."""
        out = {}
        for row in self.stats():
            if row["pxname"] == "replicas" and row["svname"].startswith("replica"):
                address = row.get("addr") or ""
                if address and not row["status"].startswith("MAINT"):
                    out[int(address.rsplit(":", 1)[1])] = row["status"]
        return out

    def wait_for(self, up, down=(), timeout=120):
        """Until the replicas on ports `up` are UP and none of `down` is."""
        def settled():
            if self.process.poll() is not None:
                raise RuntimeError("haproxy exited:\n" + self.output())
            servers = self.servers()
            return all(servers.get(p) == "UP" for p in up) and not any(
                servers.get(p, "").startswith("UP") for p in down)
        wait_until(settled, f"the router sees {sorted(up)} up and {sorted(down)} not", timeout)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)

    def output(self):
        self.log.seek(0)
        return self.log.read()


class Fleet:
    """Replicas registered in the DNS the router resolves, as a StatefulSet's ready pods are
    in its headless Service: each with its name and a data directory of its own, kept across
    its restarts as a pod's volume is."""

    def __init__(self, replicas, **router_settings):
        self.dns = SrvDns(SRV_NAME)
        self.router = Router(self.dns.address, **router_settings)
        self.data = tempfile.TemporaryDirectory(prefix="fleet-data-")
        self.replicas = {}
        self.next_id = 0
        for _ in range(replicas):
            self.start_replica(wait=False)
        self.router.wait_for(self.ports())

    def start_replica(self, wait=True, name=None):
        """Starts a new replica, or `name` again over its data directory."""
        if name is None:
            self.next_id += 1
            name = f"replica-{self.next_id}"
        replica = Server(
            "--config", DEPLOY / "embedserve.toml",
            "--models-dir", MODELS,
            "--max-loaded-models", MAX_LOADED_MODELS,
            "--replica-name", name,
            "--data-dir", pathlib.Path(self.data.name) / name,
            drain_delay=None,
        )
        replica.port = int(replica.base.rsplit(":", 1)[1])
        self.replicas[name] = replica
        self.dns.register(name, replica.port)
        if wait:
            self.router.wait_for([replica.port])
        return name

    def ports(self):
        return [r.port for r in self.replicas.values()]

    def remove(self, name):
        """Out of DNS, as a pod leaves its Service's endpoints."""
        self.dns.unregister(name)
        return self.replicas.pop(name)

    def loaded_models(self):
        """{replica name: {model: successful loads}}."""
        return {
            name: per_model(metrics(r.base), "embedserve_model_loads_total", result="ok")
            for name, r in self.replicas.items()
        }

    def evictions(self):
        return {
            name: per_model(metrics(r.base), "embedserve_model_evictions_total")
            for name, r in self.replicas.items()
        }

    def stop(self):
        self.router.stop()
        for replica in self.replicas.values():
            if replica.process.poll() is None:
                replica.stop()
        self.data.cleanup()
