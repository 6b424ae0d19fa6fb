"""Waits until a Kafka metadata request to BOOTSTRAP succeeds; exit 0 when it does.

Used by kafka.sh: a broker is ready when a client can read its metadata, not when
its process exists.
"""
import logging
import os
import sys
import time

from confluent_kafka.admin import AdminClient


def main(bootstrap: str, timeout_s: float, pid: int | None) -> int:
    # "connection refused" is expected until the listener is up: keep librdkafka quiet
    quiet = logging.getLogger("kafka-ready")
    quiet.disabled = True
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": quiet})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid is not None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                print(f"kafka: broker process {pid} exited during start-up", file=sys.stderr)
                return 1
        try:
            md = admin.list_topics(timeout=2)
            if md.brokers:
                return 0
        except Exception:  # not up yet: the listener refuses or times out
            pass
        time.sleep(0.5)
    print(f"kafka: no metadata from {bootstrap} within {timeout_s:.0f}s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    pid_arg = int(sys.argv[3]) if len(sys.argv) > 3 else None
    sys.exit(main(sys.argv[1], float(sys.argv[2]), pid_arg))
