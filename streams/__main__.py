"""``python -m streams worker``: run one rerank worker in the foreground.

Configuration comes from the environment (see streams/settings.py and the README).
SIGTERM or Ctrl-C: the current window is finished and answered, the producer flushed and
the offsets committed before the process exits.
"""
from __future__ import annotations

import logging
import sys

import click


@click.group()
def cli() -> None:
    """Streaming reranking service on Kafka."""


@cli.command()
def worker() -> None:
    """Run one worker (all settings from the environment)."""
    from streams.settings import load_settings

    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("rerank.worker")

    from streams.topics import ensure_topics

    ensure_topics(settings.confluent_config(), {
        settings.request_topic: settings.request_partitions,
        settings.response_topic: settings.response_partitions,
        settings.dead_letter_topic: 1,
    }, settings.replication_factor)

    from engines import build_reranker

    try:
        reranker = build_reranker(settings.engine_config())
    except (OSError, ValueError) as exc:
        sys.exit(f"worker: cannot load RERANK_MODEL={settings.model!r} with RERANK_ENGINE={settings.engine}: {exc}")
    reranker.warmup()
    log.info("engine %s ready with model %s", reranker.engine_name, reranker.model_name)

    import faust

    from streams.worker import create_app

    app = create_app(settings, reranker)
    faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    cli()
