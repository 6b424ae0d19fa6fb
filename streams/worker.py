"""The worker: a Faust agent reads rerank requests, a window loop scores them, replies go out.

Data flow (one process; scale out with more processes in the same consumer group)::

    rerank-requests ──agent──▶ parse ──▶ WindowBuffer ──window loop──▶ engine thread
          │                      │ bad input                              │
          │                      ▼                                        ▼
          │            error response / rerank-dlq              ranked responses
          └──────── offsets committed only after each request's answer is delivered

At-least-once: the agent's stream does not ack on its own (``noack``). A request is acked
once its answer is delivered, and faust commits only the contiguous acked prefix of each
partition, so a worker that dies mid-window leaves its requests to be redelivered.

Stopping (``drain``, run by streams.shutdown on SIGTERM): take no more requests and stop
fetching, answer what was taken while the grace period allows, abandon the rest unacked
(redelivered), commit what was answered. Requests are counted in the metrics when the
message that settles them is delivered, as what was delivered.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from faust.transport.drivers import aiokafka as faust_aiokafka
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engines import Reranker, RerankJob
from schemas import ErrorCode, RequestError, RequestLimits, RerankRequest, encode, parse_request
from streams import metrics
from streams.replies import ranked_response
from streams.settings import WorkerSettings
from streams.windows import Pending, WindowBuffer

log = logging.getLogger("rerank.worker")

# faust turns on the idempotent producer only for exactly_once, which is broken (faust
# #517, #323). We run at-least-once but still want retries without duplicates in the log.
faust_aiokafka.Producer._settings_extra = lambda self: {"acks": "all", "enable_idempotence": True}

class _NoSaslFrames(logging.Filter):
    """aiokafka logs every request and response at debug level, SASL ones included: with
    SASL/PLAIN that request carries the password in clear (b'\\x00user\\x00password'), with
    SCRAM the proof. Found by tests/test_security.py; such records are dropped at any level."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(type(arg).__name__.startswith("SaslAuthenticate") for arg in args)


# On the logger itself, so that it holds whatever handlers faust/mode install later.
logging.getLogger("aiokafka.conn").addFilter(_NoSaslFrames())

DELIVERY_ATTEMPTS = 5
# A produce that has not been acknowledged by then counts as failed (and is retried).
DELIVERY_TIMEOUT_S = 30.0
# How long a "this reply_to topic does not exist" answer is trusted before asking again.
TOPIC_LIST_TTL_S = 5.0
# How long a topic's max.message.bytes is trusted before asking the broker again.
TOPIC_LIMIT_TTL_S = 60.0
# Of the shutdown grace period, the last this many seconds (at most half of it) are kept for
# committing offsets and faust's own stop; answering stops before them.
DRAIN_RESERVE_S = 8.0


@dataclass
class Inbound:
    """A parsed request waiting for its window."""

    request: RerankRequest
    event: Any  # the faust event to ack once the answer is delivered
    received: float = field(default_factory=time.monotonic)


@dataclass
class Outbound:
    """One message to produce; the event is acked when every Outbound of it is delivered."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None
    fallback: Outbound | None = None  # sent instead when this one cannot be delivered
    request_id: str | None = None  # set on answers: an oversized one is replaced by an error
    # What delivering this message settles, for rerank_requests_total / rerank_errors_total:
    # "ok" or "error" (with the error code) for an answer, None for a dead letter that
    # goes with an answer.
    status: str | None = None
    code: str | None = None

    def size(self) -> int:
        """Upper bound of the record's size on the wire (what the broker compares with
        max.message.bytes)."""
        return DefaultRecordBatchBuilder.estimate_size_in_bytes(self.key, self.value, self.headers or [])


def _key_as_request_id(key: bytes | None) -> str | None:
    """The record key, when it can stand in for an unreadable body's request_id."""
    if not key:
        return None
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if 1 <= len(text) <= 128 else None


