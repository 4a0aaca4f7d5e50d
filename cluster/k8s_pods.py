"""Pod templates of the Ray head and worker pods, built with the Kubernetes client's models."""

from __future__ import annotations

from pathlib import PurePosixPath

from kubernetes import client as k8s

from cluster import k8s_lifecycle, kuberay
from cluster.cloud_presets import GPU_RESOURCE, pool_node_selector, pool_tolerations
from serve_app.config import ClusterConfig, ConfigError
from serve_app.kubernetes_config import NodePoolConfig, TolerationConfig
from serve_app.model_source import CACHE_ENV
from serve_app.tracing import exporter_env

# Where the ConfigMap holding the cluster config is mounted; `llmcluster batch` reads it from there.
CONFIG_DIR = "/etc/llmcluster"
CONFIG_FILE = "cluster.yaml"
SHM_VOLUME = "dshm"
SHM_DIR = "/dev/shm"
CACHE_VOLUME = "model-cache"
CONFIG_VOLUME = "cluster-config"
KEYS_VOLUME = "api-keys"
# The item of the API keys Secret holding the keys file; the Secret is created by hand, never rendered.
KEYS_SECRET_ITEM = "keys.yaml"


def common_labels(config: ClusterConfig) -> dict[str, str]:
    return {"app.kubernetes.io/name": "llmcluster", "app.kubernetes.io/instance": config.cluster.name,
            "app.kubernetes.io/managed-by": "llmcluster"}


def config_map_name(config: ClusterConfig) -> str:
    return f"{config.cluster.name}-config"


def cache_claim_name(config: ClusterConfig) -> str:
    return f"{config.cluster.name}-model-cache"


def keys_secret_name(config: ClusterConfig) -> str:
    return f"{config.cluster.name}-api-keys"


def keys_secret_command(config: ClusterConfig) -> str:
    """How to create the API keys Secret; it is never rendered, so keys stay out of the repository."""
    return (f"kubectl create secret generic {keys_secret_name(config)} --namespace {config.kubernetes.namespace} "
            f"--from-file={KEYS_SECRET_ITEM}=PATH/TO/keys.yaml")


def keys_file_in_pods(config: ClusterConfig) -> PurePosixPath | None:
    """router.auth.keys_file, where the pods find the API keys Secret; None when unset.

    The Secret is mounted at the file's directory, hiding what the image has there: ConfigError unless that
    directory is one of its own (or the config's, then both share one volume)."""
    if config.router.auth.keys_file is None:
        return None
    path = PurePosixPath(config.router.auth.keys_file)
    problem = _keys_dir_problem(config, path)
    if problem:
        raise ConfigError(f"router.auth.keys_file {str(path)!r}: {problem}. On Kubernetes the Secret "
                          f"{keys_secret_name(config)} is mounted at the file's directory: give it one of its own, "
                          f"e.g. {CONFIG_DIR}/keys.yaml or /etc/llmcluster-keys/keys.yaml")
    return path


def _keys_dir_problem(config: ClusterConfig, path: PurePosixPath) -> str | None:
    if not path.is_absolute():
        return "must be an absolute path"
    directory = path.parent
    if len(directory.parts) < 3:
        return f"{directory} is a top-level directory"
    if directory == PurePosixPath(CONFIG_DIR):
        return f"{CONFIG_FILE} is the config's own file there" if path.name == CONFIG_FILE else None
    for mount in (CONFIG_DIR, SHM_DIR, config.kubernetes.model_cache.mount_path):
        other = PurePosixPath(mount)
        if directory.is_relative_to(other) or other.is_relative_to(directory):
            return f"{directory} overlaps the volume mounted at {other}"
    return None


def head_template(config: ClusterConfig, image: str, component: str, *, serving: bool) -> k8s.V1PodTemplateSpec:
    """The head pod; `serving` pods (the RayService's, not a batch job's) also get the router's API keys."""
    head = config.kubernetes.head
    # No readiness probe of ours: KubeRay deploys the Serve application only once the head is Ready, so a probe
    # on /ready would wait forever; the head keeps KubeRay's probes, and Ray stops with it at once.
    container = _ray_container(config, kuberay.HEAD_CONTAINER, image, kuberay.HEAD_PORTS,
                               _resources(head.cpus, head.memory, gpus=0), serving,
                               lifecycle=k8s_lifecycle.ray_stop_on_stop())
    return _template(config, component, container, head.node_selector, head.tolerations, serving)


def worker_template(config: ClusterConfig, image: str, component: str, pool: NodePoolConfig, *,
                    serving: bool) -> k8s.V1PodTemplateSpec:
    """A worker pod of `pool`. A serving one (the RayService's) is ready on the router's /ready and, when it
    stops, drains: its model replicas move to other nodes, finishing their requests, before Ray stops."""
    cloud = config.kubernetes.cloud
    resources = _resources(pool.cpus, pool.memory, gpus=pool.gpus_per_node)
    if serving:
        container = _ray_container(config, kuberay.WORKER_CONTAINER, image, kuberay.SERVING_WORKER_PORTS,
                                   resources, serving, lifecycle=k8s_lifecycle.drain_on_stop(config),
                                   readiness=k8s_lifecycle.readiness_probe(config))
    else:
        container = _ray_container(config, kuberay.WORKER_CONTAINER, image, kuberay.WORKER_PORTS, resources,
                                   serving, lifecycle=k8s_lifecycle.ray_stop_on_stop())
    grace_s = k8s_lifecycle.termination_grace_s(config) if serving else None
    return _template(config, component, container, pool_node_selector(cloud, pool), pool_tolerations(cloud, pool),
                     serving, grace_s)


