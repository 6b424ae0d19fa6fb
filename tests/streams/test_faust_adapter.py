"""streams.faust_adapter reaches into faust's and mode's private parts: these tests fail when
an upgrade moves them, before a worker would silently lose its idempotent producer or its
bounded stop."""
from __future__ import annotations

import asyncio
import inspect
import signal
from importlib.metadata import version

import mode
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams import faust_adapter
from streams.faust_adapter import IDEMPOTENT_PRODUCER, DrainingWorker, use_idempotent_producer


def test_written_against_the_installed_faust_and_mode():
    assert version("faust-streaming") == faust_adapter.FAUST_VERSION
    assert version("mode-streaming") == faust_adapter.MODE_VERSION


def test_faust_producers_read_their_extra_settings_where_the_adapter_replaces_them():
    source = inspect.getsource(faust_aiokafka.Producer)
    assert "**self._settings_extra()" in source, "faust no longer passes _settings_extra to aiokafka"
    use_idempotent_producer()
    assert faust_aiokafka.Producer._settings_extra(object()) == IDEMPOTENT_PRODUCER


def test_mode_turns_a_signal_into_the_two_methods_the_adapter_overrides():
    worker = mode.Worker
    assert "self._schedule_shutdown(signal.SIGTERM)" in inspect.getsource(worker._on_sigterm)
    schedule = inspect.getsource(worker._schedule_shutdown)
    assert "self._signal_stop_time" in schedule and "self._stop_on_signal(" in schedule
    assert "await self.stop()" in inspect.getsource(worker._stop_on_signal)


def test_the_hooks_run_in_order_and_a_repeated_signal_does_not_stop_twice():
    calls = []

    class Probe(DrainingWorker):
        def __init__(self):  # no app: only the signal path is exercised
            self._signal_stop_time = None
            self._starting_fut = None

        def on_stop_signal(self, signum):
            calls.append(("first", signum))

        def on_repeated_signal(self, signum):
            calls.append(("again", signum))

        async def before_stop(self, signum):
            calls.append(("before_stop", signum))

        async def stop(self):
            calls.append(("stop", None))

        @property
        def loop(self):
            return asyncio.get_running_loop()

        def log_info(self, *args):
            pass

    async def scenario():
        probe = Probe()
        probe.log = type("L", (), {"info": lambda *a, **k: None})()
        probe._schedule_shutdown(signal.SIGTERM)
        probe._schedule_shutdown(signal.SIGINT)
        await probe._signal_stop_future
    asyncio.run(scenario())
    assert calls == [("first", signal.SIGTERM), ("again", signal.SIGINT), ("before_stop", signal.SIGTERM),
                     ("stop", None)]


def test_faust_forgets_the_acked_offsets_of_revoked_partitions_where_the_adapter_commits_first():
    """The wrapper must run before faust drops ``_acked`` (else it commits nothing), and faust's
    own revoke must still commit nothing of its own (else the wrapper is no longer needed)."""
    from faust.transport import consumer as faust_consumer

    original = inspect.getsource(faust_adapter._FORGETFUL_REVOKE)
    assert "self._acked.pop(tp, None)" in original and ".commit(" not in original
    assert list(inspect.signature(faust_adapter._PLAIN_ASSIGN).parameters) == ["self", "assigned", "generation_id"]
    faust_adapter.follow_rebalances()
    assert faust_consumer.Consumer.on_partitions_revoked is faust_adapter._commit_then_revoke
    assert faust_consumer.Consumer.on_partitions_assigned is faust_adapter._tell_then_assign


def test_the_rebalance_listener_hears_of_an_assignment_before_faust_acts_on_it():
    calls = []

    class Listener:
        def assigned(self, partitions):
            calls.append(("assigned", partitions))

    class Consumer:
        app = type("App", (), {"rebalance_listener": Listener()})()

    async def plain(self, assigned, generation_id=0):
        calls.append(("faust", generation_id))
    original, faust_adapter._PLAIN_ASSIGN = faust_adapter._PLAIN_ASSIGN, plain
    try:
        asyncio.run(faust_adapter._tell_then_assign(Consumer(), {"tp1"}, 7))
    finally:
        faust_adapter._PLAIN_ASSIGN = original
    assert calls == [("assigned", {"tp1"}), ("faust", 7)]


def test_the_revoke_wrapper_stops_fetching_waits_commits_then_runs_faust_s_own():
    calls = []

    class App:
        should_stop = False
        conf = type("Conf", (), {"stream_wait_empty": True})()
        flow_control = type("Flow", (), {"suspend": lambda self: calls.append("suspend"),
                                         "clear": lambda self: None})()

    class Consumer:
        app = App()

        def assignment(self):
            return {"tp0"}

        def stop_flow(self):
            calls.append("stop_flow")

        def pause_partitions(self, tps):
            calls.append("pause")

        async def wait_empty(self):
            calls.append("wait_empty")

        async def commit(self):
            calls.append("commit")

    original = faust_adapter._FORGETFUL_REVOKE

    async def forgetful(self, revoked):
        calls.append("faust")
    faust_adapter._FORGETFUL_REVOKE = forgetful
    try:
        App.consumer = Consumer()
        asyncio.run(faust_adapter._commit_then_revoke(App.consumer, {"tp0"}))
    finally:
        faust_adapter._FORGETFUL_REVOKE = original
    assert calls == ["stop_flow", "suspend", "pause", "wait_empty", "commit", "faust"]
