"""The traffic and the report of scripts/soak (standard library only)."""

import argparse
import collections
import json
import os
import random
import selectors
import socket
import threading
import time
import urllib.error
import urllib.request

MODELS = [
    ("sentence-transformers/all-MiniLM-L6-v2", 384),
    ("tiny/bert-mean", 32),
    ("zoo/xlm-roberta-e5", 32),
    ("zoo/qwen3-embedding-lasttoken", 32),
    ("zoo/gemma3-embeddinggemma", 32),
    ("zoo-st5/static-embedding", 32),
]
WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
         "antidisestablishmentarianism 漢字 café naïve").split()
VALID_CLIENTS = 4
HOSTILE_CLIENTS = 3
# Sockets a flood keeps open from 127.0.0.2, reopening each as soon as the server closes it
# (the soak's server holds at most 256 connections).
FLOOD_SOCKETS = 400
RERANKER = "rerank/bert-cross-encoder"


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.failures = []

    def add(self, key, failure=None):
        with self.lock:
            self.counts[key] += 1
            if failure and len(self.failures) < 50:
                self.failures.append(failure)


def post(base, body, timeout=300, headers=None, path="/v1/embeddings"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data,
        {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def text(rng, words):
    return " ".join(rng.choice(WORDS) for _ in range(words))


def valid_client(base, deadline, tally, seed):
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        model, dimension = rng.choice(MODELS)
        inputs = [text(rng, rng.randint(1, 600)) for _ in range(rng.randint(1, 16))]
        try:
            status, body = post(base, {"model": model, "input": inputs})
        except OSError as error:
            tally.add("valid: no response", f"{model}: {error}")
            continue
        ok = status == 200
        if ok:
            data = json.loads(body)["data"]
            ok = len(data) == len(inputs) and all(len(d["embedding"]) == dimension for d in data)
        tally.add(f"valid {status}", None if ok else f"{model} {status}: {body[:300]!r}")
        if not ok:
            tally.add("valid: failed")
        if status >= 500:
            tally.add("5xx")


def raw(base, payload, hold=False):
    """Sends raw bytes; returns the status line ('' if the server closed first)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        conn.sendall(payload)
        received = b""
        while b"\r\n" not in received:
            chunk = conn.recv(4096)
            if not chunk:
                break
            received += chunk
        if hold:
            while conn.recv(4096):
                pass
        return received.split(b"\r\n")[0].decode(errors="replace")


def hostile_client(base, deadline, tally, seed):
    rng = random.Random(seed)
    model = MODELS[0][0]
    attacks = {
        "1 MiB string": lambda: post(base, {"model": model, "input": "!" * (1 << 20)})[0],
        "1 MiB word (one [UNK]), truncate off": lambda: post(
            base, {"model": model, "input": "a" * (1 << 20), "truncate": False})[0],
        "2049 inputs": lambda: post(base, {"model": model, "input": [""] * 2049})[0],
        "broken JSON": lambda: post(base, b'{"model": "x", "input": [')[0],
        "1 MB model name": lambda: post(base, {"model": "m" * 1_000_000, "input": "x"})[0],
        "wrong types": lambda: post(base, {"model": model, "input": "x", "dimensions": "9"})[0],
        "token id out of range": lambda: post(base, {"model": model, "input": [[2**31]]})[0],
        "unknown route": lambda: raw(base, b"GET /v2/nothing HTTP/1.1\r\nHost: x\r\n\r\n"),
        "undecodable path": lambda: raw(base, b"GET /v1/models/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n"),
        "body announced too large": lambda: raw(
            base, b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 999999999\r\nExpect: 100-continue\r\n\r\n"),
        "half a head, then silence": lambda: raw(
            base, b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n", hold=True) or "closed",
        "silent connection": lambda: raw(base, b"", hold=True) or "closed",
        "rerank: 16 KiB query, 2048 documents": lambda: post(
            base, {"model": RERANKER, "query": "a long query " * 1300, "documents": ["a"] * 2048},
            path="/v1/rerank")[0],
        "/tokenize: 8 MiB for a static model": lambda: post(
            base, {"model": MODELS[-1][0], "inputs": "word " * (8 << 18)}, path="/tokenize")[0],
        "16 MB announced, 8 MiB sent, then silence": lambda: raw(
            base, b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 16000000\r\n\r\n" + b" " * (8 << 20), hold=True)
            or "closed",
        "a body's first byte, then silence": lambda: raw(
            base, b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 100\r\n\r\n{", hold=True) or "closed",
        "abandoned after 20 ms": lambda: abandoned(base, rng),
    }
    while time.monotonic() < deadline:
        name = rng.choice(list(attacks))
        try:
            outcome = attacks[name]()
        except OSError as error:
            outcome = f"connection error ({type(error).__name__})"
        status = outcome if isinstance(outcome, int) else outcome.split(" ")[1] \
            if outcome.startswith("HTTP/") else outcome
        server_error = str(status).startswith("5")
        tally.add(f"hostile {name}: {status}", f"{name}: {outcome}" if server_error else None)
        if server_error:
            tally.add("5xx")


def flood(base, deadline, tally):
    """Keeps FLOOD_SOCKETS connections from 127.0.0.2 open with half a head, each reopened
    as soon as the server closes it, until the deadline."""
    host, port = base.removeprefix("http://").split(":")
    selector = selectors.DefaultSelector()

    def open_one():
        conn = socket.socket()
        conn.setblocking(False)
        conn.bind(("127.0.0.2", 0))
        conn.connect_ex((host, int(port)))
        selector.register(conn, selectors.EVENT_WRITE)

    for _ in range(FLOOD_SOCKETS):
        open_one()
    while time.monotonic() < deadline:
        for key, events in selector.select(timeout=0.5):
            conn = key.fileobj
            if events & selectors.EVENT_WRITE:
                try:
                    conn.send(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
                    selector.modify(conn, selectors.EVENT_READ)
                    continue
                except OSError:
                    pass
            else:
                try:
                    if conn.recv(4096):
                        continue
                except OSError:
                    pass
            selector.unregister(conn)
            conn.close()
            tally.add("flood: reopened")
            open_one()
    for key in list(selector.get_map().values()):
        key.fileobj.close()


def health_latency(base):
    started = time.monotonic()
    try:
        with urllib.request.urlopen(base + "/health", timeout=60) as response:
            response.read()
    except OSError:
        return None
    return time.monotonic() - started


def abandoned(base, rng):
    model = rng.choice(MODELS)[0]
    try:
        post(base, {"model": model, "input": [text(rng, 400)] * 32}, timeout=0.02)
    except OSError:
        return "abandoned"
    return "answered"


def sample(pid):
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    return {
        "rss_mib": int(status["VmRSS"].split()[0]) / 1024,
        "peak_mib": int(status["VmHWM"].split()[0]) / 1024,
        "threads": int(status["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--report", required=True)
    args = parser.parse_args()

    # Warm-up: every model loaded once (and most evicted again), so "start" is steady state.
    for model, _ in MODELS:
        post(args.base, {"model": model, "input": "warm up"})
    start = sample(args.pid)
    started = time.monotonic()
    deadline = started + args.minutes * 60
    tally = Tally()
    clients = [threading.Thread(target=valid_client, args=(args.base, deadline, tally, i))
               for i in range(VALID_CLIENTS)]
    clients += [threading.Thread(target=hostile_client, args=(args.base, deadline, tally, 100 + i))
                for i in range(HOSTILE_CLIENTS)]
    clients.append(threading.Thread(target=flood, args=(args.base, deadline, tally)))
    for client in clients:
        client.start()
    samples = []
    while any(c.is_alive() for c in clients):
        latency = health_latency(args.base)
        samples.append({"t": round(time.monotonic() - started), **sample(args.pid),
                        "health_ms": None if latency is None else round(latency * 1000, 1)})
        time.sleep(5)
    for client in clients:
        client.join()
    time.sleep(2)  # let the server release what the last requests held
    end = sample(args.pid)

    requests = sum(n for key, n in tally.counts.items()
                   if key.startswith(("valid ", "hostile ")))
    five_xx = tally.counts["5xx"]
    minute = max(1, len(samples) // max(1, int(args.minutes)))
    first_minutes = [s["rss_mib"] for s in samples[minute:2 * minute]] or [start["rss_mib"]]
    last_minutes = [s["rss_mib"] for s in samples[-minute:]] or [end["rss_mib"]]
    report = {
        "minutes": args.minutes,
        "requests": requests,
        "counts": dict(sorted(tally.counts.items())),
        "valid_failed": tally.counts["valid: failed"] + tally.counts["valid: no response"],
        "server_errors": five_xx,
        "rss_mib": {"after_warm_up": start["rss_mib"], "peak": end["peak_mib"],
                    "final": end["rss_mib"],
                    "mean_second_minute": round(sum(first_minutes) / len(first_minutes), 1),
                    "mean_last_minute": round(sum(last_minutes) / len(last_minutes), 1)},
        "fds": {"start": start["fds"], "end": end["fds"]},
        "health_ms": {"max": max((s["health_ms"] or 1e9) for s in samples) if samples else None,
                      "unanswered": sum(s["health_ms"] is None for s in samples)},
        "threads": {"start": start["threads"], "end": end["threads"]},
        "failures": tally.failures,
        "samples": samples,
    }
    with open(args.report, "w") as f:
        json.dump(report, f, indent=1)
    print(f"soak: {args.minutes:g} min, {requests} requests")
    for key, count in sorted(tally.counts.items()):
        print(f"  {count:7d}  {key}")
    rss = report["rss_mib"]
    print(f"resident MiB: after warm-up {rss['after_warm_up']:.0f}, peak {rss['peak']:.0f}, "
          f"final {rss['final']:.0f}; mean in minute 2 {rss['mean_second_minute']:.0f}, "
          f"in the last minute {rss['mean_last_minute']:.0f}")
    print(f"open fds: {start['fds']} -> {end['fds']}; threads: {start['threads']} -> "
          f"{end['threads']}")
    health = report["health_ms"]
    print(f"a fresh client's /health under the flood: at most {health['max']} ms "
          f"({health['unanswered']} unanswered)")
    for failure in tally.failures:
        print("  failure:", failure)
    if five_xx or report["valid_failed"]:
        print(f"soak FAILED: {five_xx} 5xx, {report['valid_failed']} valid "
              "requests without their vectors")
        raise SystemExit(1)
    print("soak passed: no 5xx, every valid request got its vectors")


if __name__ == "__main__":
    main()
