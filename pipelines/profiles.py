"""Resource profiles (``kfp.profiles`` in params.yaml) applied to pipeline tasks.

A profile says what a task asks of the cluster: CPU and memory requests and limits, an
accelerator type and count, node selector labels and tolerations for a GPU node pool, and
an in-memory ``/dev/shm`` for data-loader workers. :func:`apply` puts them on a task with
kfp (resources, accelerators) and kfp-kubernetes (node selectors, tolerations, empty-dir
volume), so they land in the compiled IR YAML. None of them has any effect under
kfp.local: :func:`ignored_locally` says, per task, what a local run did not apply.
"""

from __future__ import annotations

from kfp import dsl, kubernetes

from components.config import Profile


def apply(task: dsl.PipelineTask, profile: Profile) -> dsl.PipelineTask:
    """Put a profile's cluster settings on a task."""
    if profile.cpu_request:
        task.set_cpu_request(profile.cpu_request)
    if profile.cpu_limit:
        task.set_cpu_limit(profile.cpu_limit)
    if profile.memory_request:
        task.set_memory_request(profile.memory_request)
    if profile.memory_limit:
        task.set_memory_limit(profile.memory_limit)
    if profile.wants_gpu:
        task.set_accelerator_type(profile.accelerator_type)
        task.set_accelerator_limit(profile.accelerator_count)
    for label, value in profile.node_selector.items():
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for tol in profile.tolerations:
        kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value,
                                  effect=tol.effect)
    if profile.shm_size:
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm",
                                   medium="Memory", size_limit=profile.shm_size)
    return task


def ignored_locally(profile: Profile) -> list[str]:
    """The profile's settings that kfp.local does not apply, in words."""
    out = []
    cpu = "/".join(v for v in (profile.cpu_request, profile.cpu_limit) if v)
    if cpu:
        out.append(f"cpu {cpu}")
    memory = "/".join(v for v in (profile.memory_request, profile.memory_limit) if v)
    if memory:
        out.append(f"memory {memory}")
    if profile.wants_gpu:
        out.append(f"accelerator {profile.accelerator_count}x {profile.accelerator_type}")
    if profile.node_selector:
        out.append("node selector " + ", ".join(f"{k}={v}" for k, v in
                                                 profile.node_selector.items()))
    if profile.tolerations:
        out.append("tolerations " + ", ".join(t.key for t in profile.tolerations))
    if profile.shm_size:
        out.append(f"/dev/shm {profile.shm_size}")
    return out
