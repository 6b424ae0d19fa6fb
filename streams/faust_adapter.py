"""The one place that reaches into faust's and mode's private parts, for what they offer no
public hook for. Written against faust-streaming 0.15.3 and mode-streaming 0.7.1 (pinned);
``tests/streams/test_faust_adapter.py`` fails if either changes under it.

1. **The idempotent producer.** faust turns it on only inside its own transactions
   (``processing_guarantee="exactly_once"``: ``Producer._settings_extra``), and that mode is
   broken (faust #517, #323, #177: duplicates and crashes). We run at-least-once but still
   want retries without duplicates in the log, so ``use_idempotent_producer`` makes
   ``_settings_extra`` return acks=all with idempotence for every producer.
2. **A hook between a stop signal and faust's own stop.** mode's ``Worker`` turns SIGTERM and
   SIGINT into ``_schedule_shutdown`` -> ``_stop_on_signal`` -> ``stop()``; the worker must
   drain first (answer what it took, commit) and bound the whole stop. ``DrainingWorker``
   overrides those two methods and offers ``on_stop_signal``, ``on_repeated_signal`` and
   ``before_stop`` instead.

3. **Committing before partitions are given up.** faust's ``Consumer.on_partitions_revoked``
   forgets the acked offsets of the revoked partitions first, and commits nothing, so every
   rebalance made even a surviving worker answer again what it had answered since its last
   commit (about a second's worth), and what it finished while the rebalance waited for it.
   ``_commit_then_revoke`` makes it stop fetching, wait for the requests taken to be settled
   (as faust's own revoke then would) and commit, before faust forgets. ``follow_rebalances``
   installs it, and also tells the app's ``RebalanceListener`` (exactly-once delivery) of each
   revocation and assignment from inside faust's callbacks, where the group waits for them.

Everything else the worker uses of faust is public: ``App.crashed``, ``App.crash``,
``stream.ack``, ``consumer.commit``, ``consumer.stop_flow``, ``app.flow_control``, ``conf``.
"""
from __future__ import annotations

import logging
import signal
from collections.abc import Mapping
from typing import Any, Protocol

import faust
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger("rerank.worker")

#: The versions this module was written against (pyproject.toml pins them).
FAUST_VERSION = "0.15.3"
MODE_VERSION = "0.7.1"

IDEMPOTENT_PRODUCER = {"acks": "all", "enable_idempotence": True}


def _idempotent_settings(self: Any) -> Mapping[str, Any]:
    return IDEMPOTENT_PRODUCER


def use_idempotent_producer() -> None:
    """Every faust producer made from now on is idempotent with acks=all."""
    faust_aiokafka.Producer._settings_extra = _idempotent_settings


class RebalanceListener(Protocol):
    """Told of rebalances inside faust's own callbacks, so that the group waits for it: what a
    worker must finish before its partitions can go to another (``revoking``), and which
    partitions it holds once they are assigned (``assigned``). Set as ``app.rebalance_listener``."""

    async def revoking(self) -> None: ...

    def assigned(self, partitions: set) -> None: ...


_FORGETFUL_REVOKE = faust_consumer.Consumer.on_partitions_revoked
_PLAIN_ASSIGN = faust_consumer.Consumer.on_partitions_assigned


async def _commit_then_revoke(self: Any, revoked: set) -> None:
    if self.assignment() and not self.app.should_stop:
        try:
            stop_fetching(self.app)
            if self.app.conf.stream_wait_empty:
                await self.wait_empty()
            await self.commit()
        except Exception as exc:  # the commit is an optimisation: at least once holds without it
            log.warning("rebalance: could not commit before giving up partitions (%r); what was answered "
                        "since the last commit will be answered again", exc)
    listener: RebalanceListener | None = getattr(self.app, "rebalance_listener", None)
    if listener is not None:
        await listener.revoking()
    await _FORGETFUL_REVOKE(self, revoked)


async def _tell_then_assign(self: Any, assigned: set, generation_id: int = 0) -> None:
    listener: RebalanceListener | None = getattr(self.app, "rebalance_listener", None)
    if listener is not None:
        listener.assigned(set(assigned))
    await _PLAIN_ASSIGN(self, assigned, generation_id)


def follow_rebalances() -> None:
    """From now on faust's consumers commit what is answered before a rebalance takes partitions,
    and tell the app's ``rebalance_listener`` (if it has one) of revocations and assignments."""
    faust_consumer.Consumer.on_partitions_revoked = _commit_then_revoke
    faust_consumer.Consumer.on_partitions_assigned = _tell_then_assign


def stop_fetching(app: faust.App) -> None:
    """What faust does first when it stops, done now: no more records are fetched, and the
    ones buffered for the agent are dropped (unacked, so redelivered)."""
    consumer = app.consumer
    consumer.stop_flow()
    app.flow_control.suspend()
    consumer.pause_partitions(consumer.assignment())
    app.flow_control.clear()


class DrainingWorker(faust.Worker):
    """faust's worker with public hooks around a stop signal (see the module's docstring)."""

    def on_stop_signal(self, signum: signal.Signals) -> None:
        """The first SIGTERM/SIGINT, before anything stops."""

    def on_repeated_signal(self, signum: signal.Signals) -> None:
        """Another signal while stopping (faust ignores it)."""

    async def before_stop(self, signum: signal.Signals) -> None:
        """Awaited after the first signal, before faust's own stop begins."""

    def _schedule_shutdown(self, signum: signal.Signals) -> None:
        if self._signal_stop_time:
            self.on_repeated_signal(signum)
            return
        self.on_stop_signal(signum)
        super()._schedule_shutdown(signum)

    async def _stop_on_signal(self, signum: signal.Signals) -> None:
        await self.before_stop(signum)
        await super()._stop_on_signal(signum)
