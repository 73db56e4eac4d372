"""The sections that set up wakegate itself: listen, proxy, controller and kubernetes.

Each reads its section into the matching `spec` settings. An unset key takes
the default of that `spec` dataclass, so there is one place to change it.
"""

from __future__ import annotations

import os

from controller import spec
from controller.config.fields import byte_size, duration, parse_string, section, take, take_list
from controller.config.report import Report
from controller.config.values import (
    parse_address,
    parse_dns_label,
    parse_hostname,
    parse_network,
    parse_origin,
)

__all__ = [
    "read_controller",
    "read_kubernetes",
    "read_listen",
    "read_proxy",
]

LISTEN_KEYS = ("proxy", "controller")
CONTROLLER_KEYS = ("hostnames", "allowed_origins")
PROXY_KEYS = (
    "connect_timeout", "read_timeout", "max_body_size", "max_header_size", "trusted_proxies",
    "header_timeout", "keepalive_timeout",
)
# Keys that older versions took: still accepted, ignored, with a warning saying why.
OBSOLETE_PROXY_KEYS = {
    "retry_window": "no longer used and ignored: a refused connect now takes that endpoint out "
    "and holds the request until a replica accepts (within hold_timeout); remove it",
}
KUBERNETES_KEYS = (
    "kubeconfig", "lease_namespace", "lease_name", "lease_duration", "renew_deadline",
    "retry_period", "activity_persist_interval",
)

_PROXY_DEFAULTS = spec.ProxySettings()
_CONTROLLER_DEFAULTS = spec.ControllerSettings()

Address = tuple[str, int]


def read_listen(report: Report, value: object) -> tuple[Address, Address]:
    """The proxy's and the controller's (host, port), which must differ."""
    raw = section(report, "listen", value, LISTEN_KEYS) or {}
    before = len(report)
    proxy = take(
        report, raw, "listen", "proxy", parse_address, (_PROXY_DEFAULTS.host, _PROXY_DEFAULTS.port)
    )
    controller = take(
        report,
        raw,
        "listen",
        "controller",
        parse_address,
        (_CONTROLLER_DEFAULTS.host, _CONTROLLER_DEFAULTS.port),
    )
    if len(report) == before and proxy == controller:
        report.add(
            "listen.controller",
            f"is the same address as listen.proxy ({proxy[0]}:{proxy[1]}); "
            "give them different ports",
        )
    return proxy, controller


def read_proxy(report: Report, value: object, address: Address) -> spec.ProxySettings:
    raw = section(report, "proxy", value, (*PROXY_KEYS, *OBSOLETE_PROXY_KEYS)) or {}
    for key, why in OBSOLETE_PROXY_KEYS.items():
        if key in raw:
            report.warn(f"proxy.{key}", why)
    d = _PROXY_DEFAULTS
    return spec.ProxySettings(
        host=address[0],
        port=address[1],
        connect_timeout=take(
            report, raw, "proxy", "connect_timeout", duration(positive=True), d.connect_timeout
        ),
        read_timeout=take(
            report, raw, "proxy", "read_timeout", duration(positive=True), d.read_timeout
        ),
        max_body_size=take(report, raw, "proxy", "max_body_size", byte_size, d.max_body_size),
        max_header_size=take(
            report, raw, "proxy", "max_header_size", byte_size, d.max_header_size
        ),
        trusted_proxies=take_list(
            report, "proxy.trusted_proxies", raw.get("trusted_proxies"), parse_network
        ),
        header_timeout=take(
            report, raw, "proxy", "header_timeout", duration(positive=True), d.header_timeout
        ),
        keepalive_timeout=take(
            report, raw, "proxy", "keepalive_timeout", duration(positive=True),
            d.keepalive_timeout,
        ),
    )


def read_controller(
    report: Report, value: object, address: Address
) -> spec.ControllerSettings:
    """Who may call the controller API: the host names it answers to, the allowed origins."""
    raw = section(report, "controller", value, CONTROLLER_KEYS) or {}
    return spec.ControllerSettings(
        host=address[0],
        port=address[1],
        hostnames=take_list(report, "controller.hostnames", raw.get("hostnames"), parse_hostname),
        allowed_origins=take_list(
            report, "controller.allowed_origins", raw.get("allowed_origins"), parse_origin
        ),
    )


def read_kubernetes(report: Report, value: object, base_dir: str) -> spec.KubernetesSettings:
    """The Kubernetes runtime's settings: its kubeconfig and leader election."""
    raw = section(report, "kubernetes", value, KUBERNETES_KEYS) or {}
    d = spec.KubernetesSettings()
    kubeconfig = take(report, raw, "kubernetes", "kubeconfig", parse_string, None)
    if kubeconfig is not None:
        kubeconfig = os.path.join(base_dir, os.path.expanduser(kubeconfig))
    settings = spec.KubernetesSettings(
        kubeconfig=kubeconfig,
        lease_namespace=take(
            report, raw, "kubernetes", "lease_namespace", parse_dns_label, d.lease_namespace
        ),
        lease_name=take(report, raw, "kubernetes", "lease_name", parse_dns_label, d.lease_name),
        lease_duration=take(
            report, raw, "kubernetes", "lease_duration", duration(positive=True),
            d.lease_duration,
        ),
        renew_deadline=take(
            report, raw, "kubernetes", "renew_deadline", duration(positive=True),
            d.renew_deadline,
        ),
        retry_period=take(
            report, raw, "kubernetes", "retry_period", duration(positive=True), d.retry_period
        ),
        activity_persist_interval=take(
            report, raw, "kubernetes", "activity_persist_interval", duration(positive=True),
            d.activity_persist_interval,
        ),
    )
    # client-go's rule: the leader must give up before anyone may take over.
    if not settings.retry_period < settings.renew_deadline < settings.lease_duration:
        report.add(
            "kubernetes",
            "needs retry_period < renew_deadline < lease_duration "
            f"(got {settings.retry_period:g}s, {settings.renew_deadline:g}s, "
            f"{settings.lease_duration:g}s)",
        )
    return settings
