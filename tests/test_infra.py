"""The deployment files under infra/, checked on paper: they parse, they name things that exist in
this repository, and they agree with each other and with pyproject.toml. (No Kubernetes, AWS or
Docker engine is needed; tests/test_multinode.py runs a real multi-node Ray cluster.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from pipeline.config import load_config

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
DOCKERFILE = INFRA / "Dockerfile"
LAUNCHER = INFRA / "aws" / "cluster.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
GPU_INSTANCE = re.compile(r"^(g4dn|g5|g5g|g6|g6e|gr6|p3|p4d|p4de|p5|p5e|p5en)\.")
# values a user must replace; every line holding one must say so
PLACEHOLDER = re.compile(r"REGISTRY/|FILL-IN|ACCOUNT")


def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def one(path: Path, kind: str) -> dict:
    found = [d for d in docs(path) if d.get("kind") == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, found {len(found)}"
    return found[0]


def cluster_spec(kind: str) -> dict:
    if kind == "RayCluster":
        return one(KUBERAY / "raycluster.yaml", "RayCluster")["spec"]
    return one(KUBERAY / "rayjob.yaml", "RayJob")["spec"]["rayClusterSpec"]


def ray_containers(spec: dict) -> list[dict]:
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return [c for pod in pods for c in pod["spec"]["containers"]]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    out, buf = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_args() -> dict[str, str]:
    args = {}
    for ins, rest in dockerfile_instructions():
        if ins == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip().strip('"')
    return args


# -- every file ---------------------------------------------------------------------------------


def test_infra_has_the_expected_files():
    for p in (
        "Dockerfile",
        "README.md",
        "aws/cluster.yaml",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
    ):
        assert (INFRA / p).is_file(), p
    assert (KUBERAY / "secret-example.yaml").is_file()


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_parses(path):
    parsed = docs(path)  # multi-document aware; anchors resolved
    assert parsed and all(isinstance(d, dict) for d in parsed)


@pytest.mark.parametrize("path", yaml_files() + [DOCKERFILE], ids=lambda p: str(p.relative_to(INFRA)))
def test_every_placeholder_is_marked_fill_in(path):
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if PLACEHOLDER.search(line.split("#")[0]):
            assert "# FILL IN" in line, (
                f"{path.name}:{n}: placeholder without a FILL IN comment: {line.strip()}"
            )


# -- KubeRay ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_kinds_and_api_version(kind):
    path = KUBERAY / ("raycluster.yaml" if kind == "RayCluster" else "rayjob.yaml")
    doc = one(path, kind)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["metadata"]["name"]


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_cluster_has_an_autoscaling_gpu_worker_group(kind):
    spec = cluster_spec(kind)
    assert spec["enableInTreeAutoscaling"] is True
    gpu_groups = []
    for g in spec["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        for c in g["template"]["spec"]["containers"]:
            limits = c["resources"]["limits"]
            if int(limits.get("nvidia.com/gpu", 0)) >= 1:
                gpu_groups.append(g)
                assert c["resources"]["requests"].get("nvidia.com/gpu") == limits["nvidia.com/gpu"]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    # the job waits for the GPUs it asks for (ray.gpu_wait_s): no idle GPU pod between jobs
    assert all(g["minReplicas"] == 0 for g in gpu_groups)
    # the head does no model work
    assert "nvidia.com/gpu" not in ray_containers(spec)[0]["resources"].get("limits", {})


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_decode_runs_on_cpu_pods_and_stays_off_the_labelled_gpu_pods(kind):
    """The heterogeneous layout: a CPU group for decode and write, a GPU group whose Ray label the
    job config's ray.cpu_task_label_selector excludes."""
    spec = cluster_spec(kind)
    cfg = load_config(ROOT / "configs" / "cluster-gpu.yaml")
    assert cfg.model.device == "cuda"
    selector = cfg.ray.cpu_task_label_selector
    assert selector and len(selector) == 1
    ((key, value),) = selector.items()
    assert value.startswith("!")
    cpu_groups = []
    for g in spec["workerGroupSpecs"]:
        limits = [c["resources"]["limits"] for c in g["template"]["spec"]["containers"]]
        labels = dict(kv.split("=", 1) for kv in g["rayStartParams"].get("labels", "").split(",") if kv)
        if any(int(lim.get("nvidia.com/gpu", 0)) for lim in limits):
            assert labels.get(key) == value[1:], (g["groupName"], labels)  # excluded from decode
        else:
            assert labels.get(key) != value[1:], g["groupName"]
            cpu_groups.append(g)
    assert cpu_groups, "no CPU worker group for decode and write"


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_containers_take_s3_credentials_from_the_secret(kind):
    secret = one(KUBERAY / "secret-example.yaml", "Secret")
    keys = set(secret["stringData"])
    assert keys == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for c in ray_containers(cluster_spec(kind)):
        env = {e["name"]: e for e in c["env"]}
        for key in keys:
            ref = env[key]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], key), c["name"]
            assert "value" not in env[key], "credentials must not be inlined"


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_image_and_ray_version_match_the_dockerfile(kind):
    spec = cluster_spec(kind)
    assert spec["rayVersion"] == dockerfile_args()["RAY_VERSION"]
    assert spec["authOptions"]["mode"] == "token"  # Ray >= 2.52 token authentication
    images = {c["image"] for c in ray_containers(spec)}
    assert len(images) == 1, images  # head and workers run one image
    for c in ray_containers(spec):
        assert c["workingDir"] == "/app"  # the Dockerfile's WORKDIR: jobs/ and configs/ resolve there