class RerankService:
    """Owns the window buffer, the scoring thread and the replies of one worker."""

    def __init__(self, app: faust.App, settings: WorkerSettings, reranker: Reranker) -> None:
        self.app = app
        self.settings = settings
        self.reranker = reranker
        self.limits = RequestLimits(max_documents=settings.max_documents)
        self.served_models = {settings.model, reranker.model_name, *settings.model_aliases}
        self.buffer: WindowBuffer[Inbound] = WindowBuffer(
            settings.window_max_pairs, settings.window_ms, settings.max_inflight_pairs,
            gather_ms=settings.window_gather_ms)
        # One scoring thread: the engine is not re-entrant, and two windows at once would
        # only split the same cores.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.stream: Any = None
        self._deliveries: set[asyncio.Task] = set()
        self.partitions_held = 0
        self.joined = asyncio.Event()
        self.stopping = False
        self._window_task: asyncio.Task | None = None
        # Producing to a missing topic makes aiokafka wait for its metadata indefinitely,
        # so reply_to topics are looked up first (with confluent-kafka, off the loop).
        self._admin = None
        self._known_topics: set[str] = set()
        self._topics_listed_at = 0.0
        self._topic_limits: dict[str, tuple[float, int | None]] = {}
        self._limits_lock = asyncio.Lock()

    # --- intake (the agent) ------------------------------------------------------------
    async def take(self, stream: Any, event: Any) -> None:
        """Parses one message: good requests wait for a window, bad ones are answered now."""
        self.stream = stream
        raw: bytes = event.value if event.value is not None else b""
        try:
            request = parse_request(raw, self.limits, self.served_models)
            self._check_reply_to(request)
            self._check_client_scores(request)
        except RequestError as err:
            self._spawn(self._deliver(self._rejection(err, raw, event.key), [event]))
            return
        if not await self.buffer.put(Inbound(request, event), self._pairs(request)):
            return  # stopping: left unacked, so it is redelivered
        metrics.INFLIGHT_PAIRS.set(self.buffer.inflight_pairs)

    def _check_reply_to(self, request: RerankRequest) -> None:
        topic = request.reply_to
        if topic is None:
            return
        prefix = self.settings.reply_to_prefix
        if not prefix or not topic.startswith(prefix) or topic in (
                self.settings.request_topic, self.settings.dead_letter_topic):
            raise RequestError(
                ErrorCode.INVALID_REQUEST,
                f"reply_to {topic!r} is not allowed: reply topics must start with {prefix!r} "
                f"(RERANK_REPLY_TO_PREFIX)" if prefix else "reply_to is disabled on this worker",
                request.request_id)

    def _check_client_scores(self, request: RerankRequest) -> None:
        """A request the prefilter will cut by the caller's scores (method client, asked for or
        the worker's default) must carry one on every document: refused now, not guessed."""
        opts = request.prefilter
        method = opts.method if opts is not None and opts.method else self.settings.prefilter_method
        n = len(request.documents)
        keep = opts.keep if opts is not None and opts.keep else self.settings.prefilter_keep
        enabled = opts.enabled if opts is not None and opts.enabled is not None else (
            n > self.settings.prefilter_threshold)
        if method != "client" or not enabled or keep >= n or self.settings.engine == "bi-encoder":
            return
        missing = [i for i, score in enumerate(request.scores()) if score is None]
        if missing:
            shown = ", ".join(f"documents[{i}]" for i in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise RequestError(
                ErrorCode.INVALID_REQUEST,
                f"prefilter method 'client' ranks documents by their own score, but {shown}{more} "
                f"{'has' if len(missing) == 1 else 'have'} none: give every document as "
                '{"text": ..., "score": <number>}, or choose another prefilter.method',
                request.request_id)

    def _pairs(self, request: RerankRequest) -> int:
        """The cross-encoder pairs a request will cost, for window sizing and backpressure."""
        n = len(request.documents)
        opts = request.prefilter
        enabled = opts.enabled if opts is not None and opts.enabled is not None else (
            n > self.settings.prefilter_threshold and self.settings.engine != "bi-encoder")
        if enabled:
            keep = opts.keep if opts is not None and opts.keep else self.settings.prefilter_keep
            return min(n, keep)
        return n

    def _rejection(self, err: RequestError, raw: bytes, key: bytes | None) -> list[Outbound]:
        out: list[Outbound] = []
        request_id = err.request_id
        if request_id is None:
            # The body is unreadable: keep its original bytes for a person to look at.
            metrics.DEAD_LETTERS.inc()
            out.append(Outbound(self.settings.dead_letter_topic, key, raw, [
                ("error-code", err.code.value.encode()),
                ("error-message", err.message.encode("utf-8", "replace")),
                ("source-topic", self.settings.request_topic.encode()),
                ("worker", self.settings.worker_name.encode()),
            ]))
            request_id = _key_as_request_id(key)
            if request_id is None:
                log.warning("dead-lettered an unreadable request with no usable key: %s", err.message)
                out[0].status, out[0].code = "error", err.code.value  # the dead letter settles it
                return out
            err = RequestError(err.code, err.message, request_id)
        out.append(self._answer(request_id, err.to_response()))
        return out

    def _answer(self, request_id: str, response: Any, reply_to: str | None = None) -> Outbound:
        key = request_id.encode("utf-8")
        status = response.status
        code = response.error.code.value if status == "error" else None
        if reply_to is None:
            return Outbound(self.settings.response_topic, key, encode(response), request_id=request_id,
                            status=status, code=code)
        # If the reply topic cannot take it (missing, no ACL), the client still gets an answer.
        fallback = RequestError(ErrorCode.INVALID_REQUEST,
                                f"reply_to topic {reply_to!r} does not exist or refused the answer", request_id)
        return Outbound(reply_to, key, encode(response), request_id=request_id, status=status, code=code,
                        fallback=Outbound(self.settings.response_topic, key, encode(fallback.to_response()),
                                          request_id=request_id, status="error",
                                          code=ErrorCode.INVALID_REQUEST.value))

    # --- windows -------------------------------------------------------------------------
    async def run_windows(self) -> None:
        """Until the buffer is closed and empty: take a window (only when the engine is free:
        this loop scores one at a time), score it off the event loop, hand the replies to
        delivery."""
        self._window_task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        while True:
            window = await self.buffer.next_window()
            if not window:
                return  # closed and drained: the worker is stopping
            formed = time.monotonic()
            now_ms = time.time() * 1000
            live: list[Pending[Inbound]] = []
            replies: list[tuple[Pending[Inbound], list[Outbound]]] = []
            for pending in window:
                request = pending.item.request
                if request.deadline_ms is not None and request.deadline_ms <= now_ms:
                    err = RequestError(
                        ErrorCode.DEADLINE_EXCEEDED,
                        f"deadline_ms {request.deadline_ms} passed {now_ms - request.deadline_ms:.0f} ms "
                        "before the request's window formed; it was not scored", request.request_id)
                    replies.append((pending, [self._answer(request.request_id, err.to_response(),
                                                           request.reply_to)]))
                else:
                    live.append(pending)
            if live:
                replies += await self._score(loop, live, formed)
            for pending, outbound in replies:
                self._spawn(self._deliver(outbound, [pending.item.event], pending.pairs, pending.item.received))

    async def _score(self, loop: asyncio.AbstractEventLoop, live: list[Pending[Inbound]],
                     formed: float) -> list[tuple[Pending[Inbound], list[Outbound]]]:
        jobs = []
        for pending in live:
            req = pending.item.request
            opts = req.prefilter
            jobs.append(RerankJob(req.query, req.texts(),
                                  prefilter=opts.enabled if opts else None,
                                  keep=opts.keep if opts else None,
                                  method=opts.method if opts else None, scores=req.scores()))
        pairs = sum(p.pairs for p in live)
        metrics.WINDOWS.inc()
        metrics.WINDOW_REQUESTS.observe(len(live))
        metrics.WINDOW_FILL.observe(pairs / self.settings.window_max_pairs)
        started = time.monotonic()
        try:
            outcomes = await loop.run_in_executor(self.executor, self.reranker.rerank, jobs)
            if len(outcomes) != len(jobs):
                raise RuntimeError(f"engine returned {len(outcomes)} outcomes for {len(jobs)} requests")
            failure = None
        except Exception as exc:  # the whole window is answered with `internal`, not dropped
            log.exception("scoring a window of %d requests failed", len(jobs))
            outcomes, failure = [None] * len(jobs), exc
        done = time.monotonic()
        inference_ms = (done - started) * 1000
        metrics.INFERENCE_SECONDS.observe(done - started)
        replies = []
        for pending, outcome in zip(live, outcomes):
            req = pending.item.request
            queue_ms = (formed - pending.item.received) * 1000
            metrics.QUEUE_SECONDS.observe(formed - pending.item.received)
            if outcome is None:
                err = RequestError(ErrorCode.INTERNAL,
                                   f"the worker failed while scoring this request's window: "
                                   f"{type(failure).__name__}: {failure}", req.request_id)
                response = err.to_response()
            else:
                response = ranked_response(
                    req, outcome, model=req.model or self.reranker.model_name,
                    engine=self.reranker.engine_name, worker=self.settings.worker_name,
                    queue_ms=queue_ms, inference_ms=inference_ms,
                    total_ms=(time.monotonic() - pending.item.received) * 1000)
                metrics.DOCUMENTS.inc(len(req.documents))
                metrics.PAIRS.inc(int(outcome.cross_encoded.sum()))
            replies.append((pending, [self._answer(req.request_id, response, req.reply_to)]))
        return replies

    # --- delivery ------------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, outbound: list[Outbound], events: list[Any], pairs: int = 0,
                       received: float | None = None) -> None:
        """Produces the answers, then acks the requests they answer (never before)."""
        try:
            delivered = [await self._produce(message) for message in outbound]
            if received is not None:
                metrics.TOTAL_SECONDS.observe(time.monotonic() - received)
            for message in delivered:
                if message.status is not None:
                    metrics.REQUESTS.labels(message.status).inc()
                if message.code is not None:
                    metrics.ERRORS.labels(message.code).inc()
            for event in events:
                await self._ack(event)
        except Exception as exc:
            # Unacked, the request will be redelivered to whoever holds its partition next.
            if self.stopping:
                log.warning("could not deliver an answer while stopping (%s): left to be redelivered", exc)
            else:
                log.critical("could not deliver an answer after %d attempts (%s); stopping so that "
                             "another replica answers it", DELIVERY_ATTEMPTS, exc)
                await self.app.crash(exc)
        finally:
            if pairs:
                await self.buffer.release(pairs)
                metrics.INFLIGHT_PAIRS.set(self.buffer.inflight_pairs)

    def _admin_client(self):
        """confluent-kafka admin client for topic look-ups; its own librdkafka log lines
        (one per second while a broker is down) are left out: aiokafka already says so."""
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            quiet = logging.getLogger("rerank.worker.librdkafka")
            quiet.setLevel(logging.CRITICAL)
            self._admin = AdminClient({**self.settings.confluent_config(), "logger": quiet})
        return self._admin

    async def _topic_exists(self, topic: str) -> bool:
        if topic in self._known_topics:
            return True
        if time.monotonic() - self._topics_listed_at > TOPIC_LIST_TTL_S:
            loop = asyncio.get_running_loop()
            try:
                admin = self._admin_client()
                metadata = await loop.run_in_executor(None, lambda: admin.list_topics(timeout=10))
                self._known_topics = set(metadata.topics)
                self._topics_listed_at = time.monotonic()
            except Exception as exc:
                log.warning("could not list topics to check a reply_to topic: %s", exc)
        return topic in self._known_topics

    async def _max_message_bytes(self, topic: str) -> int:
        """The largest record this worker can write to `topic`: the topic's max.message.bytes
        (asked of the broker, cached) and the producer's own max_request_size."""
        limit = int(self.app.conf.producer_max_request_size)
        checked_at, topic_limit = self._topic_limits.get(topic, (0.0, None))
        if time.monotonic() - checked_at > TOPIC_LIMIT_TTL_S:
            async with self._limits_lock:  # one lookup at a time, not one per answer
                checked_at, topic_limit = self._topic_limits.get(topic, (0.0, None))
                if time.monotonic() - checked_at > TOPIC_LIMIT_TTL_S:
                    topic_limit = await self._describe_max_message_bytes(topic, topic_limit)
        return min(limit, topic_limit) if topic_limit else limit

    async def _describe_max_message_bytes(self, topic: str, known: int | None) -> int | None:
        from confluent_kafka.admin import ConfigResource, ResourceType

        admin = self._admin_client()

        def describe() -> int:
            (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)],
                                                     request_timeout=10).values()
            return int(future.result(timeout=10)["max.message.bytes"].value)
        try:
            known = await asyncio.get_running_loop().run_in_executor(None, describe)
            self._topic_limits[topic] = (time.monotonic(), known)
        except Exception as exc:
            # Broker busy or down: keep what was known (or the producer's limit) and ask
            # again in a few seconds rather than for every answer.
            log.warning("could not read max.message.bytes of %s: %s", topic, exc)
            self._topic_limits[topic] = (time.monotonic() - TOPIC_LIMIT_TTL_S + 5.0, known)
        return known

    async def _fit(self, message: Outbound) -> Outbound:
        """A message the topic would refuse as too large is replaced before it is sent.

        Found by the fault tests: the broker's MESSAGE_TOO_LARGE is not retriable, and with
        the idempotent producer it also burns the batch's sequence numbers, so every later
        produce to that partition fails with OUT_OF_ORDER_SEQUENCE_NUMBER and the worker
        stops; the request, redelivered, then stops the next replica too. Instead an
        oversized answer becomes a too_large error answer, and an oversized dead letter
        keeps its headers but not its body.
        """
        limit = await self._max_message_bytes(message.topic)
        size = message.size()
        if size <= limit:
            return message
        if message.request_id is None:
            metrics.ERRORS.labels(ErrorCode.TOO_LARGE.value).inc()
            log.warning("dead letter of %d bytes exceeds %d (max.message.bytes of %s): sent without its body",
                        size, limit, message.topic)
            return Outbound(message.topic, message.key, b"", [
                *(message.headers or []), ("original-bytes", str(len(message.value)).encode())],
                status=message.status, code=message.code)
        log.warning("answer to %s is %d bytes, more than %s takes (%d): answering too_large instead",
                    message.request_id, size, message.topic, limit)
        err = RequestError(
            ErrorCode.TOO_LARGE,
            f"the answer is {size} bytes, more than topic {message.topic!r} accepts ({limit} bytes, "
            "max.message.bytes); ask for fewer results (top_n) or without return_documents",
            message.request_id)
        return Outbound(message.topic, message.key, encode(err.to_response()), request_id=message.request_id,
                        fallback=message.fallback, status="error", code=ErrorCode.TOO_LARGE.value)

    async def _produce(self, message: Outbound) -> Outbound:
        """Sends `message` (or what replaced it: its fallback, a too_large answer) and returns
        what was sent."""
        producer = self.app.producer
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            try:
                if message.fallback is not None and not await self._topic_exists(message.topic):
                    raise LookupError(f"topic {message.topic!r} does not exist")
                message = await self._fit(message)
                future = await asyncio.wait_for(
                    producer.send(message.topic, message.key, message.value, None, None, message.headers),
                    DELIVERY_TIMEOUT_S)
                await asyncio.wait_for(future, DELIVERY_TIMEOUT_S)
                return message
            except Exception as exc:
                if message.fallback is not None:
                    log.warning("could not write to reply topic %s (%s); answering on %s instead",
                                message.topic, exc, message.fallback.topic)
                    message = message.fallback
                    continue
                if attempt == DELIVERY_ATTEMPTS:
                    raise
                log.warning("produce to %s failed (attempt %d/%d): %s", message.topic, attempt,
                            DELIVERY_ATTEMPTS, exc)
                await asyncio.sleep(0.2 * 2 ** attempt)
        raise RuntimeError(f"no attempt left for the answer on {message.topic} after its reply topic failed")

    async def _ack(self, event: Any) -> None:
        if self.stream is not None:
            await self.stream.ack(event)
        else:
            event.ack()

    # --- stopping --------------------------------------------------------------------------
    async def drain(self, grace_s: float) -> None:
        """Stops taking requests, answers the ones taken for as long as `grace_s` allows
        (keeping time to commit and for faust to stop), abandons the rest unacked, and commits
        the offsets of what was answered. Never raises; never waits past its share of grace_s."""
        started = time.monotonic()
        self.stopping = True
        reserve = min(DRAIN_RESERVE_S, grace_s / 2)  # for the commit and faust's own stop
        await self.buffer.close()
        self._stop_fetching()
        queued, inflight = self.buffer.queued, self.buffer.inflight_pairs
        log.info("stopping: taking no more requests; answering the %d pairs taken (%d requests not yet "
                 "in a window) within %.0f s", inflight, queued, grace_s - reserve)
        try:
            await asyncio.wait_for(self._all_answered(), max(0.0, grace_s - reserve))
            log.info("stopping: every request taken is answered (%.1f s)", time.monotonic() - started)
        except TimeoutError:
            await self._abandon()
        try:
            if await asyncio.wait_for(self.app.consumer.commit(), reserve / 2):
                log.info("stopping: committed the offsets of the answered requests")
            else:  # faust commits every second: usually nothing is left
                log.info("stopping: no offsets left to commit (or the commit failed: see above)")
        except Exception as exc:  # TimeoutError included: the broker is away
            log.warning("stopping: could not commit (%s); requests answered since the last commit "
                        "will be answered again (at least once)", exc or type(exc).__name__)
        # faust would otherwise wait, without end, for the abandoned requests to be acked.
        self.app.conf.stream_wait_empty = False

    def _stop_fetching(self) -> None:
        """What faust does first when it stops, done now: no more records are fetched, and
        the ones buffered for the agent are dropped (unacked, so redelivered)."""
        try:
            consumer = self.app.consumer
            consumer.stop_flow()
            self.app.flow_control.suspend()
            consumer.pause_partitions(consumer.assignment())
            self.app.flow_control.clear()
        except Exception as exc:  # not started yet, or already stopped
            log.warning("stopping: could not pause fetching: %r", exc)

    async def _all_answered(self) -> None:
        if self._window_task is not None:  # it returns once the closed buffer is drained
            await asyncio.wait([self._window_task])
        while self._deliveries:
            await asyncio.wait(list(self._deliveries))

    async def _abandon(self) -> None:
        dropped = await self.buffer.drop_queued()
        scoring = self._window_task is not None and not self._window_task.done()
        undelivered = len(self._deliveries)
        if scoring:
            self._window_task.cancel()
        for task in list(self._deliveries):
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        log.warning("stopping: grace period over; abandoned %d queued requests, %s and %d answers "
                    "not yet delivered: they stay unacked and are redelivered", len(dropped),
                    "the window being scored" if scoring else "no window", undelivered)
        metrics.INFLIGHT_PAIRS.set(self.buffer.inflight_pairs)

    # --- state ---------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return {
            "worker": self.settings.worker_name,
            "stopping": self.stopping,
            "engine": self.reranker.engine_name,
            "model": self.reranker.model_name,
            "joined_group": self.joined.is_set(),
            "partitions": self.partitions_held,
            "queued_requests": self.buffer.queued,
            "inflight_pairs": self.buffer.inflight_pairs,
            "deliveries_in_flight": len(self._deliveries),
        }


