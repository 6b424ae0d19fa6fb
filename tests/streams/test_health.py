"""``python -m streams health``, the container healthcheck: quick, light, and asking the right port.

It runs every 10 s beside a busy worker, so it loads the standard library alone (no pydantic, numpy
or engines: the old probe loaded all three and once ran past its 5 s timeout), and it reads the
worker's two HTTP settings itself, with the worker's defaults.
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from streams import health
from streams.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[2]


def test_its_defaults_are_the_workers():
    fields = WorkerSettings.model_fields
    assert (health.DEFAULT_HOST, health.DEFAULT_PORT) == (fields["http_host"].default, fields["http_port"].default)


@pytest.mark.parametrize("environ, url", [
    ({}, "http://127.0.0.1:8080/ready"),
    ({"RERANK_HTTP_HOST": "0.0.0.0", "RERANK_HTTP_PORT": "9100"}, "http://127.0.0.1:9100/ready"),
    ({"rerank_http_host": "::"}, "http://127.0.0.1:8080/ready"),
    ({"RERANK_HTTP_HOST": "::1"}, "http://[::1]:8080/ready"),
    ({"RERANK_HTTP_HOST": "10.1.2.3"}, "http://10.1.2.3:8080/ready"),
])
def test_it_asks_where_the_worker_listens(environ, url):
    assert health.endpoint("/ready", environ) == url


class _Worker(http.server.BaseHTTPRequestHandler):
    ready = True

    def do_GET(self):  # noqa: N802 - http.server's name
        status = 200 if self.ready or self.path == "/healthz" else 503
        body = json.dumps({"path": self.path, "status": status}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def worker_port():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Worker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _health(port: int, *args: str) -> subprocess.CompletedProcess:
    code = ("import sys; import runpy; sys.argv = ['streams', 'health', *sys.argv[1:]];"
            "\ntry:\n    runpy.run_module('streams', run_name='__main__')\nfinally:\n"
            "    heavy = sorted(m for m in ('pydantic', 'numpy', 'engines', 'confluent_kafka', 'faust') if m in sys.modules)\n"
            "    print('imported:', heavy, file=sys.stderr)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RERANK_HTTP_HOST": "0.0.0.0", "RERANK_HTTP_PORT": str(port)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)


def test_healthy_unhealthy_and_nothing_heavy_imported(worker_port, monkeypatch):
    done = _health(worker_port)
    assert done.returncode == 0 and json.loads(done.stdout) == {"path": "/ready", "status": 200}, done
    assert "imported: []" in done.stderr, done.stderr
    monkeypatch.setattr(_Worker, "ready", False)
    done = _health(worker_port)
    assert done.returncode == 1 and "unhealthy: HTTP Error 503" in done.stderr, done
    assert _health(worker_port, "--path", "/healthz").returncode == 0


def test_no_worker_is_unhealthy():
    ok, said = health.probe("/ready", timeout_s=2, environ={"RERANK_HTTP_PORT": "1"})
    assert not ok and said.startswith("unhealthy:")
