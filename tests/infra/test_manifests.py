"""infra/ checks: manifests parse, validate against the Kubernetes schemas, and agree with the code they run.

Schemas: `kubernetes-validate` ships the Kubernetes OpenAPI schemas (offline) for built-in kinds; the pod templates
inside the KubeRay resources are validated as `v1/PodTemplate` in strict mode (unknown fields are errors). No package
on the registries reachable here ships the KubeRay CRD schemas (searched PyPI for kuberay, its Python clients and
CRD-schema bundles; see docs/deploy.md), so the KubeRay fields are checked against the field names of the KubeRay
v1 API below. The cluster-launcher YAML is validated with the JSON schema and validator that ship with Ray.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
MANIFESTS = ["raycluster.yaml", "rayjob-infer.yaml", "rayjob-train.yaml"]
INFERENCE_RESOURCE = "inference"  # docs/contracts.md: custom resource name for the inference stage

# KubeRay v1 API (ray.io/v1) field names accepted by the operator's CRDs (ray-operator/apis/ray/v1).
RAYCLUSTER_SPEC_FIELDS = {
    "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec", "workerGroupSpecs",
    "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions", "upgradeStrategy", "authOptions",
}  # fmt: skip
HEAD_GROUP_FIELDS = {
    "rayStartParams",
    "template",
    "serviceType",
    "headService",
    "enableIngress",
    "resources",
    "labels",
}
WORKER_GROUP_FIELDS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template", "numOfHosts",
    "scaleStrategy", "suspend", "idleTimeoutSeconds", "resources", "labels",
}  # fmt: skip
AUTOSCALER_FIELDS = {
    "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds", "upscalingMode", "version",
    "env", "envFrom", "volumeMounts",
}  # fmt: skip
RAYJOB_SPEC_FIELDS = {
    "entrypoint", "runtimeEnvYAML", "rayClusterSpec", "clusterSelector", "shutdownAfterJobFinishes",
    "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit", "submissionMode", "submitterPodTemplate",
    "submitterConfig", "jobId", "metadata", "entrypointNumCpus", "entrypointNumGpus", "entrypointResources",
    "suspend", "managedBy", "deletionStrategy",
}  # fmt: skip
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
UPSCALING_MODES = {"Default", "Aggressive", "Conservative"}


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kind(path: Path, kind: str) -> dict[str, Any]:
    docs = [d for d in _load_all(path) if d.get("kind") == kind]
    assert len(docs) == 1, f"{path.name}: expected one {kind}"
    return docs[0]


def _cluster_specs() -> dict[str, dict[str, Any]]:
    specs = {"raycluster.yaml": _kind(K8S / "raycluster.yaml", "RayCluster")["spec"]}
    for name in ("rayjob-infer.yaml", "rayjob-train.yaml"):
        specs[name] = _kind(K8S / name, "RayJob")["spec"]["rayClusterSpec"]
    return specs


def _groups(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("head", spec["headGroupSpec"]), *((g["groupName"], g) for g in spec["workerGroupSpecs"])]


def _gpu_group(spec: dict[str, Any]) -> dict[str, Any]:
    groups = [g for g in spec["workerGroupSpecs"] if _gpus(g) > 0]
    assert len(groups) == 1
    return groups[0]


def _gpus(group: dict[str, Any]) -> int:
    return sum(
        int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
        for c in group["template"]["spec"]["containers"]
    )


def _quantity_bytes(text: str) -> int:
    units = {
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
    }
    match = re.fullmatch(r"(\d+)([KMGT]i|[kMGT])?", str(text))
    assert match, f"unsupported quantity {text!r}"
    return int(match.group(1)) * units.get(match.group(2) or "", 1)


def _ray_start_resources(params: dict[str, str]) -> dict[str, float]:
    """The `resources` rayStartParam, which KubeRay puts on the `ray start` command line as it is."""
    if "resources" not in params:
        return {}
    return json.loads(shlex.split(params["resources"])[0])


def _pinned(package: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{package}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{package} is not pinned in constraints.txt")


def _project_version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _dockerfile() -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(ARG defaults, [(instruction, arguments)]) of infra/docker/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (INFRA / "docker" / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    args = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args.setdefault(key, value)
    return args, instructions


def _dockerfile_env() -> dict[str, str]:
    _, instructions = _dockerfile()
    env: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ENV":
            for token in shlex.split(rest):
                key, value = token.split("=", 1)
                env[key] = value
    return env


def _workdir() -> str:
    _, instructions = _dockerfile()
    return [rest for word, rest in instructions if word == "WORKDIR"][-1]


def _all_images() -> dict[str, str]:
    images = {}
    for name, spec in _cluster_specs().items():
        for group_name, group in _groups(spec):
            for container in group["template"]["spec"]["containers"]:
                images[f"{name}:{group_name}/{container['name']}"] = container["image"]
    images["aws.yaml:docker"] = yaml.safe_load((INFRA / "cluster" / "aws.yaml").read_text())["docker"][
        "image"
    ]
    return images


def _import_job(script: str) -> Any:
    path = REPO / "jobs" / script
    if not path.exists():
        pytest.skip(f"jobs/{script} does not exist yet; its manifest entrypoint cannot be checked")
    spec = importlib.util.spec_from_file_location(f"_manifest_check_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entrypoint(manifest: str) -> tuple[str, list[str]]:
    """(script file name in jobs/, its arguments) of a RayJob entrypoint, checked against the image layout."""
    tokens = shlex.split(_kind(K8S / manifest, "RayJob")["spec"]["entrypoint"])
    assert tokens[0] == "python", tokens
    script = tokens[1]
    assert script.startswith(f"{_workdir()}/jobs/"), f"{script} is not under the image's {_workdir()}/jobs/"
    return Path(script).name, tokens[2:]


def _parse_job_args(module: Any, argv: list[str]) -> Any:
    try:
        return module.build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on unknown flags or bad values
        raise AssertionError(f"{module.__name__} rejects the manifest's arguments {argv}") from exc


def _image_path_to_repo(path: str) -> Path:
    prefix = _workdir() + "/"
    assert path.startswith(prefix), f"{path} is not inside the image's {prefix}"
    return REPO / path[len(prefix) :]


# --- parsing and schemas -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(p.relative_to(INFRA).as_posix() for p in INFRA.rglob("*.yaml")))
def test_yaml_parses(path: str) -> None:
    docs = _load_all(INFRA / path)
    assert docs and all(isinstance(d, dict) for d in docs)


def _validate_k8s(resource: dict[str, Any]) -> None:
    import kubernetes_validate

    version = kubernetes_validate.utils.latest_version()
    kubernetes_validate.validate(resource, version, strict=True)


def _pod_templates() -> list[tuple[str, dict[str, Any]]]:
    templates = []
    for name, spec in _cluster_specs().items():
        for group_name, group in _groups(spec):
            template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group_name}}
            templates.append((f"{name}:{group_name}", {**template, "template": group["template"]}))
    return templates


def test_builtin_resources_validate_against_kubernetes_schemas() -> None:
    builtins = [d for d in _load_all(K8S / "raycluster.yaml") if d["apiVersion"] == "v1"]
    assert {d["kind"] for d in builtins} == {"ServiceAccount", "PersistentVolumeClaim"}
    for resource in builtins:
        _validate_k8s(resource)


@pytest.mark.parametrize("name", [n for n, _ in _pod_templates()])
def test_pod_templates_validate_against_kubernetes_schemas(name: str) -> None:
    _validate_k8s(dict(_pod_templates())[name])


def test_schema_validation_rejects_a_broken_pod_template() -> None:
    import kubernetes_validate

    name, template = _pod_templates()[-1]
    broken = json.loads(json.dumps(template))
    container = broken["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")  # typo: unknown field in strict mode
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_k8s(broken)
    broken = json.loads(json.dumps(template))
    broken["template"]["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] = "yes"  # not a boolean
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_k8s(broken)


@pytest.mark.parametrize("name", MANIFESTS)
def test_kuberay_fields_are_known(name: str) -> None:
    spec = _cluster_specs()[name]
    assert set(spec) <= RAYCLUSTER_SPEC_FIELDS, set(spec) - RAYCLUSTER_SPEC_FIELDS
    assert set(spec["headGroupSpec"]) <= HEAD_GROUP_FIELDS
    assert set(spec["autoscalerOptions"]) <= AUTOSCALER_FIELDS
    assert spec["autoscalerOptions"]["upscalingMode"] in UPSCALING_MODES
    for _, group in _groups(spec):
        # KubeRay's rayStartParams is map[string]string: numbers must be quoted.
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP_FIELDS, set(group) - WORKER_GROUP_FIELDS
    if name.startswith("rayjob"):
        job = _kind(K8S / name, "RayJob")
        assert job["apiVersion"] == "ray.io/v1"
        assert set(job["spec"]) <= RAYJOB_SPEC_FIELDS, set(job["spec"]) - RAYJOB_SPEC_FIELDS
        assert job["spec"]["submissionMode"] in SUBMISSION_MODES
    else:
        assert _kind(K8S / name, "RayCluster")["apiVersion"] == "ray.io/v1"


def test_cluster_launcher_config_validates_against_ray_schema() -> None:
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "cluster" / "aws.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(
        prepare_config(config)
    )  # what `ray up` runs first: defaults filled, then Ray's own checks
    broken = {**config, "docker": {**config["docker"], "imagee": "typo"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


# --- the cluster shape the spec asks for ---------------------------------------------------------------------


@pytest.mark.parametrize("name", MANIFESTS)
def test_cluster_shape(name: str) -> None:
    spec = _cluster_specs()[name]
    assert spec["rayVersion"] == _pinned("ray")
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no work on the head
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        pod = group["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        shm = next(v for v in pod["volumes"] if v["name"] == mounts["/dev/shm"])
        assert shm["emptyDir"]["medium"] == "Memory"
        memory_limit = _quantity_bytes(pod["containers"][0]["resources"]["limits"]["memory"])
        store = int(group["rayStartParams"]["object-store-memory"])
        assert store <= _quantity_bytes(shm["emptyDir"]["sizeLimit"]) < memory_limit
        for container in pod["containers"]:
            resources = container["resources"]
            assert resources["requests"] == resources["limits"], group["groupName"]
    gpu = _gpu_group(spec)
    pod = gpu["template"]["spec"]
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert _ray_start_resources(gpu["rayStartParams"]) == {INFERENCE_RESOURCE: 1}
    cpu_groups = [g for g in spec["workerGroupSpecs"] if _gpus(g) == 0]
    assert cpu_groups and all(
        INFERENCE_RESOURCE not in _ray_start_resources(g["rayStartParams"]) for g in cpu_groups
    )


def test_rayjobs_embed_the_raycluster_spec() -> None:
    specs = _cluster_specs()
    assert specs["rayjob-infer.yaml"] == specs["raycluster.yaml"]
    assert specs["rayjob-train.yaml"] == specs["raycluster.yaml"]
    for name in ("rayjob-infer.yaml", "rayjob-train.yaml"):
        job = _kind(K8S / name, "RayJob")["spec"]
        assert job["shutdownAfterJobFinishes"] is True
        assert job["ttlSecondsAfterFinished"] > 0 and job["activeDeadlineSeconds"] > 0


def test_images_agree_with_dockerfile_and_pins() -> None:
    images = _all_images()
    assert len(set(images.values())) == 1, images
    image = next(iter(images.values()))
    args, instructions = _dockerfile()
    ray_version, cuda = args["RAY_VERSION"], args["CUDA_TAG"]
    assert ray_version == _pinned("ray")
    assert re.fullmatch(r"cu12\d", cuda), f"CUDA 12 image expected, got {cuda}"
    base = [rest for word, rest in instructions if word == "FROM"]
    assert base == ["rayproject/ray:${RAY_VERSION}-py311-${CUDA_TAG}"]
    assert image.endswith(f":{_project_version()}-ray{ray_version}-py311-{cuda}"), image


def test_dockerfile_installs_with_constraints_offline_and_non_root() -> None:
    _, instructions = _dockerfile()
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert runs.count("-c constraints.txt") >= 2  # torch for CUDA 12, then the project, both under the pins
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    env = _dockerfile_env()
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["RAY_TRAIN_V2_ENABLED"] == "1"
    from pipelines.read import GDAL_SETTINGS

    assert {k: env.get(k) for k in GDAL_SETTINGS} == GDAL_SETTINGS
    for word, rest in instructions:
        if word == "COPY":
            sources = [t for t in shlex.split(rest) if not t.startswith("--")][:-1]
            assert all((REPO / s).exists() for s in sources), sources
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1 :]  # everything is excluded except what the image copies
    assert all(f"!{p}/" in ignore for p in ("common", "crobim", "pipelines", "jobs", "configs"))


def test_runtime_env_matches_code_and_rayjobs() -> None:
    from ray.runtime_env import RuntimeEnv

    from pipelines.read import GDAL_SETTINGS

    data = yaml.safe_load((INFRA / "runtime_env.yaml").read_text())
    RuntimeEnv(**data)  # Ray's own validation of the fields
    assert set(data) == {"env_vars"}  # no pip/conda/working_dir in production
    env = data["env_vars"]
    assert all(isinstance(v, str) for v in env.values())
    assert {k: env[k] for k in GDAL_SETTINGS} == GDAL_SETTINGS
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == env["RAY_TRAIN_V2_ENABLED"] == "1"
    for name in ("rayjob-infer.yaml", "rayjob-train.yaml"):
        job_env = yaml.safe_load(_kind(K8S / name, "RayJob")["spec"]["runtimeEnvYAML"])
        assert job_env == data, name


def test_no_credentials_in_infra() -> None:
    pattern = re.compile(
        r"AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|AKIA[0-9A-Z]{16}|private_key", re.IGNORECASE
    )
    for path in INFRA.rglob("*"):
        if path.is_file():
            assert not pattern.search(path.read_text()), path


def test_aws_launcher_shape() -> None:
    config = yaml.safe_load((INFRA / "cluster" / "aws.yaml").read_text())
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = types["ray.worker.gpu"]
    assert gpu["resources"] == {INFERENCE_RESOURCE: 1} and gpu["node_config"]["InstanceType"].startswith("g")
    for node_type in types.values():
        assert node_type["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    assert not config["setup_commands"]  # the image holds everything


# --- entrypoints are real jobs/ commands ---------------------------------------------------------------------


def test_infer_entrypoint_is_a_valid_region_job() -> None:
    script, argv = _entrypoint("rayjob-infer.yaml")
    assert script == "infer_region.py"
    job = _import_job(script)
    args = _parse_job_args(job, argv)
    job.config_from_args(args)  # the job's own validation (bbox, queries, required flags)
    assert (
        args.out.startswith("s3://") and args.model.startswith("s3://") and args.catalog.startswith("s3://")
    )
    spec = _cluster_specs()["rayjob-infer.yaml"]
    gpu = _gpu_group(spec)
    # The inference actors request the resource the GPU group advertises, and fit in its pods.
    assert args.inference_resource == INFERENCE_RESOURCE
    assert args.actors * args.gpus_per_actor <= gpu["maxReplicas"] * _gpus(gpu)
    pod_cpus = float(gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert args.cpus_per_actor <= pod_cpus
    runtime_env = yaml.safe_load(_kind(K8S / "rayjob-infer.yaml", "RayJob")["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["OMP_NUM_THREADS"] == str(int(args.cpus_per_actor))


def test_train_entrypoint_is_a_valid_training_job() -> None:
    script, argv = _entrypoint("rayjob-train.yaml")
    assert script == "train.py"
    job = _import_job(script)
    args = _parse_job_args(job, argv)
    config_path = _image_path_to_repo(args.config)
    assert config_path.is_file(), f"--config {args.config} is not in configs/"
    from crobim.training.config import load_train_config

    overrides = job._flag_overrides(args)
    cfg = load_train_config(str(config_path), overrides)  # the job's own config validation
    assert cfg.run.storage_path.startswith("s3://") and cfg.run.use_gpu
    gpu = _gpu_group(_cluster_specs()["rayjob-train.yaml"])
    assert cfg.run.num_workers <= gpu["maxReplicas"] * _gpus(gpu)
    pod_cpus = float(gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert cfg.run.cpus_per_worker <= pod_cpus
    # The dataset root and the initial weights (paper recipe) are on the shared read-only volume every worker
    # mounts: no node downloads anything.
    mounts = [m["mountPath"] for m in gpu["template"]["spec"]["containers"][0]["volumeMounts"]]
    local_paths = [
        args.data_root,
        *(str(v) for k, v in overrides if str(k).startswith("model_overrides.weights")),
    ]
    local_paths += [str(v) for k, v in overrides if k == "model_overrides.text.name_or_path"]
    assert len(local_paths) == 3
    for path in local_paths:
        assert any(path.startswith(m + "/") for m in mounts), path


@pytest.mark.parametrize("manifest", ["rayjob-infer.yaml", "rayjob-train.yaml"])
def test_entrypoint_with_an_unknown_flag_is_rejected(manifest: str) -> None:
    # The check above would catch a renamed flag: the job's parser refuses what it does not define.
    script, argv = _entrypoint(manifest)
    job = _import_job(script)
    with pytest.raises(AssertionError, match="rejects"):
        _parse_job_args(job, [*argv, "--no-such-flag", "1"])


def test_jobs_help_runs() -> None:
    for script in ("infer_region.py", "train.py"):
        if not (REPO / "jobs" / script).exists():
            continue
        import subprocess

        result = subprocess.run(
            [sys.executable, str(REPO / "jobs" / script), "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0 and "--address" in result.stdout, result.stderr[-2000:]
