"""A real embedserve process per test module, started on a free port."""

import json
import math
import os
import pathlib
import subprocess
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = ROOT.parent / "shared" / "models"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


class Server:
    def __init__(self, *args):
        binary = os.environ.get("EMBEDSERVE_BIN", str(ROOT / "target" / "debug" / "embedserve"))
        self.process = subprocess.Popen(
            [binary, "serve", "--host", "127.0.0.1", "--port", "0", *map(str, args)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log = []
        self.base = None
        ready = False
        for line in self.process.stderr:
            self.log.append(line)
            if "listening on " in line:
                self.base = line.split("listening on ", 1)[1].split()[0]
            if "embedserve ready" in line:
                ready = True
                break
        if not ready:
            self.base = None
        if self.base is None:
            raise RuntimeError("embedserve did not start:\n" + "".join(self.log))
        # Keep draining so the server never blocks on a full pipe.
        threading.Thread(target=lambda: self.log.extend(self.process.stderr), daemon=True).start()

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server():
    server = Server("--models-dir", MODELS, "--model", MINILM)
    yield server
    server.stop()


def reference(model=MINILM):
    return json.loads((MODELS / model / "reference.json").read_text())


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
