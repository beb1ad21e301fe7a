"""A real embedserve process per test module, started on a free port."""

import json
import math
import os
import pathlib
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = ROOT.parent / "shared" / "models"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


class Server:
    """Started on port 0 with --port-file; ready once /ready answers 200. `drain_delay=None`
    keeps the configuration's own."""

    def __init__(self, *args, drain_delay="0s"):
        binary = os.environ.get("EMBEDSERVE_BIN", str(ROOT / "target" / "debug" / "embedserve"))
        self.scratch = tempfile.TemporaryDirectory()
        port_file = pathlib.Path(self.scratch.name) / "port"
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [binary, "serve", "--host", "127.0.0.1", "--port", "0", "--port-file", port_file,
             *(["--drain-delay", drain_delay] if drain_delay else []),
             *map(str, args)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.monotonic() + 300
        self.base = None
        while not self._ready(port_file):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                self.log.seek(0)
                raise RuntimeError("embedserve did not start:\n" + self.log.read())
            time.sleep(0.05)

    def _ready(self, port_file):
        if self.base is None and port_file.exists():
            self.base = f"http://127.0.0.1:{port_file.read_text().strip()}"
        if self.base is None:
            return False
        try:
            with urllib.request.urlopen(self.base + "/ready", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()
        self.scratch.cleanup()


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
