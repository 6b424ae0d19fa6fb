"""Stand-ins for what the worker's parts talk to, for tests without a broker: faust's producer,
confluent-kafka's admin client, a clock, Kafka events, faust's stream and app, an engine.

The engine stand-in plans by the real policy (engines.policy) and builds real outcomes
(engines.outcome); only its scores are made up (a document's length), so answers can be
checked by hand.
"""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np

from engines import EngineConfig, JobPlan, RerankJob, RerankOutcome
from engines.families import SIGMOID
from engines.outcome import cross_encoder_outcome
from engines.policy import plan_job


class FakeProducer:
    """Records what was sent; fails the first ``failures`` sends, or every send to ``refusing``."""

    def __init__(self, failures: int = 0, refusing: frozenset[str] = frozenset()) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, list | None]] = []
        self.failures = failures
        self.refusing = refusing
        self.events: list[str] = []

    async def send(self, topic, key, value, partition, timestamp, headers):
        future = asyncio.get_running_loop().create_future()
        if self.failures > 0 or topic in self.refusing:
            self.failures -= 1
            future.set_exception(RuntimeError(f"broker refused {topic}"))
        else:
            self.sent.append((topic, key, value, headers))
            self.events.append(f"sent {topic} {key!r}")
            future.set_result(None)
        return future


class ConfigFuture:
    """What confluent-kafka's describe_configs gives per resource: ``result()`` its configs."""

    def __init__(self, admin: FakeAdmin, topic: str) -> None:
        self.admin, self.topic = admin, topic

    def result(self, timeout):
        if self.admin.fail:
            raise RuntimeError("broker away")
        return {"max.message.bytes": SimpleNamespace(value=str(self.admin.limits.get(self.topic, 1_000_000)))}


class FakeAdmin:
    """confluent-kafka's AdminClient as TopicMetadata uses it: topics that exist, their limits."""

    def __init__(self, topics: set[str], limits: dict[str, int] | None = None, fail: bool = False) -> None:
        self.topics, self.limits, self.fail = topics, limits or {}, fail
        self.listed = self.described = 0

    def list_topics(self, timeout):
        self.listed += 1
        if self.fail:
            raise RuntimeError("broker away")
        return SimpleNamespace(topics={t: None for t in self.topics})

    def describe_configs(self, resources, request_timeout):
        self.described += 1
        (resource,) = resources
        return {resource: ConfigFuture(self, resource.name)}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeEvent:
    """A Kafka event as the agent hands it over: a value, a key, its partition and offset (the
    next offset of ``partition`` unless given), and acks recorded in ``log``."""

    _next_offset: dict[int, int] = {}

    def __init__(self, value: bytes | None, key: bytes | None = None, log: list[str] | None = None,
                 partition: int = 0, offset: int | None = None) -> None:
        self.value, self.key, self.log = value, key, log if log is not None else []
        if offset is None:
            offset = FakeEvent._next_offset.get(partition, 0)
        FakeEvent._next_offset[partition] = offset + 1
        self.message = SimpleNamespace(tp=("req", partition), offset=offset)

    def ack(self) -> None:
        self.log.append(f"ack {self.key!r}")


class FakeStream:
    """faust's stream as the worker uses it: ``ack(event)``."""

    async def ack(self, event: FakeEvent) -> None:
        event.ack()


class FakeApp:
    """What the worker's parts use of faust's app: its producer, conf, consumer, flow control
    and crash; calls are recorded in ``calls``."""

    def __init__(self, producer: FakeProducer, commit_s: float = 0.0) -> None:
        self.producer = producer
        self.calls: list[str] = []
        self.conf = SimpleNamespace(producer_max_request_size=1_000_000, stream_wait_empty=True)
        self.crashed = False
        self.commit_s = commit_s
        app = self

        class Consumer:
            def stop_flow(self):
                app.calls.append("stop_flow")

            def assignment(self):
                return {"tp-0"}

            def pause_partitions(self, partitions):
                app.calls.append(f"pause {sorted(partitions)}")

            async def commit(self):
                await asyncio.sleep(app.commit_s)
                app.calls.append("commit")
                return True

        class FlowControl:
            def suspend(self):
                app.calls.append("suspend")

            def clear(self):
                app.calls.append("clear")

        self.consumer, self.flow_control = Consumer(), FlowControl()

    async def crash(self, exc: BaseException) -> None:
        self.crashed = True
        self.calls.append(f"crash {exc}")


class LengthReranker:
    """An engine whose cross-encoder score of a document is its length in characters and whose
    first stage scores by the same; plans by the real policy. ``fail`` makes it raise,
    ``block`` (a threading.Event) makes it wait until set."""

    model_name = "fake-model"
    engine_name = "fake-fp32"
    cross_encoder = None  # no pairs to schedule: the scheduler scores each job whole
    activation = SIGMOID

    def __init__(self, config: EngineConfig = EngineConfig(prefilter_threshold=5, prefilter_keep=3),
                 fail: bool = False, block=None) -> None:
        self.config, self.fail, self.block = config, fail, block
        self.calls: list[list[str]] = []  # the queries of each call, in order

    def plan(self, job: RerankJob) -> JobPlan:
        # It reads an instruction as a decoder reranker does, so that intake's handing one over shows.
        return plan_job(job, self.config, takes_instruction=True)

    def rerank(self, jobs: list[RerankJob], plans: list[JobPlan] | None = None) -> list[RerankOutcome]:
        if self.block is not None:
            self.block.wait()
        self.calls.append([job.query for job in jobs])
        if self.fail:
            raise RuntimeError("the engine broke")
        plans = plans or [self.plan(job) for job in jobs]
        out = []
        for job, plan in zip(jobs, plans):
            scores = np.array([len(d) for d in job.documents], dtype=np.float32)
            kept = np.argsort(-scores, kind="stable")[: plan.keep] if plan.prefilter else np.arange(plan.documents)
            cross = np.zeros(plan.documents, dtype=bool)
            cross[kept] = True
            out.append(cross_encoder_outcome(plan, scores, cross, "logit", SIGMOID, job.raw_scores))
        return out
