"""GPU node labels and taints of each cloud's managed Kubernetes, and a pool's scheduling constraints from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from serve_app.kubernetes_config import NodePoolConfig, TolerationConfig

INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
# The NVIDIA device plugin's resource; GKE taints GPU nodes with this key, EKS and most setups follow.
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = TolerationConfig(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")


@dataclass(frozen=True)
class CloudPreset:
    """How one cloud marks GPU nodes: a label naming the GPU type and the taints that keep other pods off."""

    accelerator_label: str | None = None
    # Ray accelerator type -> the label's value; a type missing here needs the pool's accelerator_label.
    accelerator_values: dict[str, str] = field(default_factory=dict)
    # A label every GPU node carries whatever its type (AKS labels the vendor, not the model).
    fixed_value: str | None = None
    gpu_tolerations: tuple[TolerationConfig, ...] = (GPU_TOLERATION,)


PRESETS = MappingProxyType({
    "gke": CloudPreset(
        accelerator_label="cloud.google.com/gke-accelerator",
        accelerator_values={
            "H100": "nvidia-h100-80gb", "H200": "nvidia-h200-141gb", "B200": "nvidia-b200",
            "A100-80G": "nvidia-a100-80gb", "A100-40G": "nvidia-tesla-a100", "A100": "nvidia-tesla-a100",
            "L4": "nvidia-l4", "T4": "nvidia-tesla-t4", "V100": "nvidia-tesla-v100",
        }),
    # Karpenter's well-known label; managed node groups without Karpenter pin pools with instance_type.
    "eks": CloudPreset(
        accelerator_label="karpenter.k8s.aws/instance-gpu-name",
        accelerator_values={
            "H100": "h100", "H200": "h200", "B200": "b200", "A100-80G": "a100", "A100-40G": "a100", "A100": "a100",
            "L4": "l4", "L40S": "l40s", "A10G": "a10g", "T4": "t4", "V100": "v100",
        }),
    # AKS's GPU node pools are usually tainted sku=gpu:NoSchedule, as Azure's GPU guide recommends.
    "aks": CloudPreset(
        accelerator_label="kubernetes.azure.com/accelerator", fixed_value="nvidia",
        gpu_tolerations=(GPU_TOLERATION, TolerationConfig(key="sku", operator="Equal", value="gpu"))),
    "none": CloudPreset(),
})


class PresetError(ValueError):
    """A pool whose GPU type the cloud preset cannot name."""


def pool_node_selector(cloud: str, pool: NodePoolConfig) -> dict[str, str]:
    """The node labels the pods of `pool` require: the preset's accelerator label, the machine type, the user's."""
    preset = PRESETS[cloud]
    labels: dict[str, str] = {}
    if pool.gpus_per_node and preset.accelerator_label:
        value = pool.accelerator_label or preset.fixed_value or preset.accelerator_values.get(pool.accelerator or "")
        if value is None:
            known = ", ".join(sorted(preset.accelerator_values))
            raise PresetError(
                f"kubernetes.node_pools[{pool.name}]: cloud {cloud} has no label value for accelerator "
                f"{pool.accelerator!r} (known: {known}); set accelerator_label")
        labels[preset.accelerator_label] = value
    if pool.instance_type:
        labels[INSTANCE_TYPE_LABEL] = pool.instance_type
    return {**labels, **pool.node_selector}


def pool_tolerations(cloud: str, pool: NodePoolConfig) -> tuple[TolerationConfig, ...]:
    preset_tolerations = PRESETS[cloud].gpu_tolerations if pool.gpus_per_node else ()
    return (*preset_tolerations, *pool.tolerations)
