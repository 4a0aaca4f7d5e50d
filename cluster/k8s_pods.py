"""Pod templates of the Ray head and worker pods, built with the Kubernetes client's models."""

from __future__ import annotations

from kubernetes import client as k8s

from cluster import kuberay
from cluster.cloud_presets import GPU_RESOURCE, pool_node_selector, pool_tolerations
from serve_app.config import ClusterConfig
from serve_app.kubernetes_config import NodePoolConfig, TolerationConfig
from serve_app.model_source import CACHE_ENV

# Where the ConfigMap holding the cluster config is mounted; `llmcluster batch` reads it from there.
CONFIG_DIR = "/etc/llmcluster"
CONFIG_FILE = "cluster.yaml"
SHM_VOLUME = "dshm"
CACHE_VOLUME = "model-cache"
CONFIG_VOLUME = "cluster-config"


def common_labels(config: ClusterConfig) -> dict[str, str]:
    return {"app.kubernetes.io/name": "llmcluster", "app.kubernetes.io/instance": config.cluster.name,
            "app.kubernetes.io/managed-by": "llmcluster"}


def config_map_name(config: ClusterConfig) -> str:
    return f"{config.cluster.name}-config"


def cache_claim_name(config: ClusterConfig) -> str:
    return f"{config.cluster.name}-model-cache"


def head_template(config: ClusterConfig, image: str, component: str, *, serving: bool) -> k8s.V1PodTemplateSpec:
    """The head pod; `serving` pods (the RayService's, not a batch job's) also get the router's API keys."""
    head = config.kubernetes.head
    container = _ray_container(config, kuberay.HEAD_CONTAINER, image, kuberay.HEAD_PORTS,
                               _resources(head.cpus, head.memory, gpus=0), serving)
    return _template(config, component, container, head.node_selector, head.tolerations)


def worker_template(config: ClusterConfig, image: str, component: str, pool: NodePoolConfig, *,
                    serving: bool) -> k8s.V1PodTemplateSpec:
    cloud = config.kubernetes.cloud
    container = _ray_container(config, kuberay.WORKER_CONTAINER, image, kuberay.WORKER_PORTS,
                               _resources(pool.cpus, pool.memory, gpus=pool.gpus_per_node), serving)
    return _template(config, component, container, pool_node_selector(cloud, pool), pool_tolerations(cloud, pool))


def _template(config: ClusterConfig, component: str, container: k8s.V1Container, node_selector: dict[str, str],
              tolerations: tuple[TolerationConfig, ...]) -> k8s.V1PodTemplateSpec:
    return k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels={**common_labels(config), "app.kubernetes.io/component": component}),
        spec=k8s.V1PodSpec(
            containers=[container],
            volumes=_volumes(config),
            node_selector=node_selector or None,
            tolerations=[_toleration(t) for t in tolerations] or None,
        ),
    )


def _ray_container(config: ClusterConfig, name: str, image: str, ports: dict[str, int],
                   resources: k8s.V1ResourceRequirements, serving: bool) -> k8s.V1Container:
    return k8s.V1Container(
        name=name,
        image=image,
        image_pull_policy=config.kubernetes.image_pull_policy,
        ports=[k8s.V1ContainerPort(name=port_name, container_port=port) for port_name, port in ports.items()],
        resources=resources,
        env=_env(config, serving),
        volume_mounts=[
            k8s.V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm"),
            k8s.V1VolumeMount(name=CACHE_VOLUME, mount_path=config.kubernetes.model_cache.mount_path),
            k8s.V1VolumeMount(name=CONFIG_VOLUME, mount_path=CONFIG_DIR, read_only=True),
        ],
        # Lets Ray hand its work over before the pod goes, instead of being killed mid-request. The handler
        # takes `exec` by its wire name: the client silently drops it when given as `var_exec`.
        lifecycle=k8s.V1Lifecycle(pre_stop=k8s.V1LifecycleHandler(
            **{"exec": k8s.V1ExecAction(command=["/bin/sh", "-c", "ray stop"])})),
    )


def _resources(cpus: int, memory: str, gpus: int) -> k8s.V1ResourceRequirements:
    # Requests equal limits: Ray advertises the limits as the pod's capacity, so the pod must really get them.
    amounts = {"cpu": str(cpus), "memory": memory}
    if gpus:
        amounts[GPU_RESOURCE] = str(gpus)
    return k8s.V1ResourceRequirements(requests=dict(amounts), limits=dict(amounts))


def _env(config: ClusterConfig, serving: bool) -> list[k8s.V1EnvVar]:
    settings = config.kubernetes
    cache = settings.model_cache.mount_path.rstrip("/")
    env = [
        k8s.V1EnvVar(name="HF_HOME", value=f"{cache}/huggingface"),
        k8s.V1EnvVar(name=CACHE_ENV, value=f"{cache}/llmcluster"),
        # Optional: public models need no token, and a missing Secret must not keep pods from starting.
        k8s.V1EnvVar(name="HF_TOKEN", value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(
            name=settings.hf_token_secret.name, key=settings.hf_token_secret.key, optional=True))),
    ]
    if serving and config.router.api_keys_env:
        # Required: a router told to check keys refuses to start without them, so fail at the pod instead.
        env.append(k8s.V1EnvVar(name=config.router.api_keys_env, value_from=k8s.V1EnvVarSource(
            secret_key_ref=k8s.V1SecretKeySelector(name=settings.api_keys_secret.name,
                                                   key=settings.api_keys_secret.key))))
    return env


def _volumes(config: ClusterConfig) -> list[k8s.V1Volume]:
    cache = config.kubernetes.model_cache
    if cache.volume == "pvc":
        cache_source = {"persistent_volume_claim": k8s.V1PersistentVolumeClaimVolumeSource(
            claim_name=cache_claim_name(config))}
    else:
        cache_source = {"empty_dir": k8s.V1EmptyDirVolumeSource(size_limit=cache.size)}
    return [
        k8s.V1Volume(name=SHM_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(
            medium="Memory", size_limit=config.kubernetes.shm_size)),
        k8s.V1Volume(name=CACHE_VOLUME, **cache_source),
        k8s.V1Volume(name=CONFIG_VOLUME, config_map=k8s.V1ConfigMapVolumeSource(name=config_map_name(config))),
    ]


def _toleration(toleration: TolerationConfig) -> k8s.V1Toleration:
    return k8s.V1Toleration(key=toleration.key, operator=toleration.operator, value=toleration.value,
                            effect=toleration.effect)
