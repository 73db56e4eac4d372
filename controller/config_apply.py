"""Apply: the running system reconciled with an edited (already valid) config."""

from __future__ import annotations

from typing import Any

from .ephemeral_specs import config_clashes
from .releases import DeployRefused
from .scaler import Scaler
from .spec import Config

__all__ = ["apply_config"]


def apply_config(scaler: Scaler, config: Config) -> dict[str, Any]:
    """Reconcile with an edited (already valid) config; all or nothing.

    Instances and their policies change live. What needs a restart (where
    it listens, the runtime, state_dir, the domain every host is made of,
    the proxy's own settings) refuses the whole change, so the running
    system keeps the old config.
    """
    restart = [name for name, old, new in (
        ("listen", (scaler.config.proxy.host, scaler.config.proxy.port, scaler.config.controller),
         (config.proxy.host, config.proxy.port, config.controller)),
        ("runtime", scaler.config.runtime, config.runtime),
        ("state_dir", scaler.config.state_dir, config.state_dir),
        ("domain", scaler.config.domain, config.domain),
        ("proxy", scaler.config.proxy, config.proxy),
        ("kubernetes", scaler.config.kubernetes, config.kubernetes),
    ) if old != new]
    if restart:
        raise DeployRefused(f"{', '.join(restart)} changed: that needs a restart of "
                            "wakegate, not apply")
    # One name, one environment: an ephemeral one keeps its name until it is deleted.
    taken = config_clashes(config, (r.name for r in scaler.runtime.ephemeral.records()))
    if taken:
        ephemeral, own = taken[0]
        raise DeployRefused(f"environments.{own}: an ephemeral environment of that name "
                            f"exists; delete it first (wakegate env delete {ephemeral})")
    before = set(scaler.instances)
    scaler.config = config
    if scaler.runtime.versions_on_objects:
        # Kubernetes: the instances are the cluster's; policies come from the file.
        scaler.runtime.config_changed(config)
    else:
        scaler.sync_instances(scaler.wanted_specs(config))
    # The operator may have fixed what made a service crash: try it again.
    backed_off = [inst for inst in scaler.instances.values() if inst.failures_in_a_row]
    for inst in backed_off:
        inst.end_backoff()
    if backed_off:
        scaler.publish()
        for inst in backed_off:
            if not inst.spec.environment.sleeps:
                scaler.request_activation(inst.key)  # always on: started now, not later
    after = set(scaler.instances)
    return {"added": sorted("/".join(k) for k in after - before),
            "removed": sorted("/".join(k) for k in before - after),
            "instances": len(after)}
