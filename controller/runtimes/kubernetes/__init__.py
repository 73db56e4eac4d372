"""The Kubernetes runtime (runtime.py) and its parts, one job each: the API client and
informers (client.py), discovery of environments and instances (discovery.py), replicas
as ready endpoints (endpoints.py), writes to Deployments (scale.py), production's colours
(colours.py), API keys in Secrets (keys.py), last activity (activity.py), and the Lease
that makes one controller the leader (leader.py)."""

from .runtime import KubernetesRuntime

__all__ = ["KubernetesRuntime"]