def test_rayjob_entrypoint_runs_the_extract_job_with_a_valid_config():
    spec = one(KUBERAY / "rayjob.yaml", "RayJob")["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] in ("python", "python3")
    script = ROOT / argv[1]
    assert script.is_file() and argv[1] == "jobs/extract.py"
    config, overrides = None, []
    it = iter(argv[2:])
    for a in it:
        if a == "--config":
            config = next(it)
        elif a == "--set":
            overrides.append(next(it))
    assert config == "configs/cluster-gpu.yaml" and (ROOT / config).is_file()
    cfg = load_config(ROOT / config, overrides)  # raises ConfigError naming the key if invalid
    assert cfg.input.manifest and cfg.output.path
    assert spec["shutdownAfterJobFinishes"] is True


# -- Ray cluster launcher -----------------------------------------------------------------------


def test_launcher_has_a_gpu_worker_type_and_bounds():
    cfg = one_launcher()
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    head = types[cfg["head_node_type"]]
    assert not GPU_INSTANCE.match(head["node_config"]["InstanceType"])
    gpu = {
        name: t
        for name, t in types.items()
        if GPU_INSTANCE.match(t["node_config"]["InstanceType"]) or t.get("resources", {}).get("GPU", 0) > 0
    }
    assert gpu, "no GPU worker type"
    assert isinstance(cfg["max_workers"], int) and cfg["max_workers"] >= 1
    for name, t in gpu.items():
        assert 1 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"], name


def test_launcher_runs_the_image_with_token_auth():
    cfg = one_launcher()
    assert cfg["docker"]["image"]
    assert cfg["setup_commands"], "setup commands"
    head = " ".join(cfg["head_start_ray_commands"])
    worker = " ".join(cfg["worker_start_ray_commands"])
    assert "ray start --head" in head and "--autoscaling-config" in head
    assert "ray start --address=$RAY_HEAD_IP" in worker
    # every node in token mode, with the token at Ray's default path
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in worker
    assert "~/.ray/auth_token" in cfg["file_mounts"]


def one_launcher() -> dict:
    parsed = docs(LAUNCHER)
    assert len(parsed) == 1
    return parsed[0]


# -- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_installs_the_project_from_pyproject():
    ins = dockerfile_instructions()
    copies = [rest for i, rest in ins if i == "COPY"]
    assert any("pyproject.toml" in c.split() for c in copies), "pyproject.toml is not copied"
    runs = [rest for i, rest in ins if i == "RUN"]
    pip = [r for r in runs if re.search(r"\bpip install\b", r)]
    # `pip install .` (optionally with extras: ".[hub]" / ".${EXTRAS:+[...]}"), never a hand-kept list
    assert any(re.search(r"""pip install\b.*\s["']?\.(["'\s\[$]|$)""", r) for r in pip), pip
    assert not any(re.search(r"(-r|--requirement)\s|requirements[^ ]*\.txt", r) for r in pip), pip
    assert not list(ROOT.glob("requirements*.txt"))
    # pyproject.toml is copied before the install step runs
    first_pip = next(n for n, (i, rest) in enumerate(ins) if i == "RUN" and "pip install" in rest)
    first_copy = next(n for n, (i, rest) in enumerate(ins) if i == "COPY" and "pyproject.toml" in rest)
    assert first_copy < first_pip


def test_dockerfile_runtime_layout():
    ins = dockerfile_instructions()
    assert ("WORKDIR", "/app") in ins
    assert any(i in ("CMD", "ENTRYPOINT") for i, _ in ins)
    assert any(i == "RUN" and "libsndfile1" in rest for i, rest in ins)
    froms = [rest for i, rest in ins if i == "FROM"]
    assert froms and all("gpu" in f or "cuda" in f for f in froms), froms  # a CUDA runtime base


def test_dockerfile_python_and_ray_versions_satisfy_pyproject():
    requires_python = SpecifierSet(PYPROJECT["project"]["requires-python"])
    text = "\n".join(rest for _, rest in dockerfile_instructions())
    named = set(re.findall(r"\bpy3(\d{1,2})\b", text))  # image tags: rayproject/ray:X-py311-gpu
    named |= {v.split(".")[1] for v in re.findall(r"\bpython(3\.\d{1,2})\b", text, re.I)}
    named |= {v.split(".")[1] for v in re.findall(r"PYTHON_VERSION=\"?(3\.\d{1,2})", text)}
    assert named, "the Dockerfile names no Python version"
    for minor in named:
        assert requires_python.contains(f"3.{minor}"), (
            f"Python 3.{minor} vs requires-python {requires_python}"
        )
    ray = next(Requirement(d) for d in PYPROJECT["project"]["dependencies"] if Requirement(d).name == "ray")
    assert ray.specifier.contains(Version(dockerfile_args()["RAY_VERSION"]))


def test_dockerignore_keeps_environments_and_outputs_out_of_the_image():
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for entry in (".venv", "outputs", ".git"):
        assert entry in ignored, entry
