"""Field names of KubeRay's ray.io/v1 CRDs (RayCluster, RayJob) at the levels we write.

A structural check, not a full OpenAPI validation: it catches misspelled or misplaced
fields (which the Kubernetes API server would drop or reject) without a cluster.
"""

from __future__ import annotations

from typing import Any

RAY_CLUSTER_SPEC = {
    "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec",
    "workerGroupSpecs", "headServiceAnnotations", "suspend", "gcsFaultToleranceOptions",
    "managedBy", "upgradeStrategy", "authOptions",
}
HEAD_GROUP_SPEC = {"rayStartParams", "template", "serviceType", "headService", "enableIngress", "resources", "labels"}
WORKER_GROUP_SPEC = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
    "scaleStrategy", "numOfHosts", "suspend", "idleTimeoutSeconds", "resources", "labels",
}
RAY_JOB_SPEC = {
    "entrypoint", "rayClusterSpec", "clusterSelector", "shutdownAfterJobFinishes",
    "ttlSecondsAfterFinished", "runtimeEnvYAML", "submissionMode", "jobId", "metadata",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "activeDeadlineSeconds",
    "backoffLimit", "submitterPodTemplate", "submitterConfig", "suspend", "deletionStrategy",
    "managedBy",
}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec"}
# Kubernetes PodSpec / Container fields used in our templates (a subset of the real sets).
POD_SPEC = {
    "containers", "volumes", "tolerations", "nodeSelector", "affinity", "serviceAccountName",
    "initContainers", "restartPolicy", "imagePullSecrets", "priorityClassName",
}
CONTAINER = {
    "name", "image", "command", "args", "env", "envFrom", "resources", "ports",
    "volumeMounts", "lifecycle", "imagePullPolicy", "securityContext", "workingDir",
}
GPU_RESOURCE = "nvidia.com/gpu"


def _unknown(mapping: dict[str, Any], allowed: set[str], where: str) -> list[str]:
    return [f"{where}.{key}: unknown field" for key in mapping if key not in allowed]


def _check_template(template: Any, where: str, wants_gpu: bool) -> list[str]:
    problems: list[str] = []
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        return [f"{where}: template.spec (a PodSpec) is required"]
    pod = template["spec"]
    problems += _unknown(pod, POD_SPEC, f"{where}.spec")
    containers = pod.get("containers")
    if not isinstance(containers, list) or not containers:
        return problems + [f"{where}.spec.containers: at least one container is required"]
    gpus = 0
    for index, container in enumerate(containers):
        cwhere = f"{where}.spec.containers[{index}]"
        problems += _unknown(container, CONTAINER, cwhere)
        for required in ("name", "image"):
            if not container.get(required):
                problems.append(f"{cwhere}.{required}: required")
        limits = (container.get("resources") or {}).get("limits") or {}
        if GPU_RESOURCE in limits:
            gpus += int(limits[GPU_RESOURCE])
    if wants_gpu and gpus < 1:
        problems.append(f"{where}: a GPU group needs '{GPU_RESOURCE}' in a container's limits")
    if not wants_gpu and gpus:
        problems.append(f"{where}: the head should not request GPUs")
    return problems


def check_ray_cluster_spec(spec: Any, where: str = "spec") -> list[str]:
    if not isinstance(spec, dict):
        return [f"{where}: must be a mapping"]
    problems = _unknown(spec, RAY_CLUSTER_SPEC, where)
    if not isinstance(spec.get("rayVersion"), str):
        problems.append(f"{where}.rayVersion: required, a quoted string")
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        problems.append(f"{where}.headGroupSpec: required")
    else:
        problems += _unknown(head, HEAD_GROUP_SPEC, f"{where}.headGroupSpec")
        problems += _string_params(head.get("rayStartParams"), f"{where}.headGroupSpec.rayStartParams")
        problems += _check_template(head.get("template"), f"{where}.headGroupSpec.template", False)
    groups = spec.get("workerGroupSpecs") or []
    if not isinstance(groups, list):
        return problems + [f"{where}.workerGroupSpecs: must be a list"]
    for index, group in enumerate(groups):
        gwhere = f"{where}.workerGroupSpecs[{index}]"
        problems += _unknown(group, WORKER_GROUP_SPEC, gwhere)
        if not group.get("groupName"):
            problems.append(f"{gwhere}.groupName: required")
        counts = [group.get(k) for k in ("minReplicas", "replicas", "maxReplicas")]
        if not all(isinstance(c, int) and c >= 0 for c in counts):
            problems.append(f"{gwhere}: minReplicas/replicas/maxReplicas must be integers >= 0")
        elif not counts[0] <= counts[1] <= counts[2]:
            problems.append(f"{gwhere}: needs minReplicas <= replicas <= maxReplicas")
        problems += _string_params(group.get("rayStartParams"), f"{gwhere}.rayStartParams")
        problems += _check_template(group.get("template"), f"{gwhere}.template", True)
    return problems


def _string_params(params: Any, where: str) -> list[str]:
    if params is None:
        return [f"{where}: required (may be empty)"]
    if not isinstance(params, dict):
        return [f"{where}: must be a mapping"]
    return [f"{where}.{k}: values must be strings" for k, v in params.items() if not isinstance(v, str)]


def check_manifest(doc: Any) -> list[str]:
    """Problems of one RayCluster or RayJob document; empty when it looks right."""
    if not isinstance(doc, dict):
        return ["document: must be a mapping"]
    problems = _unknown(doc, TOP_LEVEL, "document")
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion: expected ray.io/v1, got {doc.get('apiVersion')!r}")
    if not (doc.get("metadata") or {}).get("name"):
        problems.append("metadata.name: required")
    kind = doc.get("kind")
    spec = doc.get("spec")
    if kind == "RayCluster":
        problems += check_ray_cluster_spec(spec)
    elif kind == "RayJob":
        if not isinstance(spec, dict):
            return problems + ["spec: must be a mapping"]
        problems += _unknown(spec, RAY_JOB_SPEC, "spec")
        if not isinstance(spec.get("entrypoint"), str) or not spec["entrypoint"].strip():
            problems.append("spec.entrypoint: required")
        if spec.get("submissionMode", "K8sJobMode") not in SUBMISSION_MODES:
            problems.append(f"spec.submissionMode: one of {sorted(SUBMISSION_MODES)}")
        if "runtimeEnvYAML" in spec and not isinstance(spec["runtimeEnvYAML"], str):
            problems.append("spec.runtimeEnvYAML: must be a YAML string, not a mapping")
        if "ttlSecondsAfterFinished" in spec and not (
            isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
        ):
            problems.append("spec.ttlSecondsAfterFinished: must be an integer >= 0")
        for key in ("entrypointNumCpus", "entrypointNumGpus"):
            value = spec.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                problems.append(f"spec.{key}: must be a number >= 0")
        if "shutdownAfterJobFinishes" in spec and not isinstance(spec["shutdownAfterJobFinishes"], bool):
            problems.append("spec.shutdownAfterJobFinishes: must be true or false")
        if "rayClusterSpec" in spec:
            problems += check_ray_cluster_spec(spec["rayClusterSpec"], "spec.rayClusterSpec")
        elif "clusterSelector" not in spec:
            problems.append("spec: needs rayClusterSpec or clusterSelector")
    else:
        problems.append(f"kind: expected RayCluster or RayJob, got {kind!r}")
    return problems
