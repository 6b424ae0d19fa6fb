"""``python -m streams worker``: run one rerank worker in the foreground.

Configuration comes from the environment (see streams/settings.py and the README).
SIGTERM or Ctrl-C: no more requests are fetched, the ones taken are answered while
RERANK_SHUTDOWN_GRACE_S allows (the rest are left to be redelivered), the offsets of the
answered ones committed, and the process exits within RERANK_SHUTDOWN_GRACE_S, broker or
no broker (streams/lifecycle.py). A second signal exits at once.
"""
from __future__ import annotations

import json
import logging
import sys
import urllib.request

import click

from engines import build_reranker
from engines.fidelity import EngineRefused
from streams.settings import env_name, load_settings
from streams.topics import check_access, ensure_topics


@click.group()
def cli() -> None:
    """Streaming reranking service on Kafka."""


def _init_topics(settings) -> None:
    ensure_topics(settings.confluent_config(), {
        settings.request_topic: settings.request_partitions,
        settings.response_topic: settings.response_partitions,
        settings.dead_letter_topic: 1,
    }, settings.replication_factor, timeout_s=settings.startup_timeout_s)


def _settings_and_logging():
    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    return settings


@cli.command("init-topics")
def init_topics() -> None:
    """Create the request, response and dead-letter topics if missing, then exit."""
    settings = _settings_and_logging()
    _init_topics(settings)
    click.echo(f"topics ready on {settings.bootstrap_servers}: {settings.request_topic} "
               f"({settings.request_partitions} partitions), {settings.response_topic}, {settings.dead_letter_topic}")


@cli.command()
@click.option("--path", default="/ready", show_default=True, type=click.Choice(["/ready", "/healthz"]))
def health(path: str) -> None:
    """Exit 0 when the local worker's endpoint says so (a container healthcheck)."""
    settings = load_settings()
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::") else settings.http_host
    try:
        with urllib.request.urlopen(f"http://{host}:{settings.http_port}{path}", timeout=3) as resp:
            click.echo(json.dumps(json.loads(resp.read())))
    except Exception as exc:  # 503 lands here too
        sys.exit(f"unhealthy: {exc}")


@cli.command()
def worker() -> None:
    """Run one worker (all settings from the environment)."""
    settings = _settings_and_logging()
    log = logging.getLogger("rerank.worker")
    _init_topics(settings)
    check_access(settings.confluent_config(), settings.group_id, [settings.request_topic],
                 [settings.response_topic, settings.dead_letter_topic], timeout_s=settings.startup_timeout_s)

    config = settings.engine_config
    try:
        reranker = build_reranker(config)
    except EngineRefused as exc:
        instead = " ".join(f"{env_name(field)}={value}" for field, value in exc.alternative.items())
        sys.exit(f"worker: RERANK_ENGINE={config.engine} cannot serve RERANK_MODEL={config.model!r}: {exc}"
                 + (f"; set {instead}" if instead else ""))
    except (OSError, ValueError) as exc:
        sys.exit(f"worker: cannot load RERANK_MODEL={config.model!r} with RERANK_ENGINE={config.engine}: {exc}")
    reranker.warmup()
    log.info("engine %s ready with model %s", reranker.engine_name, reranker.model_name)

    # Deferred: the worker's Faust app is slow to import (faust, aiokafka, aiohttp), and `health` runs every 10 s as
    # a container healthcheck, which needs none of it.
    from streams.app import create_app
    from streams.lifecycle import RerankWorker

    app = create_app(settings, reranker)
    RerankWorker(app, drain=app.rerank_service.drain, grace_s=settings.shutdown_grace_s,
                 log_repeat_s=settings.log_repeat_s, loglevel=settings.log_level, quiet=True,
                 redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    cli()
