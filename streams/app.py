"""The Faust wiring of one worker: its app, agent, engine task, timer and web pages.

Data flow (one process; scale out with more processes in the same consumer group)::

    rerank-requests ──agent──▶ RerankService.take ──▶ engine task ──▶ engine thread (scheduler steps)
          │                          │ bad input                         │
          │                          ▼                                   ▼
          │                error answer / rerank-dlq              ranked answers, each when ready
          └──────── offsets committed only after each request's answer is delivered
                    (RERANK_DELIVERY=exactly_once: in one transaction with it, streams.transactions)
"""
from __future__ import annotations

import logging
import ssl

from collections.abc import Callable

import faust
from aiokafka import AIOKafkaProducer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engines import Reranker
from streams import metrics
from streams.faust_adapter import follow_rebalances, use_idempotent_producer
from streams.logs import keep_sasl_frames_out_of_logs
from streams.service import RerankService
from streams.settings import WorkerSettings
from streams.transactions import TRANSACTION_TIMEOUT_MS, TransactionalDelivery

log = logging.getLogger("rerank.worker")


def create_app(settings: WorkerSettings, reranker: Reranker) -> faust.App:
    """The Faust app of one worker: its agent, engine loop, web endpoints and timers."""
    use_idempotent_producer()
    follow_rebalances()
    keep_sasl_frames_out_of_logs()
    app = _faust_app(settings)
    service = RerankService(app, settings, reranker, make_producer=transactional_producer(settings, app))
    app.rerank_service = service  # for tests and introspection
    requests = app.topic(settings.request_topic, value_serializer="raw", key_serializer="raw")

    # concurrency=1: with more, faust can commit past a message still in flight (#606).
    @app.agent(requests, concurrency=1, name="rerank")
    async def rerank(stream):
        stream = stream.noack()
        async for event in stream.events():
            await service.take(stream, event)

    @app.task
    async def engine_loop() -> None:
        await service.run_engine()

    @app.on_partitions_assigned.connect
    async def on_assigned(app, assigned, **kwargs) -> None:
        _holding(service, sorted(tp.partition for tp in assigned if tp.topic == settings.request_topic))

    if isinstance(service.delivery, TransactionalDelivery):
        _transactions_follow_the_assignment(app, service.delivery)

    @app.timer(interval=settings.summary_every_s)
    async def summary() -> None:
        _log_summary(service)

    _web_pages(app, service)
    return app


def _faust_app(settings: WorkerSettings) -> faust.App:
    datadir = settings.data_dir / settings.worker_name
    datadir.parent.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    return faust.App(
        settings.group_id,
        broker=[f"kafka://{s.strip()}" for s in settings.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        datadir=str(datadir),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Small: each buffered message can hold thousands of documents; the backlog
        # belongs in Kafka, not in this process.
        stream_buffer_maxsize=settings.stream_buffer_maxsize,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        # Topics are created by streams.topics.ensure_topics with the configured partition counts.
        topic_allow_declare=False,
        # faust's leader election (an internal topic <group>-__assignor-__leader that every member
        # subscribes to) serves only on_leader=True timers and tasks, which the worker has none of.
        # With topic_allow_declare=False that topic is never created, and aiokafka logged "Topic
        # ...-__assignor-__leader not found in cluster metadata" as an ERROR at every metadata
        # refresh and rebalance (and "is not authorized" on a cluster with ACLs): noise in every
        # failover's log. Without the election there is no such topic to look for.
        topic_disable_leader=True,
        web_enabled=True,
        web_bind=settings.http_host,
        web_host=settings.http_host,
        web_port=settings.http_port,
        web_stats_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
        web_router_enabled=False,
    )


def transactional_producer(settings: WorkerSettings, app: faust.App) -> Callable[[str], AIOKafkaProducer]:
    """Builds the exactly-once producers: the worker's connection settings, idempotent, acks=all."""
    auth = credentials_to_aiokafka_auth(faust_credentials(settings))

    def make(transactional_id: str) -> AIOKafkaProducer:
        return AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers.split(","),
                                client_id=f"{settings.worker_name}-{transactional_id}",
                                transactional_id=transactional_id, enable_idempotence=True, acks="all",
                                max_request_size=int(app.conf.producer_max_request_size),
                                transaction_timeout_ms=TRANSACTION_TIMEOUT_MS, **auth)
    return make


def _transactions_follow_the_assignment(app: faust.App, delivery: TransactionalDelivery) -> None:
    """exactly_once: the delivery hears of revocations and assignments inside faust's rebalance
    callbacks (streams.faust_adapter), and starts the producers of the partitions held before
    their committed offsets are read (faust sends on_rebalance_complete just before it seeks)."""
    app.rebalance_listener = delivery

    @app.on_rebalance_complete.connect
    async def fence_before_seeking(app, **kwargs) -> None:
        await delivery.prepare()


def faust_credentials(settings: WorkerSettings) -> faust.types.auth.CredentialsT | None:
    """The connection settings as faust/aiokafka credentials (None for PLAINTEXT)."""
    context = None
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=str(settings.ssl_ca_file) if settings.ssl_ca_file else None)
    if settings.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=settings.sasl_username, password=settings.password(),
                                     mechanism=settings.sasl_mechanism, ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def _holding(service: RerankService, held: list[int]) -> None:
    service.partitions_held = len(held)
    service.joined.set()
    metrics.ASSIGNED_PARTITIONS.set(len(held))
    topic = service.settings.request_topic
    if held:
        log.info("holding partitions %s of %s", held, topic)
    else:
        log.warning("this replica holds no partition of %s: there are more replicas than "
                    "partitions, so it idles until a rebalance gives it one", topic)


def _log_summary(service: RerankService) -> None:
    log.info("summary: %d ok, %d errors, %d documents, %d pairs scored, %d micro-batches, "
             "%d queued, %d pairs in flight, %d partitions",
             metrics.sample("rerank_requests_total", status="ok"),
             metrics.sample("rerank_requests_total", status="error"),
             metrics.sample("rerank_documents_total"), metrics.sample("rerank_pairs_scored_total"),
             metrics.sample("rerank_scheduler_steps_total", kind="micro_batch"), service.inbox.queued,
             service.inbox.inflight_pairs, service.partitions_held)


def _web_pages(app: faust.App, service: RerankService) -> None:
    @app.page("/metrics")
    async def metrics_page(web, request):
        # aiohttp refuses a content_type with parameters; the header carries them
        return web.bytes(generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def liveness(web, request):
        alive = not app.crashed
        return web.json({"alive": alive, **service.health()}, status=200 if alive else 503)

    @app.page("/ready")
    async def readiness(web, request):
        ready = service.joined.is_set() and not service.stopping and not app.crashed
        return web.json({"ready": ready, **service.health()}, status=200 if ready else 503)
