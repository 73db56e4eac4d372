"""A fake Kubernetes API server for tests, with a simulated kubelet that runs real processes.

    from tests.kube import FakeKube

    async with FakeKube(tmp_path, start_delay=0.05, history=1000) as kube:
        api = await kubernetes_asyncio.config.new_client_from_config(config_file=kube.kubeconfig)

See server.py for the test hooks (compact, drop_watches, fail_next, requests_seen, pod_pids).
"""

from .errors import ApiError
from .server import FakeKube

__all__ = ["ApiError", "FakeKube"]