def _template(config: ClusterConfig, component: str, container: k8s.V1Container, node_selector: dict[str, str],
              tolerations: tuple[TolerationConfig, ...], serving: bool,
              grace_s: int | None = None) -> k8s.V1PodTemplateSpec:
    return k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels={**common_labels(config), "app.kubernetes.io/component": component}),
        spec=k8s.V1PodSpec(
            containers=[container],
            volumes=_volumes(config, serving),
            node_selector=node_selector or None,
            tolerations=[_toleration(t) for t in tolerations] or None,
            termination_grace_period_seconds=grace_s,
        ),
    )


def _ray_container(config: ClusterConfig, name: str, image: str, ports: dict[str, int],
                   resources: k8s.V1ResourceRequirements, serving: bool, *, lifecycle: k8s.V1Lifecycle,
                   readiness: k8s.V1Probe | None = None) -> k8s.V1Container:
    return k8s.V1Container(
        name=name,
        image=image,
        image_pull_policy=config.kubernetes.image_pull_policy,
        ports=[k8s.V1ContainerPort(name=port_name, container_port=port) for port_name, port in ports.items()],
        resources=resources,
        env=_env(config, serving),
        volume_mounts=_volume_mounts(config, serving),
        # A container with no probe of its own gets KubeRay's; KubeRay keeps one given here.
        readiness_probe=readiness,
        lifecycle=lifecycle,
    )


def _volume_mounts(config: ClusterConfig, serving: bool) -> list[k8s.V1VolumeMount]:
    mounts = [
        k8s.V1VolumeMount(name=SHM_VOLUME, mount_path=SHM_DIR),
        k8s.V1VolumeMount(name=CACHE_VOLUME, mount_path=config.kubernetes.model_cache.mount_path),
        k8s.V1VolumeMount(name=CONFIG_VOLUME, mount_path=CONFIG_DIR, read_only=True),
    ]
    keys_file = keys_file_in_pods(config) if serving else None
    if keys_file is not None and str(keys_file.parent) != CONFIG_DIR:
        # The whole directory, not a subPath: a subPath mount never sees an updated Secret.
        mounts.append(k8s.V1VolumeMount(name=KEYS_VOLUME, mount_path=str(keys_file.parent), read_only=True))
    return mounts


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
    # Serve's proxy and replicas read the trace collector's address from their environment (serve_app.tracing).
    env += [k8s.V1EnvVar(name=name, value=value) for name, value in exporter_env(config.router.tracing).items()]
    if serving and config.router.api_keys_env:
        # Required: a router told to check keys refuses to start without them, so fail at the pod instead.
        env.append(k8s.V1EnvVar(name=config.router.api_keys_env, value_from=k8s.V1EnvVarSource(
            secret_key_ref=k8s.V1SecretKeySelector(name=settings.api_keys_secret.name,
                                                   key=settings.api_keys_secret.key))))
    return env


def _volumes(config: ClusterConfig, serving: bool) -> list[k8s.V1Volume]:
    cache = config.kubernetes.model_cache
    if cache.volume == "pvc":
        cache_source = {"persistent_volume_claim": k8s.V1PersistentVolumeClaimVolumeSource(
            claim_name=cache_claim_name(config))}
    else:
        cache_source = {"empty_dir": k8s.V1EmptyDirVolumeSource(size_limit=cache.size)}
    volumes = [
        k8s.V1Volume(name=SHM_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(
            medium="Memory", size_limit=config.kubernetes.shm_size)),
        k8s.V1Volume(name=CACHE_VOLUME, **cache_source),
        k8s.V1Volume(name=CONFIG_VOLUME, config_map=k8s.V1ConfigMapVolumeSource(name=config_map_name(config))),
    ]
    keys_file = keys_file_in_pods(config) if serving else None
    if keys_file is None:
        return volumes
    # Required (optional: false): a router told to check keys must not start without them.
    items = [k8s.V1KeyToPath(key=KEYS_SECRET_ITEM, path=keys_file.name)]
    if str(keys_file.parent) == CONFIG_DIR:  # one directory, one mount: the config and the keys side by side
        volumes[-1] = k8s.V1Volume(name=CONFIG_VOLUME, projected=k8s.V1ProjectedVolumeSource(sources=[
            k8s.V1VolumeProjection(config_map=k8s.V1ConfigMapProjection(name=config_map_name(config))),
            k8s.V1VolumeProjection(secret=k8s.V1SecretProjection(
                name=keys_secret_name(config), items=items, optional=False))]))
    else:
        volumes.append(k8s.V1Volume(name=KEYS_VOLUME, secret=k8s.V1SecretVolumeSource(
            secret_name=keys_secret_name(config), items=items, optional=False)))
    return volumes


def _toleration(toleration: TolerationConfig) -> k8s.V1Toleration:
    return k8s.V1Toleration(key=toleration.key, operator=toleration.operator, value=toleration.value,
                            effect=toleration.effect)
