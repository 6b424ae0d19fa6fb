"""Threads from what the process may really use: CPU affinity and cgroup CPU quota, on fake cgroup
trees laid out as cgroup v2 and v1 hosts, containers and Kubernetes pods show them."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.config import CpuQuota, affinity_cpus, cgroup_cpu_quota, cpu_budget


class FakeHost:
    """/proc/self/cgroup, /proc/self/mountinfo and cgroup folders under a temporary directory."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.proc_cgroup = root / "proc-self-cgroup"
        self.mountinfo = root / "proc-self-mountinfo"
        self.cgroup_root = root / "sys/fs/cgroup"
        self._mounts: list[str] = []

    def member_of(self, *lines: str) -> None:
        self.proc_cgroup.write_text("".join(line + "\n" for line in lines))

    def mount(self, mount_root: str, mount_point: Path, fstype: str, options: str) -> Path:
        mount_point.mkdir(parents=True, exist_ok=True)
        escaped = str(mount_point).replace(" ", "\\040")
        n = len(self._mounts) + 30
        self._mounts.append(f"{n} 23 0:{n} {mount_root} {escaped} rw,nosuid,nodev,noexec,relatime - {fstype} {fstype} {options}")
        self.mountinfo.write_text("\n".join(self._mounts) + "\n")
        return mount_point

    @staticmethod
    def write(folder: Path, **files: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name.replace("__", ".")).write_text(text + "\n")

    def quota(self) -> CpuQuota | None:
        return cgroup_cpu_quota(self.proc_cgroup, self.mountinfo, self.cgroup_root)

    def threads(self, affinity: int) -> int:
        return cpu_budget(self.proc_cgroup, self.mountinfo, self.cgroup_root, affinity=affinity).threads


@pytest.fixture
def host(tmp_path) -> FakeHost:
    return FakeHost(tmp_path)


@pytest.mark.parametrize("cpu_max,affinity,threads", [
    ("200000 100000", 8, 2),    # 2 CPUs of an 8-core host
    ("max 100000", 8, 8),       # no limit: the affinity
    ("150000 100000", 8, 1),    # 1.5 CPUs: rounded down (no throttled parallel sections)
    ("50000 100000", 8, 1),     # half a CPU: still one thread
    ("400000 100000", 2, 2),    # a quota above the affinity: the affinity
    ("100000 50000", 16, 2),    # another period
])
def test_v2_container_with_its_own_namespace(host, cpu_max, affinity, threads):
    host.member_of("0::/")
    cgroup = host.mount("/", host.cgroup_root, "cgroup2", "rw,nsdelegate")
    host.write(cgroup, cgroup__controllers="cpuset cpu io memory pids", cpu__max=cpu_max)
    assert host.threads(affinity) == threads


def test_v2_pod_quota_on_an_ancestor_binds_the_container(host):
    """Without a cgroup namespace the process sees its full path; a quota set on the pod's
    cgroup (an ancestor of the container's) binds as much as the container's own."""
    pod = "/kubepods.slice/kubepods-pod1.slice"
    host.member_of(f"0::{pod}/cri-containerd-abc.scope")
    top = host.mount("/", host.root / "cg 2", "cgroup2", "rw")  # a mount point with a space (\040)
    host.write(top, cpu__max="max 100000")
    host.write(top / pod.lstrip("/"), cpu__max="300000 100000")
    host.write(top / pod.lstrip("/") / "cri-containerd-abc.scope", cpu__max="max 100000")
    quota = host.quota()
    assert quota is not None and quota.cpus == 3 and quota.path == str(top / pod.lstrip("/") / "cpu.max")
    assert host.threads(64) == 3
    # A tighter limit further down wins.
    host.write(top / pod.lstrip("/") / "cri-containerd-abc.scope", cpu__max="100000 100000")
    assert host.threads(64) == 1


@pytest.mark.parametrize("quota_us,threads", [("250000", 2), ("-1", 12)])
def test_v1_docker_without_namespace(host, quota_us, threads):
    """cgroup v1: the mount's root is the container's own cgroup, the process sees the host path."""
    host.member_of("12:memory:/docker/abc", "4:cpu,cpuacct:/docker/abc", "1:name=systemd:/docker/abc")
    cpu = host.mount("/docker/abc", host.cgroup_root / "cpu,cpuacct", "cgroup", "rw,cpu,cpuacct")
    host.mount("/docker/abc", host.cgroup_root / "memory", "cgroup", "rw,memory")
    host.write(cpu, cpu__cfs_quota_us=quota_us, cpu__cfs_period_us="100000")
    assert host.threads(12) == threads


def test_hybrid_host_reads_the_v1_cpu_controller(host):
    """systemd's hybrid layout: an empty cgroup2 tree (no cpu.max) beside the v1 controllers."""
    host.member_of("0::/user.slice", "3:cpu,cpuacct:/user.slice")
    unified = host.mount("/", host.cgroup_root / "unified", "cgroup2", "rw")
    host.write(unified / "user.slice", cgroup__procs="1")
    cpu = host.mount("/", host.cgroup_root / "cpu,cpuacct", "cgroup", "rw,cpu,cpuacct")
    host.write(cpu, cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
    host.write(cpu / "user.slice", cpu__cfs_quota_us="200000", cpu__cfs_period_us="100000")
    quota = host.quota()
    assert quota is not None and quota.path == str(cpu / "user.slice" / "cpu.cfs_quota_us")
    assert host.threads(4) == 2


def test_common_paths_when_mountinfo_cannot_be_read(host):
    host.member_of("0::/")
    host.write(host.cgroup_root, cgroup__controllers="cpu memory", cpu__max="300000 100000")
    assert not host.mountinfo.exists()
    assert host.threads(8) == 3
    v1 = FakeHost(host.root / "v1")
    v1.member_of("2:cpu,cpuacct:/")
    v1.write(v1.cgroup_root / "cpu,cpuacct", cpu__cfs_quota_us="100000", cpu__cfs_period_us="100000")
    assert v1.threads(8) == 1


@pytest.mark.parametrize("cpu_max", ["", "garbage", "0 100000", "200000", "-5 100000"])
def test_unreadable_or_odd_files_mean_no_quota(host, cpu_max):
    host.member_of("0::/")
    cgroup = host.mount("/", host.cgroup_root, "cgroup2", "rw")
    host.write(cgroup, cpu__max=cpu_max)
    assert host.quota() is None and host.threads(6) == 6


def test_nothing_to_read_at_all(tmp_path):
    missing = tmp_path / "nowhere"
    budget = cpu_budget(missing, missing, missing, affinity=3)
    assert (budget.threads, budget.quota) == (3, None)
    assert budget.describe() == "3 threads (CPU affinity 3, no cgroup CPU quota)"


def test_describe_names_the_file(host):
    host.member_of("0::/")
    cgroup = host.mount("/", host.cgroup_root, "cgroup2", "rw")
    host.write(cgroup, cpu__max="150000 100000")
    budget = cpu_budget(host.proc_cgroup, host.mountinfo, host.cgroup_root, affinity=4)
    assert budget.describe() == f"1 thread (CPU affinity 4, cgroup quota 1.5 CPUs in {cgroup / 'cpu.max'})"


def test_this_machine():
    """The real files of this host: whatever they say, a usable figure within the affinity."""
    budget = cpu_budget()
    assert 1 <= budget.threads <= budget.affinity == affinity_cpus()
    if budget.quota is not None:
        assert budget.threads == min(budget.affinity, max(1, int(budget.quota.cpus)))
