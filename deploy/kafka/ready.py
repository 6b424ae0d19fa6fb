"""Waits until a Kafka metadata request to BOOTSTRAP succeeds; exit 0 when it does.

Used by kafka.sh: a broker is ready when a client can read its metadata, not when
its process exists. ``ready.py BOOTSTRAP TIMEOUT_S [PID [BROKERS]]``: with BROKERS, ready
also means the metadata counts that many brokers (every node of a cluster registered).
"""
import logging
import os
import sys
import time

from confluent_kafka.admin import AdminClient


def client_properties() -> dict[str, str]:
    """librdkafka settings from KAFKA_CLIENT_PROPERTIES (key=value lines), e.g. the admin's
    SASL_SSL ones that kafka.sh writes for a secure broker; none for a plaintext one."""
    path = os.environ.get("KAFKA_CLIENT_PROPERTIES")
    if not path:
        return {}
    props = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                props[key.strip()] = value.strip()
    return props


def main(bootstrap: str, timeout_s: float, pid: int | None, brokers: int = 1) -> int:
    # "connection refused" is expected until the listener is up: keep librdkafka quiet
    quiet = logging.getLogger("kafka-ready")
    quiet.disabled = True
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": quiet, **client_properties()})
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        if pid is not None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                print(f"kafka: broker process {pid} exited during start-up", file=sys.stderr)
                return 1
        try:
            seen = len(admin.list_topics(timeout=2).brokers)
            if seen >= brokers:
                return 0
        except Exception:  # not up yet: the listener refuses or times out
            pass
        time.sleep(0.5)
    if seen:
        print(f"kafka: {bootstrap} counts {seen} of {brokers} brokers after {timeout_s:.0f}s", file=sys.stderr)
    else:
        print(f"kafka: no metadata from {bootstrap} within {timeout_s:.0f}s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    pid_arg = int(sys.argv[3]) if len(sys.argv) > 3 else None
    brokers_arg = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    sys.exit(main(sys.argv[1], float(sys.argv[2]), pid_arg, brokers_arg))
