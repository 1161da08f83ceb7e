"""Ray's fake multi-node provider, with one runtime-env folder per fake node.

The fake autoscaler starts every node on this one machine in the head's session folder, so each
node's runtime-env agent unpacks a job's `working_dir` into the same `runtime_resources` folder; when
one node's agent deletes its copy (a node scaled down, its package no longer referenced) while
another node's worker imports from it, that worker dies with a FileNotFoundError inside
`_ray_pkg_<hash>` (seen in tests/test_elastic.py). Real nodes each have their own disk, so each fake
node here gets its own folder (`RayParams.runtime_env_dir_name`), as a real cluster would.

The autoscaler monitor loads this class by name (provider type `external`, module
`e2v_fake_provider.PerNodeRuntimeEnvProvider`): tests/fake_cluster.py puts this folder on the
PYTHONPATH of `ray start --head`, whose monitor process inherits it.
"""

from __future__ import annotations

import ray._private.parameter as parameter
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

NODE_ID_VARIABLE = "RAY_OVERRIDE_NODE_ID_FOR_TESTING"  # the fake node's id, in the params' env_vars


class _PerNodeParams(parameter.RayParams):
    """RayParams whose runtime-env folder is named after the fake node it starts."""

    def __init__(self, *args, **kwargs):
        node_id = (kwargs.get("env_vars") or {}).get(NODE_ID_VARIABLE)
        if node_id and not kwargs.get("runtime_env_dir_name"):
            kwargs["runtime_env_dir_name"] = f"runtime_resources_{node_id[-12:]}"
        super().__init__(*args, **kwargs)


class PerNodeRuntimeEnvProvider(FakeMultiNodeProvider):
    def _create_node_with_resources_and_labels(self, *args, **kwargs):
        # the base class builds its node's RayParams inside this call: swap the class it finds in
        # ray._private.parameter for the call's duration (under the provider's lock, which the base
        # class takes too: one node is created at a time)
        with self.lock:
            original = parameter.RayParams
            parameter.RayParams = _PerNodeParams
            try:
                return super()._create_node_with_resources_and_labels(*args, **kwargs)
            finally:
                parameter.RayParams = original