def create_app(settings: WorkerSettings, reranker: Reranker) -> faust.App:
    """The Faust app of one worker: its agent, window loop, web endpoints and timers."""
    datadir = settings.data_dir / settings.worker_name
    datadir.parent.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    app = faust.App(
        settings.group_id,
        broker=[f"kafka://{s.strip()}" for s in settings.bootstrap_servers.split(",")],
        broker_credentials=settings.faust_credentials(),
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
        # Topics are created by ensure_topics() with the configured partition counts.
        topic_allow_declare=False,
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
    service = RerankService(app, settings, reranker)
    app.rerank_service = service  # for tests and introspection
    requests = app.topic(settings.request_topic, value_serializer="raw", key_serializer="raw")

    # concurrency=1: with more, faust can commit past a message still in flight (#606).
    @app.agent(requests, concurrency=1, name="rerank")
    async def rerank(stream):
        stream = stream.noack()
        async for event in stream.events():
            await service.take(stream, event)

    @app.task
    async def window_loop() -> None:
        await service.run_windows()

    @app.on_partitions_assigned.connect
    async def on_assigned(app, assigned, **kwargs) -> None:
        held = sorted(tp.partition for tp in assigned if tp.topic == settings.request_topic)
        service.partitions_held = len(held)
        service.joined.set()
        metrics.ASSIGNED_PARTITIONS.set(len(held))
        if held:
            log.info("holding partitions %s of %s", held, settings.request_topic)
        else:
            log.warning("this replica holds no partition of %s: there are more replicas than "
                        "partitions, so it idles until a rebalance gives it one", settings.request_topic)

    @app.timer(interval=settings.summary_every_s)
    async def summary() -> None:
        ok = metrics.REQUESTS.labels("ok")._value.get()
        err = metrics.REQUESTS.labels("error")._value.get()
        log.info("summary: %d ok, %d errors, %d documents, %d pairs scored, %d windows, "
                 "%d queued, %d pairs in flight, %d partitions",
                 ok, err, metrics.DOCUMENTS._value.get(), metrics.PAIRS._value.get(),
                 metrics.WINDOWS._value.get(), service.buffer.queued, service.buffer.inflight_pairs,
                 service.partitions_held)

    @app.page("/metrics")
    async def metrics_page(web, request):
        # aiohttp refuses a content_type with parameters; the header carries them
        return web.bytes(generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def liveness(web, request):
        alive = not window_task_failed(app)
        return web.json({"alive": alive, **service.health()}, status=200 if alive else 503)

    @app.page("/ready")
    async def readiness(web, request):
        ready = service.joined.is_set() and not service.stopping and not window_task_failed(app)
        return web.json({"ready": ready, **service.health()}, status=200 if ready else 503)

    return app


def window_task_failed(app: faust.App) -> bool:
    return bool(getattr(app, "_crashed", None) and app._crashed.is_set())
