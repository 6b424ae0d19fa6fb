"""``make compose-test``: build the images, run docker-compose.yaml as it is, and check what it serves.

With podman (its Docker-compatible API) and Docker Compose v2 (deploy/compose/podman.sh installs
and starts both), as a user's ``docker compose`` would, and timed step by step:

1. **images**: every image the compose file builds (deploy/docker/Dockerfile's ``worker`` and
   ``prepare`` targets, Dockerfile.loadgen), built by podman as the file describes them, on the
   pinned python:3.11-slim-bookworm where it can be pulled, else on a base image made with
   debootstrap; Kafka is the pinned apache/kafka where it can be pulled, else a stand-in built from
   deploy/kafka's Maven Central jars (named by ``KAFKA_IMAGE``). Their sizes, with podman's figures.
2. **model**: RERANK_MODEL's hub id cannot be fetched here; the untrained-head test cross-encoder
   (engines.testmodel) is built into the fresh model-cache volume instead, in the prepare image.
3. **cold**: ``up -d`` on that volume: prepare exports, quantizes and checks; time until both
   workers are healthy.
4. **requests** from the host to localhost:29092, every answer checked (the contract's own
   validation, one answer per request, the same ranking for the same request whoever answers).
5. **scale** to 3 workers (all healthy, all answering) and back to 2, requests after each.
6. **warm**: ``down`` keeping the volumes, ``up -d``: time until healthy again.
7. **loadgen**: the compose file's ``loadgen`` service and command (60 s of the document mix), at
   --loadgen-rate requests/s (2: the file's 5 overload two workers that share our 2 cores with the
   broker and the load generator), unless --no-loadgen; none may be lost.
8. ``down -v``: nothing left; no anonymous volume was ever made.

Podman has no systemd here to run healthchecks on their timers: a thread runs ``podman healthcheck
run`` on each of the project's containers every ``HEALTH_EVERY_S`` seconds instead (more often than
the file's 10 s interval, so a worker is seen healthy a little sooner than Docker would report it).
Podman 4.3's API names a container's network by its name where Compose 2.40 compares network IDs,
so every ``up`` would recreate every running container (the broker too): scaling passes
``--no-recreate`` and the loadgen ``run`` ``--no-deps`` (its workers are up and healthy by then),
which is what Docker does unasked when nothing changed.
The report goes to out/compose-test.json and to the terminal.
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "kafka-rerank-compose-test"
PODMAN_SH = ROOT / "deploy" / "compose" / "podman.sh"
TEST_MODEL = "/cache/models/test-cross-encoder-minilm-l6"
HEALTH_EVERY_S = 2.0
BOOTSTRAP = "localhost:29092"


def pinned(path: Path, pattern: str) -> str:
    """The pinned image reference a file names (single source: the Dockerfile's ARG, the compose default)."""
    found = re.search(pattern, path.read_text(encoding="utf-8"))
    assert found, f"{path}: no pinned image matches {pattern}"
    return found.group(1)


PYTHON_PINNED = pinned(ROOT / "deploy" / "docker" / "Dockerfile", r"ARG PYTHON_BASE_IMAGE=(\S+)")
KAFKA_PINNED = pinned(ROOT / "docker-compose.yaml", r"\$\{KAFKA_IMAGE:-(\S+?)\}")


class Stack:
    """podman and docker-compose on podman's API socket, for one compose project."""

    def __init__(self, log: Path):
        self.env = {**os.environ, **dict(line.split("=", 1) for line in
                                         self._run(["bash", str(PODMAN_SH), "env"]).splitlines())}
        self.env.pop("COMPOSE_PROJECT_NAME", None)
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")

    @staticmethod
    def _run(cmd: list[str], env=None, timeout: float = 3600, check: bool = True, log: Path | None = None) -> str:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if log is not None:
            with log.open("a") as f:
                f.write(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}\n")
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:6])}... exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        return done.stdout

    def podman(self, *args: str, check: bool = True, timeout: float = 3600, quiet: bool = False) -> str:
        return self._run(["podman", *args], self.env, timeout, check, None if quiet else self.log)

    def compose(self, *args: str, check: bool = True, timeout: float = 1800, quiet: bool = False) -> str:
        return self._run([self.env["COMPOSE"], "-p", PROJECT, *args], self.env, timeout, check,
                         None if quiet else self.log)

    def standin(self, which: str) -> str:
        self._run(["bash", str(PODMAN_SH), f"{which}-standin"], self.env, log=self.log)
        return self.env[f"{which.upper()}_STANDIN"]

    def image_size(self, ref: str) -> int:
        return int(self.podman("image", "inspect", "--format", "{{.Size}}", ref).strip())

    def ps(self, service: str | None = None) -> list[dict]:
        out = self.compose("ps", "--all", "--format", "json", *([service] if service else []), quiet=True)
        rows = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
        if len(rows) == 1 and isinstance(rows[0], list):
            rows = rows[0]
        return rows

    def versions(self) -> dict:
        return {"podman": self.podman("version", "--format", "{{.Client.Version}}").strip(),
                "buildah": self.podman("info", "--format", "{{.Host.BuildahVersion}}").strip(),
                "oci_runtime": self.podman("info", "--format", "{{.Host.OCIRuntime.Name}}").strip(),
                "compose": self._run([self.env["COMPOSE"], "version", "--short"], self.env).strip()}


