"""Finding a Kafka cluster for the demo, the tests and the load tests.

Order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else a reachable Docker engine runs
testcontainers' Kafka; else the local Apache Kafka from ``deploy/kafka`` starts on a
free port and stops (data removed) when the context exits.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # loadgen/cluster/ -> the repository root
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"
KAFKA_IMAGE = "apache/kafka:4.1.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def docker_reachable() -> bool:
    """True when a Docker engine answers (the client alone is not enough)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def local_broker(port: int | None = None) -> Iterator[str]:
    """Starts the Maven-resolved Apache Kafka on 127.0.0.1 and yields its bootstrap address."""
    env = dict(os.environ, KAFKA_PORT=str(port or free_port()))
    up = subprocess.run(["bash", str(KAFKA_SH), "up"], env=env, capture_output=True, text=True)
    if up.returncode != 0:
        raise RuntimeError(f"local Kafka did not start:\n{up.stderr}")
    bootstrap = up.stdout.strip().splitlines()[-1]
    try:
        yield bootstrap
    finally:
        subprocess.run(["bash", str(KAFKA_SH), "down"], env=env, capture_output=True, text=True)


@contextlib.contextmanager
def kafka_cluster() -> Iterator[tuple[str, str]]:
    """Yields (bootstrap servers, where they came from) for the first cluster available."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured, "KAFKA_BOOTSTRAP_SERVERS"
        return
    if docker_reachable():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
            yield container.get_bootstrap_server(), f"testcontainers ({KAFKA_IMAGE})"
        return
    with local_broker() as bootstrap:
        yield bootstrap, "local Apache Kafka (deploy/kafka)"


@dataclass
class SecureBroker:
    """A local broker started with KAFKA_SECURITY=sasl_ssl: one SASL_SSL listener
    (SCRAM-SHA-512), a CA made for this run, ACLs enforced, ``admin`` the super user."""

    bootstrap: str
    ca_file: Path
    admin_username: str
    admin_password: str
    state_dir: Path

    def client_config(self, username: str | None = None, password: str | None = None) -> dict[str, str]:
        """librdkafka settings for a user (default: admin)."""
        return {"bootstrap.servers": self.bootstrap, "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": username or self.admin_username,
                "sasl.password": password if username else self.admin_password,
                "ssl.ca.location": str(self.ca_file)}

    def worker_env(self, username: str, password_file: Path | None = None,
                   password: str | None = None) -> dict[str, str]:
        """The worker's KAFKA_* variables for a user (password from a file or the environment)."""
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
               "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": username,
               "KAFKA_SSL_CA_FILE": str(self.ca_file)}
        if password_file is not None:
            env["KAFKA_SASL_PASSWORD_FILE"] = str(password_file)
        if password is not None:
            env["KAFKA_SASL_PASSWORD"] = password
        return env

    def admin(self):
        from confluent_kafka.admin import AdminClient

        return AdminClient(self.client_config())

    def add_user(self, username: str, password: str, timeout_s: float = 30.0) -> None:
        """Creates (or updates) a SCRAM-SHA-512 user, and waits until the broker knows it."""
        from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

        admin = self.admin()
        upsert = UserScramCredentialUpsertion(
            username, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), password.encode())
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:  # the credential reaches the broker through the metadata log
            try:
                described = admin.describe_user_scram_credentials([username])[username].result(timeout=timeout_s)
                if described.scram_credential_infos:
                    return
            except Exception:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"SCRAM user {username} not visible after {timeout_s}s")
            time.sleep(0.2)


@contextlib.contextmanager
def secure_local_broker(port: int | None = None) -> Iterator[SecureBroker]:
    """Like local_broker, with ``KAFKA_SECURITY=sasl_ssl`` (see deploy/kafka/kafka.sh): yields
    the bootstrap address, the CA file clients must trust and the admin's credentials."""
    port = port or free_port()
    state = REPO / ".kafka" / f"sasl_ssl-{port}"
    env = dict(os.environ, KAFKA_PORT=str(port), KAFKA_SECURITY="sasl_ssl", KAFKA_STATE_DIR=str(state))
    env.pop("KAFKA_ADMIN_PASSWORD", None)  # a random one per run
    up = subprocess.run(["bash", str(KAFKA_SH), "up"], env=env, capture_output=True, text=True)
    if up.returncode != 0:
        subprocess.run(["bash", str(KAFKA_SH), "down"], env=env, capture_output=True, text=True)
        raise RuntimeError(f"local Kafka (sasl_ssl) did not start:\n{up.stderr}")
    try:
        yield SecureBroker(bootstrap=up.stdout.strip().splitlines()[-1], ca_file=state / "tls" / "ca.pem",
                           admin_username="admin", admin_password=(state / "admin.password").read_text().strip(),
                           state_dir=state)
    finally:
        subprocess.run(["bash", str(KAFKA_SH), "down"], env=env, capture_output=True, text=True)
