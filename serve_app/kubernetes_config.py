"""The `kubernetes` section of a cluster config: image, namespace, cloud, node pools, head, volumes and secrets."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The llmcluster version the default image is built from; a unit test keeps it equal to pyproject's version.
IMAGE_VERSION = "0.1.0"
IMAGE_REPOSITORY = "ghcr.io/llmcluster/llmcluster"
# A Kubernetes quantity such as 16Gi, 500M or 1.5Ti.
QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TolerationConfig(_Section):
    key: str = Field(description="Taint key the pod tolerates, e.g. nvidia.com/gpu.")
    operator: Literal["Exists", "Equal"] = Field("Exists", description="Exists matches any value; Equal needs value.")
    value: str | None = Field(None, description="Taint value to match (operator Equal only).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        "NoSchedule", description="Taint effect tolerated; empty tolerates every effect.")

    @model_validator(mode="after")
    def _value_needs_equal(self) -> TolerationConfig:
        if (self.value is not None) != (self.operator == "Equal"):
            raise ValueError("toleration value is required with operator Equal and not allowed with Exists")
        return self


class NodePoolConfig(_Section):
    name: str = Field(description="Pool name: the worker group's name and the Ray resource node_pool:<name> that "
                                  "models' resources.node_pool pin replicas to.",
                      pattern=DNS_LABEL, max_length=30)
    gpus_per_node: int = Field(description="GPUs of one node (and one Ray worker pod); 0 for a CPU pool.", ge=0)
    accelerator: str | None = Field(
        None, description="GPU type of the pool in Ray's naming (H100, A100-80G, L4 ...); picks the cloud's "
                          "node label and is advertised as Ray resource accelerator_type:<type>.")
    cpus: int = Field(description="CPU cores each worker pod requests (and Ray schedules with).", ge=1)
    memory: str = Field(description="Memory each worker pod requests, as a Kubernetes quantity (e.g. 1000Gi).",
                        pattern=QUANTITY)
    min_nodes: int | None = Field(
        None, ge=0, description="Fewest worker pods; default: enough for the min_replicas of the models it hosts.")
    max_nodes: int | None = Field(
        None, ge=1, description="Most worker pods; default: enough for the max_replicas of the models it hosts.")
    instance_type: str | None = Field(
        None, description="Machine type to pin the pool to (label node.kubernetes.io/instance-type), "
                          "e.g. a3-highgpu-8g, p5.48xlarge, Standard_ND96isr_H100_v5.")
    accelerator_label: str | None = Field(
        None, description="Value of the cloud preset's accelerator node label, when the preset's own mapping "
                          "of `accelerator` does not fit (e.g. nvidia-h100-mega-80gb on GKE).")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Extra node labels the pods require; they override the preset's.")
    tolerations: tuple[TolerationConfig, ...] = Field(
        (), description="Extra taints the pods tolerate, added to the preset's GPU toleration.")

    @model_validator(mode="after")
    def _consistent(self) -> NodePoolConfig:
        if self.accelerator and not self.gpus_per_node:
            raise ValueError(f"node pool {self.name}: accelerator needs gpus_per_node > 0")
        if self.min_nodes is not None and self.max_nodes is not None and self.min_nodes > self.max_nodes:
            raise ValueError(f"node pool {self.name}: min_nodes must be <= max_nodes")
        return self


class HeadConfig(_Section):
    cpus: int = Field(2, ge=1, description="CPU cores of the head pod (GCS, dashboard, Serve controller, router).")
    memory: str = Field("8Gi", pattern=QUANTITY, description="Memory of the head pod.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the head pod requires.")
    tolerations: tuple[TolerationConfig, ...] = Field((), description="Taints the head pod tolerates.")


class ModelCacheConfig(_Section):
    volume: Literal["emptyDir", "pvc"] = Field(
        "emptyDir", description="emptyDir: each pod downloads weights itself; pvc: one shared PersistentVolumeClaim.")
    size: str = Field("200Gi", pattern=QUANTITY, description="Size of the claim, or the emptyDir's size limit.")
    storage_class: str | None = Field(None, description="StorageClass of the claim (pvc only); default: the "
                                                        "cluster's default class.")
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] = Field(
        "ReadWriteMany", description="Access mode of the claim; pods on several nodes share it only if ReadWriteMany.")
    mount_path: str = Field("/models", pattern=r"^/", description="Where the cache is mounted; HF_HOME and "
                                                                  "LLMCLUSTER_CACHE_DIR point below it.")

    @model_validator(mode="after")
    def _class_needs_pvc(self) -> ModelCacheConfig:
        if self.storage_class and self.volume != "pvc":
            raise ValueError("model_cache.storage_class is only allowed with volume: pvc")
        return self


class SecretKeyConfig(_Section):
    name: str = Field(description="Name of the Secret.", pattern=DNS_LABEL)
    key: str = Field(description="Key inside the Secret.", min_length=1)


class BatchJobConfig(_Section):
    input: str = Field("/models/batch/input.jsonl",
                       description="JSONL of OpenAI batch requests the RayJob's `llmcluster batch` reads, as a "
                                   "path in the head pod (the model cache volume is a good place).")
    output: str = Field("/models/batch/output.jsonl",
                        description="JSONL file the RayJob's `llmcluster batch` appends its answers to, as a path "
                                    "in the head pod; a rerun skips requests already answered there.")
    ttl_seconds_after_finished: int = Field(
        600, ge=0, description="Seconds the job's Ray cluster lives after the job ends (logs stay reachable).")


class KubernetesConfig(_Section):
    image: str | None = Field(
        None, description="Image of every Ray pod; default ghcr.io/llmcluster/llmcluster:<version>, with a -cpu "
                          "suffix when no model uses a GPU (see the Dockerfile).")
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = Field(
        "IfNotPresent", description="Kubernetes image pull policy of every container.")
    namespace: str = Field("default", pattern=DNS_LABEL, description="Namespace of every rendered object.")
    cloud: Literal["gke", "eks", "aks", "none"] = Field(
        "none", description="Cloud preset that supplies the GPU node labels and taints of each pool.")
    node_pools: tuple[NodePoolConfig, ...] = Field(
        (), description="Worker node pools; default: one pool per device/accelerator the models use.")
    head: HeadConfig = Field(default_factory=HeadConfig, description="The Ray head pod; it runs no model.")
    model_cache: ModelCacheConfig = Field(default_factory=ModelCacheConfig,
                                          description="Volume holding downloaded and converted model weights.")
    hf_token_secret: SecretKeyConfig = Field(
        SecretKeyConfig(name="hf-token", key="token"),
        description="Secret holding the Hugging Face token (HF_TOKEN); optional, gated models need it.")
    api_keys_secret: SecretKeyConfig = Field(
        SecretKeyConfig(name="llmcluster-api-keys", key="keys"),
        description="Secret holding the router's API keys; used only when router.api_keys_env is set.")
    shm_size: str = Field("16Gi", pattern=QUANTITY,
                          description="Size of /dev/shm (a memory volume) in every pod; NCCL and Ray need it.")
    upgrade_strategy: Literal["NewCluster", "None"] = Field(
        "NewCluster", description="How a changed cluster spec rolls out: NewCluster starts a second cluster and "
                                  "switches traffic once it serves (needs room for both); None updates in place.")
    idle_timeout_s: int = Field(600, ge=0, description="Seconds a worker pod stays idle before the autoscaler "
                                                       "removes it.")
    service_type: Literal["ClusterIP", "LoadBalancer", "NodePort"] = Field(
        "ClusterIP", description="Type of the Service exposing the OpenAI endpoint.")
    monitoring: bool = Field(True, description="Render a Prometheus Operator PodMonitor scraping every Ray pod.")
    batch: BatchJobConfig = Field(default_factory=BatchJobConfig, description="The batch-inference RayJob.")

    @model_validator(mode="after")
    def _pool_names_unique(self) -> KubernetesConfig:
        names = [pool.name for pool in self.node_pools]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"node pool names must be unique; repeated: {', '.join(duplicates)}")
        return self

    def pool(self, name: str) -> NodePoolConfig | None:
        return next((pool for pool in self.node_pools if pool.name == name), None)


def default_image(uses_gpu: bool) -> str:
    return f"{IMAGE_REPOSITORY}:{IMAGE_VERSION}" + ("" if uses_gpu else "-cpu")