class HealthChecks(threading.Thread):
    """Runs the project's containers' healthchecks, as the engine's timers would."""

    def __init__(self, stack: Stack):
        super().__init__(daemon=True)
        self.stack = stack
        self.stopped = threading.Event()
        self.checked: dict[str, bool] = {}  # container id -> has a healthcheck

    def run(self) -> None:
        while not self.stopped.wait(HEALTH_EVERY_S):
            ids = self.stack.podman("ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}",
                                    check=False, quiet=True).split()
            for cid in ids:
                if cid not in self.checked:
                    test = self.stack.podman("inspect", "--format", "{{json .Config.Healthcheck}}", cid, check=False,
                                             quiet=True)
                    self.checked[cid] = '"Test"' in test
                if self.checked[cid]:
                    subprocess.run(["podman", "healthcheck", "run", cid], env=self.stack.env, capture_output=True,
                                   timeout=60)

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive():
            self.join(timeout=30)


def wait_healthy(stack: Stack, workers: int, timeout_s: float) -> float:
    """Seconds until exactly ``workers`` worker containers run and are healthy."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        rows = stack.ps("worker")
        running = [r for r in rows if r.get("State") == "running"]
        if len(running) == workers == len(rows) and all(r.get("Health") == "healthy" for r in running):
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"{workers} healthy workers not reached within {timeout_s:.0f} s: "
                       f"{[(r.get('Name'), r.get('State'), r.get('Health')) for r in stack.ps()]}\n"
                       + stack.compose("logs", "--tail", "30", check=False)[-6000:])


def _seconds_since(stamp: str, t0: float) -> float | None:
    """An RFC 3339 time from podman (nanoseconds, any offset) as seconds after the epoch time ``t0``."""
    from datetime import datetime

    found = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", stamp or "")
    if not found or stamp.startswith("0001-"):
        return None
    whole, fraction, zone = found.groups()
    parsed = datetime.fromisoformat(f"{whole}.{(fraction or '0')[:6].ljust(6, '0')}{'+00:00' if zone == 'Z' else zone}")
    return round(parsed.timestamp() - t0, 1)


def timeline(stack: Stack, t0: float) -> dict:
    """When each container of an ``up`` started and (the one-shot ones) finished, in seconds after it."""
    out = {}
    for row in stack.ps():
        state = json.loads(stack.podman("inspect", "--format", "{{json .State}}", row["ID"], quiet=True))
        started, finished = _seconds_since(state.get("StartedAt", ""), t0), _seconds_since(state.get("FinishedAt", ""), t0)
        out[row["Service"]] = out.get(row["Service"]) or {"started": started}
        if state.get("Status") == "exited" and finished is not None:
            out[row["Service"]]["finished"] = finished
    return out


def send_round(label: str, n: int, seed: int) -> dict:
    """``n`` requests (and a repeat of every fifth under a new id) from the host; every answer checked."""
    from engines.corpus import load_passages
    from loadgen.client import RerankClient
    from schemas import RerankResponse

    rng = random.Random(seed)
    passages = load_passages()
    requests = []
    for k in range(n):
        docs = rng.sample(passages, rng.randint(4, 15))
        requests.append({"request_id": f"{label}-{k}-{uuid.uuid4().hex[:8]}", "query": rng.choice(passages)[:120],
                         "documents": docs, "top_n": 3})
    repeats = {f"{r['request_id']}-again": r["request_id"] for r in requests[::5]}
    by_id = {r["request_id"]: r for r in requests}
    requests += [{**by_id[original], "request_id": again} for again, original in repeats.items()]
    started = time.monotonic()
    with RerankClient(BOOTSTRAP) as client:
        for request in requests:
            client.send(request)
        client.flush()
        answered_all = client.wait([r["request_id"] for r in requests], 180)
        answers = {r["request_id"]: client.answers(r["request_id"]) for r in requests}
    elapsed = time.monotonic() - started
    problems, workers, orders = [], Counter(), {}
    for request in requests:
        rid, got = request["request_id"], answers[request["request_id"]]
        if not got:
            problems.append(f"{rid}: no answer")
            continue
        first = got[0].response
        if first.get("status") != "ok":
            problems.append(f"{rid}: {first.get('error')}")
            continue
        response = RerankResponse.model_validate(first)
        if response.request_id != rid or len(response.results) != min(3, len(request["documents"])):
            problems.append(f"{rid}: {len(response.results)} results for request {response.request_id}")
        if response.meta.documents != len(request["documents"]):
            problems.append(f"{rid}: meta.documents {response.meta.documents}")
        orders[rid] = [r.index for r in response.results]
        workers[response.meta.worker] += 1
        if any([a.response.get("results") and [r["index"] for r in a.response["results"]] != orders[rid]
                for a in got[1:]]):
            problems.append(f"{rid}: a duplicate answer ranks differently")
    for again, original in repeats.items():
        if again in orders and original in orders and orders[again] != orders[original]:
            problems.append(f"{again}: ranked {orders[again]}, the same request {orders[original]}")
    return {"sent": len(requests), "answered": sum(1 for a in answers.values() if a),
            "duplicates": sum(max(0, len(a) - 1) for a in answers.values()), "all_in_time": answered_all,
            "seconds": round(elapsed, 2), "workers": dict(workers), "problems": problems[:20],
            "engine": next((a[0].response.get("engine") for a in answers.values() if a), None)}


def up_to_healthy(stack: Stack) -> dict:
    """``up -d``, then the seconds until both workers are healthy, and when each container ran."""
    t0, started = time.time(), time.monotonic()
    stack.compose("up", "-d")
    seconds = time.monotonic() - started + wait_healthy(stack, 2, 900)
    return {"up_to_healthy_s": round(seconds, 1), "timeline_s": timeline(stack, t0)}


def volumes(stack: Stack) -> set[str]:
    return set(stack.podman("volume", "ls", "--format", "{{.Name}}").split())


def build_images(stack: Stack, python_base: str, report: dict) -> None:
    """Each image the compose file builds, with podman, as the file describes it."""
    config = json.loads(stack.compose("--profile", "*", "config", "--format", "json"))
    built = {}
    for name, service in config["services"].items():
        build = service.get("build")
        if not build or service["image"] in built:
            continue
        args = ["build", "--format", "docker", "-f", str(Path(build["context"]) / build["dockerfile"]),
                "--build-arg", f"PYTHON_BASE_IMAGE={python_base}", "-t", service["image"]]
        if build.get("target"):
            args += ["--target", build["target"]]
        started = time.monotonic()
        stack.podman(*args, build["context"])
        built[service["image"]] = {"service": name, "target": build.get("target"), "dockerfile": build["dockerfile"],
                                   "build_s": round(time.monotonic() - started, 1)}
        print(f"  built {service['image']} ({build['dockerfile']}, target {build.get('target') or 'last'}) "
              f"in {built[service['image']]['build_s']} s", flush=True)
    base = stack.image_size(python_base)
    for image, facts in built.items():
        size = stack.image_size(image)
        facts.update(bytes=size, above_base_bytes=size - base)
    report["images"] = built
    report["base_image_bytes"] = base


def baseline(stack: Stack, rev: str, python_base: str, report: dict) -> None:
    """The worker image of ``rev`` (its deploy/docker/Dockerfile, FROM python:3.11-slim), built the same way."""
    context = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip())
    try:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(context)], input=archive, check=True)
        tag = f"localhost/kafka-rerank-baseline:{rev}"
        # That Dockerfile names python:3.11-slim: the same base stands in for it for this one build.
        stack.podman("tag", python_base, "docker.io/library/python:3.11-slim")
        started = time.monotonic()
        stack.podman("build", "--format", "docker", "-f", str(context / "deploy/docker/Dockerfile"), "-t", tag, str(context))
        size = stack.image_size(tag)
        report["baseline"] = {"rev": rev, "bytes": size, "above_base_bytes": size - stack.image_size(python_base),
                              "build_s": round(time.monotonic() - started, 1)}
        stack.podman("rmi", tag, "docker.io/library/python:3.11-slim", check=False)
    finally:
        subprocess.run(["rm", "-rf", str(context)], check=False)


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def print_report(report: dict) -> None:
    print("\ncompose-test:", "PASSED" if report.get("passed") else "FAILED")
    print("  ", json.dumps(report.get("versions", {})), report.get("bases", ""))
    for image, facts in report.get("images", {}).items():
        print(f"  {image:32} {gb(facts['bytes'])} ({gb(facts['above_base_bytes'])} above the base)")
    if "baseline" in report:
        b = report["baseline"]
        print(f"  {'baseline ' + b['rev']:32} {gb(b['bytes'])} ({gb(b['above_base_bytes'])} above the base)")
    for step, facts in report.get("steps", {}).items():
        print(f"  {step:12} {json.dumps(facts)}")
    if report.get("error"):
        print("  error:", report["error"])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--requests", "n", default=40, show_default=True, help="Requests per round (plus a repeat of every fifth).")
@click.option("--loadgen/--no-loadgen", default=True, show_default=True, help="Run the compose file's loadgen profile too.")
@click.option("--loadgen-rate", default=2.0, show_default=True,
              help="Its requests/s: the file's 5 of the mix overload 2 workers sharing our 2 cores.")
@click.option("--baseline", "baseline_rev", help="Also build and measure this git revision's worker image.")
@click.option("--json", "json_path", default="out/compose-test.json", show_default=True, type=click.Path(dir_okay=False))
def main(n: int, loadgen: bool, loadgen_rate: float, baseline_rev: str | None, json_path: str) -> None:
    stack = Stack(ROOT / ".compose" / "compose-test.log")
    report: dict = {"versions": stack.versions(), "steps": {}, "passed": False}
    steps = report["steps"]
    health = HealthChecks(stack)
    try:
        # 1. images
        bases = {}
        for which, ref in (("python", PYTHON_PINNED), ("kafka", KAFKA_PINNED)):
            pulled = subprocess.run(["podman", "pull", "-q", ref], env=stack.env, capture_output=True, timeout=900)
            bases[which] = ref if pulled.returncode == 0 else stack.standin(which)
        report["bases"] = {"python": bases["python"], "kafka": bases["kafka"],
                           "stand-ins": [k for k in bases if bases[k].startswith("localhost/")]}
        print(f"compose-test: base {bases['python']}, Kafka {bases['kafka']}", flush=True)
        started = time.monotonic()
        build_images(stack, bases["python"], report)
        steps["images"] = {"seconds": round(time.monotonic() - started, 1)}
        if baseline_rev:
            baseline(stack, baseline_rev, bases["python"], report)
        env = {"KAFKA_IMAGE": bases["kafka"], "RERANK_MODEL": TEST_MODEL}
        stack.env.update(env)
        stack.compose("down", "-v", "--remove-orphans", check=False)
        before = volumes(stack)
        health.start()

        # 2. the model, in the fresh model-cache volume
        started = time.monotonic()
        stack.compose("run", "--rm", "--no-deps", "prepare", "python", "-m", "engines.testmodel", TEST_MODEL)
        steps["model"] = {"seconds": round(time.monotonic() - started, 1), "what": "engines.testmodel into model-cache"}

        # 3. cold start
        steps["cold"] = up_to_healthy(stack)
        steps["cold"]["prepare_log"] = [line for line in stack.compose("logs", "--no-log-prefix", "prepare").splitlines()
                                        if "engines" in line and (" -> " in line or "check" in line or "prepared" in line)]

        # 4-5. requests, scale 2 -> 3 -> 2
        steps["requests@2"] = send_round("two", n, 1)
        started = time.monotonic()
        stack.compose("up", "-d", "--no-deps", "--no-recreate", "--scale", "worker=3", "worker")
        steps["scale-3"] = {"to_healthy_s": round(time.monotonic() - started + wait_healthy(stack, 3, 300), 1)}
        time.sleep(8)  # the group's rebalance: every replica takes its partitions
        steps["requests@3"] = send_round("three", n, 2)
        started = time.monotonic()
        stack.compose("up", "-d", "--no-deps", "--no-recreate", "--scale", "worker=2", "worker")
        steps["scale-2"] = {"to_healthy_s": round(time.monotonic() - started + wait_healthy(stack, 2, 300), 1)}
        steps["requests@2-again"] = send_round("back", n, 3)

        # 6. warm start
        stack.compose("down")
        steps["warm"] = up_to_healthy(stack)
        steps["requests@warm"] = send_round("warm", n, 4)

        # 7. the load generator's profile: its command, at a rate this host can score
        if loadgen:
            config = json.loads(stack.compose("--profile", "loadgen", "config", "--format", "json", quiet=True))
            command = list(config["services"]["loadgen"]["command"])
            command[command.index("--rate") + 1] = str(loadgen_rate)
            started = time.monotonic()
            stack.compose("--profile", "loadgen", "run", "--rm", "--no-deps", "loadgen", *command, timeout=600)
            summary = json.loads(stack.compose("--profile", "loadgen", "run", "--rm", "--no-deps", "loadgen",
                                               "cat", "/out/loadgen.json"))
            steps["loadgen"] = {"seconds": round(time.monotonic() - started, 1), "command": " ".join(command),
                                **{k: summary.get(k) for k in ("sent", "answered", "lost", "duplicates", "errors", "p50", "p99")
                                   if k in summary}}

        made = volumes(stack) - before
        steps["volumes"] = sorted(made)
        anonymous = [v for v in made if not v.startswith(f"{PROJECT}_")]
        assert not anonymous, f"anonymous volumes: {anonymous}"
        rounds = [v for k, v in steps.items() if k.startswith("requests@")]
        problems = [p for r in rounds for p in r["problems"]]
        unanswered = sum(r["sent"] - r["answered"] for r in rounds)
        assert not problems and unanswered == 0, f"{unanswered} unanswered; {problems}"
        if loadgen:
            assert steps["loadgen"]["lost"] == 0 and not steps["loadgen"]["errors"], steps["loadgen"]
        assert len(steps["requests@3"]["workers"]) == 3, f"answered by {steps['requests@3']['workers']}"
        report["passed"] = True
    except Exception as exc:  # noqa: BLE001 - reported, then the stack goes down all the same
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        health.stop()
        stack.compose("--profile", "*", "down", "-v", "--remove-orphans", check=False)
        left = [c for c in stack.podman("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}",
                                        check=False).split()]
        steps["down"] = {"containers_left": len(left), "project_volumes_left":
                         sorted(v for v in volumes(stack) if v.startswith(f"{PROJECT}_"))}
        if left or steps["down"]["project_volumes_left"]:
            report["passed"] = False
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
        print_report(report)
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
