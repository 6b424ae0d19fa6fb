"""``python -m streams health``: does the local worker's ``/ready`` (or ``/healthz``) answer 200?

The container healthcheck, run every 10 s beside a busy worker: the standard library alone, and
nothing of the worker imported (its settings would load pydantic, and ``import engines`` numpy).
It reads ``RERANK_HTTP_HOST`` and ``RERANK_HTTP_PORT`` from the environment (not from a ``.env``
file), with the worker's own defaults (``tests/streams/test_health.py`` keeps them equal).
"""
from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Mapping

#: ``WorkerSettings.http_host`` and ``http_port``'s defaults.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: Hosts that mean "every interface" to a server: a client asks the loopback instead.
ANY_HOST = ("0.0.0.0", "::", "")


def _variable(environ: Mapping[str, str], name: str) -> str | None:
    """``name`` from ``environ``, in any case (pydantic-settings reads the variables that way)."""
    wanted = name.lower()
    return next((value for key, value in environ.items() if key.lower() == wanted), None)


def endpoint(path: str, environ: Mapping[str, str] = os.environ) -> str:
    """The local worker's URL of ``path``."""
    host = (_variable(environ, "RERANK_HTTP_HOST") or DEFAULT_HOST).strip()
    port = int(_variable(environ, "RERANK_HTTP_PORT") or DEFAULT_PORT)
    host = "127.0.0.1" if host in ANY_HOST else host
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def probe(path: str = "/ready", timeout_s: float = 3.0, environ: Mapping[str, str] = os.environ) -> tuple[bool, str]:
    """(healthy, what the worker said or why it could not be asked)."""
    try:
        with urllib.request.urlopen(endpoint(path, environ), timeout=timeout_s) as resp:
            return True, json.dumps(json.loads(resp.read()))
    except Exception as exc:  # noqa: BLE001 - a 503, a refused connection, a timeout: all unhealthy
        return False, f"unhealthy: {exc}"
