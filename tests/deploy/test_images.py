"""What the Dockerfiles promise a host, read from the files (``make compose-test`` builds and runs them):
a pinned base, a non-root user, no HEALTHCHECK for the one-shot services to inherit, no VOLUME to
leave an anonymous volume behind, the torch-free worker as the CPU Dockerfile's default target, and
a build context that holds only what they copy."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
DOCKERFILES = sorted(p.name for p in DOCKER.glob("Dockerfile*"))
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", (DOCKER / name).read_text(encoding="utf-8"))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def stages(name: str) -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions, by its name (or its index), in the file's order."""
    out: dict[str, list[tuple[str, str]]] = {}
    current = None
    for op, args in instructions(name):
        if op == "FROM":
            words = args.split()
            current = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(out))
            out[current] = []
        if current is not None:
            out[current].append((op, args))
    return out


def test_the_dockerfiles_are_the_ones_we_check():
    assert DOCKERFILES == ["Dockerfile", "Dockerfile.cuda", "Dockerfile.loadgen"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_base_image_is_pinned_by_digest(name):
    args = dict(args.split("=", 1) for op, args in instructions(name) if op == "ARG" and "=" in args)
    [first, *_] = [args for op, args in instructions(name) if op == "FROM"]
    image = first.split()[0]
    if image.startswith("${"):
        image = args[image.strip("${}").split(":-")[0]]
    assert DIGEST.search(image), f"{name}: FROM {image} is not pinned by digest"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_no_healthcheck_no_volume_and_no_heredoc(name):
    ops = {op for op, _ in instructions(name)}
    # a HEALTHCHECK in the image was inherited by topic-init and loadgen; compose says which service has one
    assert "HEALTHCHECK" not in ops
    # a VOLUME left an anonymous volume per container; compose and Kubernetes name theirs
    assert "VOLUME" not in ops
    assert not re.search(r"<<", (DOCKER / name).read_text(encoding="utf-8")), "a heredoc: podman 4.3 runs it empty"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_image_runs_as_uid_10001(name):
    text = (DOCKER / name).read_text(encoding="utf-8")
    assert "useradd --uid 10001 " in text  # deploy/k8s's runAsUser
    for stage, body in stages(name).items():
        users = [args for op, args in body if op == "USER"]
        if any(op == "CMD" for op, _ in body):  # a stage that is run, not only built upon
            assert users and users[-1] == "rerank", f"{name}: stage {stage} runs as root"


def test_the_cpu_dockerfile_defaults_to_the_worker_without_torch():
    built = stages("Dockerfile")
    assert list(built) == ["base", "prepare", "worker"]  # the last stage is what a plain `docker build` makes
    assert ("CMD", '["python", "-m", "streams", "worker"]') in built["worker"]
    assert ("CMD", '["python", "-m", "streams", "prepare"]') in built["prepare"]
    assert not any("prepare.txt" in args for _, args in built["worker"])
    assert any("pip install -r /tmp/build/prepare.txt" in args for op, args in built["prepare"] if op == "RUN")


def test_the_build_context_holds_only_what_the_images_copy():
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "an allowlist: everything out, then what the images copy back in"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {args.split()[0].rstrip("/") for name in DOCKERFILES for op, args in instructions(name) if op == "COPY"}
    assert allowed == copied
    assert {"**/__pycache__", "**/*.pyc"} <= set(lines)
