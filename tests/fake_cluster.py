"""An elastic Ray cluster on this one machine: Ray's fake autoscaler (provider `fake_multinode`, each
node with its own runtime-env folder: tests/ray_provider/e2v_fake_provider.py) adds and removes "GPU"
nodes (logical GPU resources, no device) as demand asks, like KubeRay or the cluster launcher would.
The head is started under its own `setsid` session; the autoscaler monitor runs in that session and
starts each fake node's processes there too, so killing the session stops the whole cluster (never
`ray stop`: other Ray instances may share the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .conftest import free_port, kill_session, session_pids

BIN = os.path.dirname(sys.executable)
RAY = os.path.join(BIN, "ray")
IP = "127.0.0.1"
PROVIDER_DIR = Path(__file__).resolve().parent / "ray_provider"


def autoscaling_config(gcs_port: int, head_cpus: int, gpu_nodes: dict) -> dict:
    """The fake provider's cluster config: a head with CPUs only and a GPU node type."""
    return {
        "cluster_name": f"e2v-fake-{uuid.uuid4().hex[:6]}",
        "max_workers": gpu_nodes.get("max_workers", 2),
        "upscaling_speed": 2.0,
        "idle_timeout_minutes": gpu_nodes.pop("idle_timeout_minutes", 5),
        "provider": {
            # Ray's fake_multinode provider, each fake node with its own runtime-env folder
            "type": "external",
            "module": "e2v_fake_provider.PerNodeRuntimeEnvProvider",
            "gcs_address": f"{IP}:{gcs_port}",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
            "gpu_node": {"node_config": {}, **gpu_nodes},
        },
        "head_node_type": "ray.head.default",
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@dataclass
class FakeCluster:
    env: dict[str, str]
    workdir: Path
    gcs: int = field(default_factory=free_port)
    dashboard: int = field(default_factory=free_port)
    sid: int | None = None
    temp: str = field(default_factory=lambda: f"/tmp/ray_e2v_fk_{uuid.uuid4().hex[:8]}")

    @property
    def address(self) -> str:
        return f"http://{IP}:{self.dashboard}"

    def start(self, head_cpus: int, gpu_nodes: dict) -> None:
        cfg = self.workdir / "autoscaling.json"
        cfg.write_text(json.dumps(autoscaling_config(self.gcs, head_cpus, dict(gpu_nodes))))
        ports = {
            "--port": self.gcs,
            "--dashboard-port": self.dashboard,
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--metrics-export-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--ray-client-server-port": free_port(),
        }
        cmd = [RAY, "start", "--head", "--num-cpus", str(head_cpus), "--num-gpus", "0"]
        cmd += ["--autoscaling-config", str(cfg), "--node-ip-address", IP, "--temp-dir", self.temp]
        cmd += ["--include-dashboard", "true", "--dashboard-host", IP, "--disable-usage-stats"]
        cmd += ["--object-store-memory", str(300 * 1024 * 1024), "--min-worker-port", "0"]
        cmd += ["--max-worker-port", "0"]
        for k, v in ports.items():
            cmd += [k, str(v)]
        # the monitor (started by `ray start --head`, inheriting this environment) imports the provider
        path = os.pathsep.join(p for p in (str(PROVIDER_DIR), self.env.get("PYTHONPATH", "")) if p)
        env = {**self.env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "PYTHONPATH": path}
        leader = subprocess.Popen(
            ["setsid", "--wait", *cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.sid = leader.pid  # setsid --wait: the leader's pid is the new session id
        out, _ = leader.communicate(timeout=120)
        assert leader.returncode == 0, f"ray start --head failed:\n{out[-3000:]}"
        deadline = time.time() + 90
        while True:  # the job server answers a few seconds after `ray start` returns
            r = subprocess.run(
                [RAY, "job", "list", "--address", self.address], env=self.env, capture_output=True, text=True
            )
            if r.returncode == 0:
                return
            assert time.time() < deadline, f"the job server did not answer: {r.stderr[-2000:]}"
            time.sleep(1)

    def state(self, kind: str, *filters: str) -> list[dict]:
        """`ray list KIND` through the state API, as any client would ([] when it does not answer)."""
        cmd = [RAY, "list", kind, "--address", self.address, "--format", "json", "--limit", "1000"]
        for f in filters:
            cmd += ["--filter", f]
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout.lstrip().startswith("[") else []

    def gpu_nodes(self) -> list[str]:
        """Node ids of the ALIVE nodes that have a GPU."""
        nodes = self.state("nodes", "state=ALIVE")
        return [n["node_id"] for n in nodes if (n.get("resources_total") or {}).get("GPU", 0) > 0]

    def raylet_pid(self, node_id: str) -> int:
        """The pid of one node's raylet (its command line names the node)."""
        for pid, n in self._raylets().items():
            if n == node_id:
                return pid
        raise LookupError(f"no raylet of node {node_id}")

    def kill_node(self, node_id: str) -> list[int]:
        """Every process of one node at once, as a preemption ends a machine: its raylet and what the
        raylet started (workers, agents). Killing the raylet alone leaves its workers running here:
        an actor went on taking calls from the driver until Ray declared the node dead (tens of
        seconds), and a fast job finished without noticing the loss."""
        raylet = self.raylet_pid(node_id)
        os.kill(raylet, signal.SIGSTOP)  # no new worker while its children are collected
        parents = {}
        for pid in session_pids(self.sid):
            with contextlib.suppress(OSError, StopIteration):
                status = Path(f"/proc/{pid}/status").read_text()
                parents[pid] = int(next(x for x in status.splitlines() if x.startswith("PPid:")).split()[1])
        node, grew = {raylet}, True
        while grew:
            more = {pid for pid, parent in parents.items() if parent in node} - node
            node |= more
            grew = bool(more)
        for pid in node:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return sorted(node)

    def model_actor_nodes_now(self) -> set[str]:
        """Nodes running a model actor's process right now, from /proc alone (the state API can lag
        or time out on a loaded box): Ray titles an actor's process with its class, and a worker's
        parent is its node's raylet."""
        raylets, nodes = self._raylets(), set()
        for pid in session_pids(self.sid):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            parent = int(next(x for x in status.splitlines() if x.startswith("PPid:")).split()[1])
            if b"EmotionPredictor" in title and parent in raylets:
                nodes.add(raylets[parent])
        return nodes

    def _raylets(self) -> dict[int, str]:
        """pid -> node id, for this cluster's raylets (each one's command line names its node)."""
        out = {}
        for pid in session_pids(self.sid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"raylet"):
                for a in argv:
                    if a.startswith(b"--node_id="):
                        out[pid] = a.split(b"=", 1)[1].decode()
        return out

    def shutdown(self, keep_logs: Path) -> None:
        if self.sid is not None:
            kill_session(self.sid)
            deadline = time.time() + 30
            while session_pids(self.sid) and time.time() < deadline:
                kill_session(self.sid)
                time.sleep(0.5)
        logs = Path(self.temp) / "session_latest" / "logs"
        if logs.is_dir():  # for a post-mortem, under pytest's tmp_path
            shutil.copytree(logs, keep_logs / "ray-logs", dirs_exist_ok=True, symlinks=True)
        shutil.rmtree(self.temp, ignore_errors=True)
