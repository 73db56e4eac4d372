"""The Kubernetes runtime (runtime.py) and its parts, one job each: the API client and
informers (client.py), discovery of environments and instances (discovery.py) and of
their autoscale settings (autoscale_annotations.py), an environment's prefix in names and
image tags (prefixes.py), the runtime's view of the cluster for its stores
(cluster_view.py), replicas as ready endpoints (endpoints.py), writes to Deployments
(scale.py), Deployments an HPA scales (hpa.py), production's colours (colours.py), API keys
in Secrets (keys.py), ephemeral environments as namespaces (ephemeral.py; their records in
ephemeral_records.py, the copies of the source's objects in ephemeral_copies.py), last
activity (activity.py), and the Lease that makes one controller the leader (leader.py)."""

from .runtime import KubernetesRuntime

__all__ = ["KubernetesRuntime"]
