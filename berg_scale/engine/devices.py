"""Which device a worker computes on, and a report of it for logs, markers and tests.

Ray gives each GPU actor its own GPU by setting CUDA_VISIBLE_DEVICES, so inside the
actor the assigned GPU is always `cuda:0`. Workers without a GPU (CPU mode, or GPUs
simulated on a CPU machine) run on the CPU.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from berg_scale.errors import BergScaleError


def choose_device(requested: str = "auto") -> Any:
    import torch

    cuda = torch.cuda.is_available()
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda":
        if not cuda:
            raise BergScaleError(
                "resources.device is 'cuda' but this worker sees no CUDA device: "
                "use device 'auto' or give workers a GPU (resources.gpus_per_worker)"
            )
        return torch.device("cuda:0")
    return torch.device("cuda:0") if cuda else torch.device("cpu")


def describe_worker(device: Any, worker_index: int) -> dict[str, Any]:
    """Where this worker runs: Ray GPU ids, CUDA_VISIBLE_DEVICES, device, host, pid."""
    info: dict[str, Any] = {
        "worker": worker_index,
        "device": str(device),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "ray_gpu_ids": [],
    }
    try:
        import ray

        if ray.is_initialized():
            info["ray_gpu_ids"] = [str(gpu) for gpu in ray.get_gpu_ids()]
            info["node_id"] = ray.get_runtime_context().get_node_id()
            info["actor_id"] = ray.get_runtime_context().get_actor_id()
    except Exception:  # noqa: BLE001 - the description is informative only
        pass
    if str(device).startswith("cuda"):
        import torch

        info["gpu_name"] = torch.cuda.get_device_name(device)
    return info
