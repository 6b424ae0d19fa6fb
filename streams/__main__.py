"""``python -m streams worker``: run one rerank worker in the foreground.

Also ``init-topics`` (create the topics, then exit), ``prepare`` (make the engine's artefacts in the
cache, then exit: what the torch-free worker image serves from) and ``health`` (the container
healthcheck). Configuration comes from the environment (see streams/settings.py and the README).
SIGTERM or Ctrl-C: no more requests are fetched, the ones taken are answered while
RERANK_SHUTDOWN_GRACE_S allows (the rest are left to be redelivered), the offsets of the
answered ones committed, and the process exits within RERANK_SHUTDOWN_GRACE_S, broker or
no broker (streams/lifecycle.py). A second signal exits at once.
"""
from __future__ import annotations

import logging
import sys

import click

from streams.health import probe
from vocabulary import PREFILTER_METHODS

# Everything else is imported by the command that needs it: `health` runs every 10 s as a container
# healthcheck and loads the standard library alone; `worker` and `prepare` load the engines,
# `worker` and `init-topics` the Kafka clients.


@click.group()
def cli() -> None:
    """Streaming reranking service on Kafka."""


def _init_topics(settings):
    """The worker's topics, created where missing; returns the replication used (None: all existed)."""
    from streams.topics import ensure_topics

    return ensure_topics(settings.confluent_config(), {
        settings.request_topic: settings.request_partitions,
        settings.response_topic: settings.response_partitions,
        settings.dead_letter_topic: 1,
    }, settings.replication_factor, settings.min_insync_replicas, timeout_s=settings.startup_timeout_s)


def _settings_and_logging():
    from streams.settings import load_settings, unread_variables

    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    for name in unread_variables():
        logging.getLogger("rerank.settings").warning(
            "%s is set but no setting reads it: a typo, or removed (README, \"Moved or removed in 0.3\")", name)
    return settings


@cli.command("init-topics")
def init_topics() -> None:
    """Create the request, response and dead-letter topics if missing, then exit."""
    settings = _settings_and_logging()
    replication = _init_topics(settings)
    if replication is None:
        how = "all existed already and were left as they are"
    else:
        how = (f"created missing ones with replication factor {replication.factor} and min.insync.replicas "
               f"{replication.min_insync} ({replication.brokers} broker(s))")
    click.echo(f"topics ready on {settings.bootstrap_servers}: {settings.request_topic} "
               f"({settings.request_partitions} partitions), {settings.response_topic}, {settings.dead_letter_topic}; {how}")


@cli.command()
@click.option("--path", default="/ready", show_default=True, type=click.Choice(["/ready", "/healthz"]))
def health(path: str) -> None:
    """Exit 0 when the local worker's endpoint says so (a container healthcheck)."""
    healthy, said = probe(path)
    if not healthy:
        sys.exit(said)
    click.echo(said)


def _prepared(settings, who: str, first_stages: list[str] | None = None):
    """The reranker of ``settings``, its artefacts made or found in the cache (engines.prepare);
    exits with one line naming the variables when it cannot be had."""
    from engines.fidelity import EngineRefused
    from engines.models import ArtefactMissing
    from engines.prepare import prepare
    from streams.settings import env_name

    config = settings.engine_config
    try:
        return prepare(config, first_stages)
    except EngineRefused as exc:
        instead = " ".join(f"{env_name(field)}={value}" for field, value in exc.alternative.items())
        sys.exit(f"{who}: RERANK_ENGINE={config.engine} cannot serve RERANK_MODEL={config.model!r}: {exc}"
                 + (f"; set {instead}" if instead else ""))
    except ArtefactMissing as exc:
        sys.exit(f"{who}: RERANK_ENGINE={config.engine} RERANK_PRECISION={config.precision} "
                 f"RERANK_PREFILTER_METHOD={config.prefilter_method} RERANK_MODEL={config.model!r}: {exc}; "
                 "the prepare step makes it where torch is installed: `python -m streams prepare` with the same "
                 "RERANK_* settings and RERANK_CACHE_DIR, on this kind of CPU (docker compose: the prepare service; "
                 "Kubernetes: the prepare init container)")
    except (OSError, ValueError) as exc:
        sys.exit(f"{who}: cannot load RERANK_MODEL={config.model!r} with RERANK_ENGINE={config.engine}: {exc}")


@cli.command("prepare")
@click.option("--first-stage", "first_stages", multiple=True, type=click.Choice([*PREFILTER_METHODS, "all"]),
              help="First stages to build ahead (repeatable); default: RERANK_PREFILTER_METHOD's alone.")
def prepare_command(first_stages: tuple[str, ...]) -> None:
    """Make the artefacts a worker with these settings loads, in RERANK_CACHE_DIR, then exit.

    The ONNX export, its int8 copy, the start-up check's verdict and the first stage's model: what
    the worker image (no torch) serves from. Needs no Kafka; seconds when the cache has it all.
    """
    settings = _settings_and_logging()
    stages = list(PREFILTER_METHODS) if "all" in first_stages else list(first_stages) or None
    reranker = _prepared(settings, "prepare", stages)
    from engines.config import resolve_cache_dir

    click.echo(f"prepared {reranker.engine_name} for {reranker.model_name} in {resolve_cache_dir(settings.engine_config)}")


@cli.command()
def worker() -> None:
    """Run one worker (all settings from the environment)."""
    from streams.topics import check_access

    settings = _settings_and_logging()
    log = logging.getLogger("rerank.worker")
    _init_topics(settings)
    check_access(settings.confluent_config(), settings.group_id, [settings.request_topic],
                 [settings.response_topic, settings.dead_letter_topic], timeout_s=settings.startup_timeout_s)

    reranker = _prepared(settings, "worker")
    log.info("engine %s ready with model %s", reranker.engine_name, reranker.model_name)

    from streams.app import create_app
    from streams.lifecycle import RerankWorker

    app = create_app(settings, reranker)
    RerankWorker(app, drain=app.rerank_service.drain, grace_s=settings.shutdown_grace_s,
                 log_repeat_s=settings.log_repeat_s, loglevel=settings.log_level, quiet=True,
                 redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    cli()
