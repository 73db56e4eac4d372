"""Tests for controller/config/: parsing wakegate.yaml into spec.Config, and its problems."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml

from controller import spec
from controller.config import ConfigError, load_config, parse_duration, parse_size

REPO = Path(__file__).resolve().parents[1]

VALID = """\
domain: apps.example.com
state_dir: state
runtime: local
listen:
  proxy: 0.0.0.0:9080
  controller: "[::1]:9081"
proxy:
  connect_timeout: 250ms
  read_timeout: 2m
  max_body_size: 10MiB
  max_header_size: 16KB
  trusted_proxies: [127.0.0.1, "::1", 10.1.2.3/8]
  header_timeout: 20s
  keepalive_timeout: 1m
environments:
  private:
  demo: {idle_timeout: 30s}
  development: {access: api_key}
  staging: {}
  production: {max_replicas: 4, hold_timeout: 10s, hold_queue_size: 50}
  prerelease: {}
  qa: {kind: development, idle_timeout: never, min_replicas: 1}
services:
  hello:
    command: "{python} app.py --port {port} --version {version}"
    version: "1.2.3"
    environments: [private, demo, production, qa]
    readiness: {http: /healthz, timeout: 2s}
    env: {GREETING: hi, WORKERS: 2, DEBUG: true, RATIO: 0.5}
    start_timeout: 30s
    stop_grace: 0
    activity:
      ignore_paths: [/healthz, /metrics*]
      ignore_user_agents: [kube-probe, Prometheus]
  tcp-echo:
    command: ./echo --listen 127.0.0.1:{port}
    readiness: {tcp: true}
"""

# A small valid config that each rule case below changes in one place.
BASE: dict[str, Any] = {
    "environments": {"private": {}, "demo": {}},
    "services": {"hello": {"command": "{python} app.py --port {port}"}},
}


def write(tmp_path: Path, text: str, name: str = "wakegate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`base` with `patch` applied: mappings merge recursively, anything else replaces."""
    result = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems, "a ConfigError must carry at least one problem"
    return info.value.problems


def write_case(tmp_path: Path, case: dict[str, Any] | str) -> Path:
    if isinstance(case, str):
        return write(tmp_path, case)
    return write(tmp_path, yaml.safe_dump(merged(BASE, case), sort_keys=False))


# --- a valid file -------------------------------------------------------------------


def test_valid_config_is_parsed(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    config = load_config(path)

    assert config.path == str(path)
    assert config.base_dir == str(tmp_path)
    assert config.state_dir == str(tmp_path / "state")
    assert config.domain == "apps.example.com"
    assert config.runtime == "local"
    assert config.proxy == spec.ProxySettings(
        host="0.0.0.0",
        port=9080,
        connect_timeout=0.25,
        read_timeout=120.0,
        max_body_size=10 * 1024 * 1024,
        max_header_size=16_000,
        trusted_proxies=("127.0.0.1/32", "::1/128", "10.0.0.0/8"),
        header_timeout=20.0,
        keepalive_timeout=60.0,
    )
    assert config.controller == spec.ControllerSettings(host="::1", port=9081)

    assert isinstance(config.environments, MappingProxyType)
    assert list(config.environments) == [
        "private",
        "demo",
        "development",
        "staging",
        "production",
        "prerelease",
        "qa",
    ]
    envs = config.environments
    assert envs["private"] == spec.Environment("private", "private", "api_key", 900.0, 0, 1)
    assert envs["demo"] == spec.Environment("demo", "demo", "public", 30.0, 0, 1)
    assert envs["development"] == spec.Environment(
        "development", "development", "api_key", 1800.0, 0, 2, prefix="dev"
    )
    assert envs["staging"] == spec.Environment("staging", "staging", "public", None, 1, 2,
                                               prefix="stg")
    assert envs["production"] == spec.Environment(
        "production", "production", "public", None, 2, 4, hold_timeout=10.0, hold_queue_size=50,
        prefix="prod",
    )
    assert envs["prerelease"] == spec.Environment("prerelease", "prerelease", "public", None, 2, 10)
    assert envs["qa"] == spec.Environment("qa", "development", "public", None, 1, 2,
                                          prefix="dev")
    assert envs["private"].sleeps and not envs["qa"].sleeps

    assert isinstance(config.services, MappingProxyType)
    assert list(config.services) == ["hello", "tcp-echo"]
    assert config.services["hello"] == spec.Service(
        name="hello",
        command="{python} app.py --port {port} --version {version}",
        version="1.2.3",
        environments=("private", "demo", "production", "qa"),
        readiness=spec.Readiness(http_path="/healthz", tcp=False, timeout=2.0),
        env=(("GREETING", "hi"), ("WORKERS", "2"), ("DEBUG", "True"), ("RATIO", "0.5")),
        ignore_paths=("/healthz", "/metrics*"),
        ignore_user_agents=("kube-probe", "Prometheus"),
        start_timeout=30.0,
        stop_grace=0.0,
    )
    echo = config.services["tcp-echo"]
    assert echo.environments == ("private", "demo")  # the default placement
    assert echo.version == "0.0.0"
    assert echo.readiness == spec.Readiness(http_path=None, tcp=True, timeout=1.0)
    assert (echo.start_timeout, echo.stop_grace, echo.env) == (120.0, 10.0, ())

    assert [i.name for i in config.instances()] == [
        "private/hello",
        "demo/hello",
        "production/hello",
        "qa/hello",
        "private/tcp-echo",
        "demo/tcp-echo",
    ]
    assert config.host_of("demo", "hello") == "hello.demo.apps.example.com"


# Every kind a config may give an environment: ephemeral ones are made by `wakegate env create`
# (their defaults are checked in test_the_ephemeral_kind_follows_the_design_table).
CONFIG_KINDS = [kind for kind in spec.KINDS if kind != spec.EPHEMERAL]


@pytest.mark.parametrize("kind", CONFIG_KINDS)
def test_kind_defaults_follow_the_design_table(tmp_path: Path, kind: str) -> None:
    expected = {
        "private": ("api_key", 15 * 60.0, 0, 1),
        "demo": ("public", 15 * 60.0, 0, 1),
        "development": ("public", 30 * 60.0, 0, 2),
        "staging": ("public", None, 1, 2),
        "production": ("public", None, 2, 10),
        "prerelease": ("public", None, 2, 10),
    }[kind]
    path = write(tmp_path, f"environments:\n  {kind}:\n  other-{kind}: {{kind: {kind}}}\n")
    config = load_config(path)
    for name in (kind, f"other-{kind}"):
        env = config.environments[name]
        assert env.kind == kind
        assert (env.access, env.idle_timeout, env.min_replicas, env.max_replicas) == expected
        assert env.hold_timeout == spec.DEFAULT_HOLD_TIMEOUT
        assert env.hold_queue_size == spec.DEFAULT_HOLD_QUEUE_SIZE


def test_minimal_config_takes_every_default(tmp_path: Path) -> None:
    path = write(tmp_path, "services:\n  hello:\n    command: python app.py {port}\n")
    config = load_config(path)
    assert config.domain == "localhost"
    assert config.runtime == "local"
    assert config.state_dir == str(tmp_path / ".wakegate")
    assert config.proxy == spec.ProxySettings()
    assert config.controller == spec.ControllerSettings()
    # Without an environments key, the file defines the two a service goes to by default.
    assert list(config.environments) == ["private", "demo"]
    assert config.services["hello"].environments == ("private", "demo")
    assert config.services["hello"].readiness == spec.Readiness()
    assert config.host_of("demo", "hello") == "hello.demo.localhost"


def test_controller_api_settings_and_crash_backoff_are_parsed(tmp_path: Path) -> None:
    path = write_case(tmp_path, {
        "controller": {"hostnames": ["Wakegate-Controller.wakegate-system.svc."],
                       "allowed_origins": ["https://Admin.example.com/", "http://[::1]:3000"]},
        "environments": {"demo": {"crash_backoff": {"after": 2, "first": "250ms",
                                                    "max": "4s"}}},
    })
    config = load_config(path)
    assert config.controller.hostnames == ("wakegate-controller.wakegate-system.svc",)
    assert config.controller.allowed_origins == ("https://admin.example.com",
                                                 "http://[::1]:3000")
    backoff = config.environments["demo"].crash_backoff
    assert backoff == spec.CrashBackoff(after=2, first=0.25, max=4.0)
    # Nothing before `after` failures in a row, then doubling up to max.
    assert [backoff.delay(n) for n in range(1, 7)] == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    assert backoff.delay(1000) == 4.0
    assert config.warnings == ()


def test_an_obsolete_key_loads_with_a_warning(tmp_path: Path) -> None:
    config = load_config(write_case(tmp_path, {"proxy": {"retry_window": "2s"}}))
    assert config.warnings == (
        f"{tmp_path / 'wakegate.yaml'}: proxy.retry_window: warning: no longer used and "
        "ignored: a refused connect now takes that endpoint out and holds the request until "
        "a replica accepts (within hold_timeout); remove it",)


def test_empty_service_environments_mean_the_default(tmp_path: Path) -> None:
    path = write_case(tmp_path, {"services": {"hello": {"environments": []}}})
    assert load_config(path).services["hello"].environments == ("private", "demo")


def test_relative_path_and_state_dir_resolve_against_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", "state_dir: ../var/wg\nservices: {hello: {command: x}}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("conf/wakegate.yaml"))
    assert config.path == os.path.join("conf", "wakegate.yaml")
    assert config.base_dir == str(tmp_path / "conf")
    assert config.state_dir == str(tmp_path / "var" / "wg")


def test_absolute_state_dir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    path = write(tmp_path, f"state_dir: {target}\n")
    assert load_config(path).state_dir == str(target)


def test_case_variants_of_names_are_allowed_without_shared_services(tmp_path: Path) -> None:
    path = write_case(
        tmp_path,
        {
            "environments": {"Demo": {"kind": "demo"}},
            "services": {"hello": {"environments": ["Demo"]}, "other": {"command": "x"}},
        },
    )
    config = load_config(path)
    assert config.host_of("Demo", "hello") == "hello.demo.localhost"


# --- durations and sizes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (5, 5.0),
        (1.5, 1.5),
        ("150ms", 0.15),
        ("1.5s", 1.5),
        ("30s", 30.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("2", 2.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["15 minutes", "1w", "-5s", "s", "", "1.5.s", True, None, [1], -1, float("inf")]
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(value)


def test_parse_duration_message_says_what_is_allowed() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("15 minutes")
    assert str(info.value) == (
        'bad duration "15 minutes": use a number of seconds or a value like 150ms, 30s, 15m, 1h'
    )


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (512, 512),
        ("512", 512),
        ("10KB", 10_000),
        ("10KiB", 10_240),
        ("64MiB", 64 * 1024**2),
        ("2MB", 2_000_000),
        ("1GB", 10**9),
        ("1GiB", 1024**3),
        ("1.5KiB", 1536),
        ("8 kib", 8192),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["10 megs", "1.5", "-1", "KB", True, None, 1.5, -3, "1TB"])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="bad size"):
        parse_size(value)


# --- one problem per rule -----------------------------------------------------------

RULES = [
    # unknown keys, at every level; the message lists the allowed keys
    ("unknown-top", {"domian": "x"}, "domian", "allowed keys"),
    ("unknown-listen", {"listen": {"admin": "127.0.0.1:1"}}, "listen.admin", "allowed keys"),
    ("unknown-proxy", {"proxy": {"timeout": 5}}, "proxy.timeout", "allowed keys"),
    (
        "unknown-env",
        {"environments": {"demo": {"idle": "1m"}}},
        "environments.demo.idle",
        "unknown",
    ),
    ("unknown-svc", {"services": {"hello": {"cmd": "x"}}}, "services.hello.cmd", "unknown"),
    (
        "unknown-readiness",
        {"services": {"hello": {"readiness": {"path": "/"}}}},
        "services.hello.readiness.path",
        "allowed keys",
    ),
    (
        "unknown-activity",
        {"services": {"hello": {"activity": {"paths": ["/x"]}}}},
        "services.hello.activity.paths",
        "allowed keys",
    ),
    # wrong types
    ("proxy-not-mapping", {"proxy": ["x"]}, "proxy", "must be a mapping"),
    ("listen-not-mapping", {"listen": "127.0.0.1:8080"}, "listen", "must be a mapping"),
    ("environments-not-mapping", {"environments": ["demo"]}, "environments", "mapping"),
    ("env-not-mapping", {"environments": {"demo": "public"}}, "environments.demo", "mapping"),
    ("services-not-mapping", {"services": ["hello"]}, "services", "mapping"),
    ("service-not-mapping", {"services": {"hello": "app.py"}}, "services.hello", "mapping"),
    (
        "replicas-string",
        {"environments": {"demo": {"max_replicas": "2"}}},
        "environments.demo.max_replicas",
        "must be an integer, got string",
    ),
    (
        "replicas-bool",
        {"environments": {"demo": {"min_replicas": True}}},
        "environments.demo.min_replicas",
        "must be an integer, got boolean",
    ),
    (
        "replicas-float",
        {"environments": {"demo": {"max_replicas": 1.5}}},
        "environments.demo.max_replicas",
        "must be an integer",
    ),
    (
        "replicas-negative",
        {"environments": {"demo": {"min_replicas": -1}}},
        "environments.demo.min_replicas",
        "at least 0",
    ),
    (
        "queue-zero",
        {"environments": {"demo": {"hold_queue_size": 0}}},
        "environments.demo.hold_queue_size",
        "at least 1",
    ),
    (
        "min-above-max",
        {"environments": {"demo": {"min_replicas": 3, "max_replicas": 2}}},
        "environments.demo.min_replicas",
        "max_replicas",
    ),
    (
        "min-above-kind-default-max",
        {"environments": {"demo": {"min_replicas": 2}}},
        "environments.demo.min_replicas",
        "demo default",
    ),
    # durations and sizes
    (
        "bad-duration",
        {"environments": {"demo": {"idle_timeout": "15 minutes"}}},
        "environments.demo.idle_timeout",
        'bad duration "15 minutes"',
    ),
    (
        "idle-zero",
        {"environments": {"demo": {"idle_timeout": 0}}},
        "environments.demo.idle_timeout",
        "never",
    ),
    (
        "hold-timeout-zero",
        {"environments": {"demo": {"hold_timeout": "0s"}}},
        "environments.demo.hold_timeout",
        "more than 0",
    ),
    ("read-timeout", {"proxy": {"read_timeout": "fast"}}, "proxy.read_timeout", "bad duration"),
    ("connect-timeout-0", {"proxy": {"connect_timeout": 0}}, "proxy.connect_timeout", "than 0"),
    ("hostname-bad", {"controller": {"hostnames": ["a b"]}}, "controller.hostnames[0]",
     "DNS name"),
    ("origin-path", {"controller": {"allowed_origins": ["https://a.example/x"]}},
     "controller.allowed_origins[0]", "web origin"),
    ("controller-unknown", {"controller": {"token": "x"}}, "controller.token", "unknown key"),
    ("backoff-after-0", {"environments": {"demo": {"crash_backoff": {"after": 0}}}},
     "environments.demo.crash_backoff.after", "at least 1"),
    ("backoff-first-over-max",
     {"environments": {"demo": {"crash_backoff": {"first": "10s", "max": "5s"}}}},
     "environments.demo.crash_backoff.first", "more than max"),
    ("backoff-unknown", {"environments": {"demo": {"crash_backoff": {"limit": 3}}}},
     "environments.demo.crash_backoff.limit", "unknown key"),
    ("header-timeout-0", {"proxy": {"header_timeout": "0s"}}, "proxy.header_timeout", "than 0"),
    (
        "keepalive-timeout-bad",
        {"proxy": {"keepalive_timeout": "long"}},
        "proxy.keepalive_timeout",
        "bad duration",
    ),
    ("bad-size", {"proxy": {"max_body_size": "10 megs"}}, "proxy.max_body_size", "bad size"),
    ("size-zero", {"proxy": {"max_header_size": 0}}, "proxy.max_header_size", "at least 1"),
    ("size-fraction", {"proxy": {"max_body_size": "1.5"}}, "proxy.max_body_size", "whole"),
    (
        "trusted-bad",
        {"proxy": {"trusted_proxies": ["10.0.0.0/8", "nope"]}},
        "proxy.trusted_proxies[1]",
        "not an IP address or CIDR",
    ),
    (
        "trusted-not-list",
        {"proxy": {"trusted_proxies": "10.0.0.0/8"}},
        "proxy.trusted_proxies",
        "must be a list",
    ),
    # environment names and kinds
    ("env-name-digit", {"environments": {"1st": {"kind": "demo"}}}, "environments.1st", "letter"),
    (
        "env-name-long",
        {"environments": {"a" * 25: {"kind": "demo"}}},
        "environments." + "a" * 25,
        "24",
    ),
    (
        "env-name-underscore",
        {"environments": {"qa_1": {"kind": "demo"}}},
        "environments.qa_1",
        "dashes",
    ),
    ("env-kind-bad", {"environments": {"qa": {"kind": "dev"}}}, "environments.qa.kind", "one of"),
    ("env-kind-missing", {"environments": {"qa": {}}}, "environments.qa.kind", "required"),
    ("env-kind-case", {"environments": {"Demo": None}}, "environments.Demo.kind", "required"),
    (
        "access-bad",
        {"environments": {"demo": {"access": "open"}}},
        "environments.demo.access",
        "api_key",
    ),
    (
        "env-name-boolean",
        "environments:\n  on: {kind: demo}\n",
        "environments.true",
        "quote",
    ),
    # service names
    ("svc-upper", {"services": {"Hello": {"command": "x"}}}, "services.Hello", "DNS label"),
    (
        "svc-underscore",
        {"services": {"hello_world": {"command": "x"}}},
        "services.hello_world",
        "DNS",
    ),
    ("svc-dash-start", {"services": {"-hello": {"command": "x"}}}, "services.-hello", "DNS label"),
    ("svc-too-long", {"services": {"a" * 64: {"command": "x"}}}, "services." + "a" * 64, "63"),
    # placement
    (
        "svc-env-undefined",
        {"services": {"hello": {"environments": ["private", "qa"]}}},
        "services.hello.environments[1]",
        "defined environments: private, demo",
    ),
    (
        "svc-default-env-undefined",
        "environments: {private: {}}\nservices: {hello: {command: x}}\n",
        "services.hello.environments",
        '"demo" is not defined',
    ),
    (
        "svc-env-twice",
        {"services": {"hello": {"environments": ["demo", "demo"]}}},
        "services.hello.environments[1]",
        "twice",
    ),
    (
        "svc-env-not-list",
        {"services": {"hello": {"environments": "demo"}}},
        "services.hello.environments",
        "must be a list",
    ),
    (
        "svc-env-not-string",
        {"services": {"hello": {"environments": ["demo", 3]}}},
        "services.hello.environments[1]",
        "environment name",
    ),
    # hosts
    (
        "duplicate-host",
        {
            "environments": {"Demo": {"kind": "demo"}},
            "services": {"hello": {"environments": ["demo", "Demo"]}},
        },
        "environments.Demo",
        '"hello.demo.localhost" of Demo/hello is also the host of demo/hello',
    ),
    # listen, runtime, domain, state_dir
    ("listen-no-port", {"listen": {"proxy": "localhost"}}, "listen.proxy", "host:port"),
    ("listen-port-high", {"listen": {"proxy": "127.0.0.1:70000"}}, "listen.proxy", "1 to 65535"),
    ("listen-port-zero", {"listen": {"controller": "127.0.0.1:0"}}, "listen.controller", "65535"),
    ("listen-port-word", {"listen": {"proxy": "127.0.0.1:http"}}, "listen.proxy", "65535"),
    ("listen-int", {"listen": {"proxy": 8080}}, "listen.proxy", "must be a string"),
    ("listen-v6-bare", {"listen": {"proxy": "::1:8080"}}, "listen.proxy", "brackets"),
    ("listen-v6-bad", {"listen": {"proxy": "[nope]:8080"}}, "listen.proxy", "IPv6"),
    (
        "listen-same",
        {"listen": {"proxy": "127.0.0.1:9000", "controller": "127.0.0.1:9000"}},
        "listen.controller",
        "same address",
    ),
    ("runtime-bad", {"runtime": "docker"}, "runtime", "local, kubernetes"),
    ("domain-underscore", {"domain": "my_domain"}, "domain", "DNS name"),
    ("domain-trailing-dot", {"domain": "example.com."}, "domain", "trailing dot"),
    ("domain-port", {"domain": "localhost:8080"}, "domain", "DNS name"),
    ("domain-empty", {"domain": ""}, "domain", "DNS name"),
    ("domain-number", {"domain": 5}, "domain", "must be a string"),
    ("state-dir-number", {"state_dir": 5}, "state_dir", "directory"),
    # command
    (
        "command-missing",
        "environments: {private: {}, demo: {}}\nservices: {hello: {version: '1'}}\n",
        "services.hello.command",
        "required",
    ),
    (
        "command-placeholder",
        {"services": {"hello": {"command": "{python} app.py --host {host}"}}},
        "services.hello.command",
        "{host}",
    ),
    (
        "command-positional",
        {"services": {"hello": {"command": "app {}"}}},
        "services.hello.command",
        "placeholder",
    ),
    (
        "command-brace",
        {"services": {"hello": {"command": "app {port"}}},
        "services.hello.command",
        "brace",
    ),
    (
        "command-quote",
        {"services": {"hello": {"command": "app 'x"}}},
        "services.hello.command",
        "quotes",
    ),
    (
        "command-blank",
        {"services": {"hello": {"command": "  "}}},
        "services.hello.command",
        "empty",
    ),
    (
        "command-list",
        {"services": {"hello": {"command": ["app"]}}},
        "services.hello.command",
        "string",
    ),
    # version
    (
        "version-float",
        {"services": {"hello": {"version": 1.0}}},
        "services.hello.version",
        'quote it: "1.0"',
    ),
    (
        "version-int",
        {"services": {"hello": {"version": 2}}},
        "services.hello.version",
        "must be a string",
    ),
    (
        "version-shell",
        {"services": {"hello": {"version": "1.0;rm"}}},
        "services.hello.version",
        "valid version",
    ),
    (
        "version-space",
        {"services": {"hello": {"version": "1 0"}}},
        "services.hello.version",
        "valid version",
    ),
    # readiness
    (
        "readiness-both",
        {"services": {"hello": {"readiness": {"http": "/", "tcp": True}}}},
        "services.hello.readiness",
        "exactly one",
    ),
    (
        "readiness-path",
        {"services": {"hello": {"readiness": {"http": "healthz"}}}},
        "services.hello.readiness.http",
        'starting with "/"',
    ),
    (
        "readiness-tcp-false",
        {"services": {"hello": {"readiness": {"tcp": False}}}},
        "services.hello.readiness.tcp",
        "must be true",
    ),
    (
        "readiness-timeout",
        {"services": {"hello": {"readiness": {"timeout": 0}}}},
        "services.hello.readiness.timeout",
        "more than 0",
    ),
    # env
    (
        "env-name",
        {"services": {"hello": {"env": {"1X": "a"}}}},
        "services.hello.env.1X",
        "variable name",
    ),
    (
        "env-dash",
        {"services": {"hello": {"env": {"A-B": "a"}}}},
        "services.hello.env.A-B",
        "variable name",
    ),
    (
        "env-value",
        {"services": {"hello": {"env": {"A": [1]}}}},
        "services.hello.env.A",
        "must be a string",
    ),
    ("env-null", {"services": {"hello": {"env": {"A": None}}}}, "services.hello.env.A", "got null"),
    ("env-not-mapping", {"services": {"hello": {"env": ["A=1"]}}}, "services.hello.env", "mapping"),
    # service timeouts
    (
        "start-zero",
        {"services": {"hello": {"start_timeout": 0}}},
        "services.hello.start_timeout",
        "than 0",
    ),
    (
        "start-bad",
        {"services": {"hello": {"start_timeout": "2 min"}}},
        "services.hello.start_timeout",
        "bad duration",
    ),
    (
        "stop-bad",
        {"services": {"hello": {"stop_grace": "soon"}}},
        "services.hello.stop_grace",
        "bad duration",
    ),
    # activity
    (
        "ignore-path-slash",
        {"services": {"hello": {"activity": {"ignore_paths": ["/ok", "healthz"]}}}},
        "services.hello.activity.ignore_paths[1]",
        'starting with "/"',
    ),
    (
        "ignore-path-star",
        {"services": {"hello": {"activity": {"ignore_paths": ["/a*/b"]}}}},
        "services.hello.activity.ignore_paths[0]",
        "at the end",
    ),
    (
        "ignore-paths-string",
        {"services": {"hello": {"activity": {"ignore_paths": "/healthz"}}}},
        "services.hello.activity.ignore_paths",
        "must be a list",
    ),
    (
        "ignore-agent-empty",
        {"services": {"hello": {"activity": {"ignore_user_agents": ["kube-probe", ""]}}}},
        "services.hello.activity.ignore_user_agents[1]",
        "non-empty",
    ),
]


@pytest.mark.parametrize(
    ("case", "field", "keyword"),
    [pytest.param(case, field, keyword, id=name) for name, case, field, keyword in RULES],
)
def test_rule_reports_a_problem(
    tmp_path: Path, case: dict[str, Any] | str, field: str, keyword: str
) -> None:
    path = write_case(tmp_path, case)
    prefix = f"{path}: {field}: "
    problems = problems_of(path)
    matching = [p for p in problems if p.startswith(prefix)]
    assert matching, f"no problem starts with {prefix!r}; got {problems}"
    assert any(keyword in p for p in matching), f"{keyword!r} not in {matching}"
    # Every problem names the file and a field (or a line) and is one line.
    for problem in problems:
        assert problem.startswith(f"{path}: ")
        assert "\n" not in problem


def test_base_case_is_valid(tmp_path: Path) -> None:
    load_config(write_case(tmp_path, {}))


def test_unknown_key_suggests_the_closest_one(tmp_path: Path) -> None:
    path = write_case(tmp_path, {"services": {"hello": {"comand": "x"}}})
    problems = problems_of(path)
    assert any(
        p.startswith(f"{path}: services.hello.comand: ") and '"command"' in p for p in problems
    )


def test_many_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        runtime: docker
        proxy: {read_timeout: soon, max_body_size: huge}
        environments:
          demo: {min_replicas: 2, max_replicas: 1}
          qa: {}
        services:
          Hello: {command: x, environments: [demo]}
          world:
            command: "{python} {nope}"
            version: 1.0
            environments: [demo, staging]
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    fields = [p.removeprefix(f"{path}: ").split(": ")[0] for p in info.value.problems]
    assert fields == [
        "runtime",
        "proxy.read_timeout",
        "proxy.max_body_size",
        "environments.demo.min_replicas",
        "environments.qa.kind",
        "services.Hello",
        "services.world.command",
        "services.world.version",
        "services.world.environments[1]",
    ]
    assert str(info.value) == "\n".join(info.value.problems)


def test_one_bad_environment_setting_does_not_cascade_into_services(tmp_path: Path) -> None:
    path = write_case(tmp_path, {"environments": {"demo": {"idle_timeout": "soon"}}})
    assert [p.split(": ")[1] for p in problems_of(path)] == ["environments.demo.idle_timeout"]


# --- file-level problems ------------------------------------------------------------


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "domain: localhost\nservices:\n  hello: {command: x\n")
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: line ")
    assert ", column " in problems[0]


def test_yaml_tab_indentation_is_a_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "services:\n\thello: {}\n")
    assert problems_of(path)[0].startswith(f"{path}: line 2, column 1: ")


def test_yaml_duplicate_key_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        services:
          hello:
            command: one
            command: two
        """,
    )
    problems = problems_of(path)
    assert problems == [
        f'{path}: line 4: duplicate key "command" (first at line 3); YAML would keep only '
        "the last one, so remove or rename one of them"
    ]


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        services:
          hello: &hello {command: one, version: "1"}
          world: {<<: *hello, command: two}
        """,
    )
    assert load_config(path).services["world"].command == "two"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    problems = problems_of(path)
    assert problems == [f"{path}: cannot read the file: No such file or directory"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert problems_of(tmp_path)[0].startswith(f"{tmp_path}: cannot read the file")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "wakegate.yaml"
    path.write_bytes(b"domain: \xff\n")
    assert "UTF-8" in problems_of(path)[0]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# only a comment\n",
        "- a\n- b\n",
        "just text\n",
        "--- {}\n--- {}\n",
        "a: !!python/none x\n",
    ],
)
def test_unusable_documents(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: ")


def test_deeply_nested_yaml_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = write(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert problems_of(path)


# --- through the real command line ----------------------------------------------------

needs_cli = pytest.mark.skipif(
    not (REPO / "controller" / "cli").exists(), reason="controller/cli/ is not written yet"
)


def run_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "validate", "-c", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_cli
def test_cli_validate_ok(tmp_path: Path) -> None:
    result = run_validate(write(tmp_path, VALID))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ok" in output
    assert "Traceback" not in output


@needs_cli
def test_cli_validate_reports_every_problem(tmp_path: Path) -> None:
    path = write_case(
        tmp_path,
        {"runtime": "docker", "services": {"hello": {"version": 1.0, "environments": ["qa"]}}},
    )
    expected = problems_of(path)
    assert len(expected) == 3
    result = run_validate(path)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    for problem in expected:
        assert problem in result.stderr.splitlines()


@needs_cli
@pytest.mark.parametrize("text", [None, "a: b: c\n", "- 1\n", ""])
def test_cli_validate_unusable_file(tmp_path: Path, text: str | None) -> None:
    path = tmp_path / "wakegate.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    result = run_validate(path)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert str(path) in result.stderr


# --- autoscale ------------------------------------------------------------------------

AUTOSCALE_ALLOWED = (
    "allowed keys: target_concurrency, target_utilization, window, panic_window, "
    "panic_threshold, scale_down_delay"
)
WINDOW_RULE = "panic_window must not be longer than window, the stable window it is part of"


def test_autoscale_defaults_are_knatives(tmp_path: Path) -> None:
    config = load_config(write_case(tmp_path, {}))
    assert spec.Autoscale() == spec.Autoscale(
        target_concurrency=100.0, target_utilization=0.7, window=60.0, panic_window=6.0,
        panic_threshold=2.0, scale_down_delay=30.0,
    )
    for environment in config.environments.values():
        assert environment.autoscale == spec.Autoscale()
    assert config.services["hello"].autoscale_overrides == ()
    assert {i.autoscale for i in config.instances()} == {spec.Autoscale()}


def test_autoscale_settings_and_service_overrides_are_parsed(tmp_path: Path) -> None:
    path = write_case(tmp_path, {
        "environments": {
            "production": {"autoscale": {
                "target_concurrency": 10, "target_utilization": 0.5, "window": "2s",
                "panic_window": "500ms", "panic_threshold": 3, "scale_down_delay": 0,
            }},
            "staging": {"autoscale": None},  # null means {}: every default
        },
        "services": {
            "hello": {"environments": ["private", "production", "staging"],
                      # written out of order: the overrides come in spec.Autoscale's order
                      "autoscale": {"panic_window": "1s", "target_concurrency": 4.5}},
            "other": {"command": "x", "environments": ["production"]},
        },
    })
    config = load_config(path)
    production = spec.Autoscale(target_concurrency=10.0, target_utilization=0.5, window=2.0,
                                panic_window=0.5, panic_threshold=3.0, scale_down_delay=0.0)
    assert config.environments["production"].autoscale == production
    assert config.environments["staging"].autoscale == spec.Autoscale()
    assert config.services["hello"].autoscale_overrides == (
        ("target_concurrency", 4.5), ("panic_window", 1.0))
    autoscale = {i.name: i.autoscale for i in config.instances()}
    assert autoscale == {
        "private/hello": spec.Autoscale(target_concurrency=4.5, panic_window=1.0),
        "production/hello": dataclasses.replace(production, target_concurrency=4.5,
                                                panic_window=1.0),
        "staging/hello": spec.Autoscale(target_concurrency=4.5, panic_window=1.0),
        "production/other": production,
    }


@pytest.mark.parametrize(("key", "value"), [
    ("target_concurrency", 0.01),
    ("target_utilization", 1),
    ("target_utilization", 0.01),
    ("window", "100ms"),
    ("panic_window", "6s"),
    ("panic_threshold", 1.1),
    ("panic_threshold", 10),
    ("scale_down_delay", 0),
])
def test_autoscale_bounds_are_inclusive_where_they_say_so(
    tmp_path: Path, key: str, value: object
) -> None:
    # a short window needs a panic window no longer than itself
    block = {key: value, "panic_window": value} if key == "window" else {key: value}
    path = write_case(tmp_path, {"environments": {"demo": {"autoscale": block}},
                                 "services": {"hello": {"autoscale": block}}})
    config = load_config(path)
    assert getattr(config.environments["demo"].autoscale, key) == parse_duration(value)
    assert dict(config.services["hello"].autoscale_overrides)[key] == parse_duration(value)


AUTOSCALE_PROBLEMS = [
    ("target_concurrency", 0, "must be at least 0.01 (requests in flight one replica is meant "
     "to take, e.g. 100), got 0"),
    ("target_concurrency", 1e-310, "must be at least 0.01 (requests in flight one replica is "
     "meant to take, e.g. 100), got 1e-310"),
    ("target_concurrency", -5, "must be at least 0.01 (requests in flight one replica is meant "
     "to take, e.g. 100), got -5"),
    ("target_concurrency", "100", 'must be a number such as 100, got string "100"'),
    ("target_concurrency", True, "must be a number such as 100, got boolean true"),
    ("target_concurrency", float("inf"), "must be a finite number such as 100, got inf"),
    ("target_utilization", 0, "must be from 0.01 to 1 (the share of "
     "target_concurrency to aim at, e.g. 0.7), got 0"),
    ("target_utilization", 1.5, "must be from 0.01 to 1 (the share of "
     "target_concurrency to aim at, e.g. 0.7), got 1.5"),
    ("target_utilization", 70, "must be from 0.01 to 1 (the share of "
     "target_concurrency to aim at, e.g. 0.7), got 70; for 70% write 0.7"),
    ("target_utilization", [0.7], "must be a number such as 0.7, got list"),
    ("window", 0, "must be more than 0 (the stable window, e.g. 60s), got 0"),
    ("window", "a minute", 'bad duration "a minute": use a number of seconds or a value like '
     "150ms, 30s, 15m, 1h"),
    ("panic_window", "0ms", "must be more than 0 (the short window that can start a panic, "
     'e.g. 6s), got "0ms"'),
    ("panic_threshold", 1, "must be from 1.1 to 10 (the demand, in times the current capacity, "
     "that starts a panic, e.g. 2.0; below 1.1 it would panic at steady load and never scale "
     "down), got 1"),
    ("panic_threshold", 11, "must be from 1.1 to 10 (the demand, in times the current capacity, "
     "that starts a panic, e.g. 2.0; below 1.1 it would panic at steady load and never scale "
     "down), got 11"),
    ("panic_threshold", 200, "must be from 1.1 to 10 (the demand, in times the current capacity, "
     "that starts a panic, e.g. 2.0; below 1.1 it would panic at steady load and never scale "
     "down), got 200; for 200% write 2"),
    ("panic_threshold", "2x", 'must be a number such as 2.0, got string "2x"'),
    ("scale_down_delay", -1, "bad duration -1: a duration cannot be negative"),
    ("scale_down_delay", None, "bad duration null: use a number of seconds or a value like "
     "150ms, 30s, 15m, 1h"),
]


@pytest.mark.parametrize("where", ["environments.demo", "services.hello"])
@pytest.mark.parametrize(("key", "value", "problem"), AUTOSCALE_PROBLEMS)
def test_autoscale_value_problems(
    tmp_path: Path, where: str, key: str, value: object, problem: str
) -> None:
    section_name, name = where.split(".")
    path = write_case(tmp_path, {section_name: {name: {"autoscale": {key: value}}}})
    assert problems_of(path) == [f"{path}: {where}.autoscale.{key}: {problem}"]


@pytest.mark.parametrize("where", ["environments.demo", "services.hello"])
def test_autoscale_unknown_keys_and_wrong_types(tmp_path: Path, where: str) -> None:
    section_name, name = where.split(".")
    path = write_case(tmp_path, {section_name: {name: {"autoscale": {
        "panic_windwo": "1s", "target": 10, "scale_down_delay": "1s"}}}})
    assert problems_of(path) == [
        f'{path}: {where}.autoscale.panic_windwo: unknown key (did you mean "panic_window"?); '
        f"{AUTOSCALE_ALLOWED}",
        f"{path}: {where}.autoscale.target: unknown key; {AUTOSCALE_ALLOWED}",
    ]
    path = write_case(tmp_path, {section_name: {name: {"autoscale": [{"window": "1s"}]}}})
    assert problems_of(path) == [
        f"{path}: {where}.autoscale: must be a mapping with keys target_concurrency, "
        "target_utilization, window, panic_window, panic_threshold, scale_down_delay, got list"
    ]


def test_an_environment_panic_window_is_not_longer_than_its_window(tmp_path: Path) -> None:
    path = write_case(tmp_path, {"environments": {
        "private": {"autoscale": {"window": "2s", "panic_window": "3s"}},
        "demo": {"autoscale": {"panic_window": "90s"}},
        "staging": {"autoscale": {"window": "3s"}},
        "production": {"autoscale": {"window": "3s", "panic_window": "3s"}},  # equal is fine
        "development": {"autoscale": {"window": "soon", "panic_window": "90s"}},
    }})
    assert problems_of(path) == [
        f"{path}: environments.private.autoscale.panic_window: is 3s, longer than window (2s); "
        f"{WINDOW_RULE}",
        f"{path}: environments.demo.autoscale.panic_window: is 90s, longer than window (60s, the "
        f"default); {WINDOW_RULE}",
        f"{path}: environments.staging.autoscale.window: is 3s, shorter than panic_window (6s, "
        f"the default); {WINDOW_RULE}",
        # A bad window is its own problem, not also the panic window's.
        f'{path}: environments.development.autoscale.window: bad duration "soon": use a number '
        "of seconds or a value like 150ms, 30s, 15m, 1h",
    ]


def test_a_service_override_is_checked_with_each_environment_it_is_placed_in(
    tmp_path: Path,
) -> None:
    path = write_case(tmp_path, {
        "environments": {
            "demo": {"autoscale": {"window": "2s", "panic_window": "1s"}},
            "staging": {"autoscale": {"window": "1s", "panic_window": "500ms"}},
            "production": {"autoscale": {"panic_window": "4s"}},
        },
        "services": {
            # longer than demo's and staging's window, shorter than private's (60s, the default)
            "hello": {"environments": ["private", "demo", "staging"],
                      "autoscale": {"panic_window": "3s"}},
            # shorter than production's panic window (4s); demo's (1s) fits
            "world": {"command": "x", "environments": ["demo", "production"],
                      "autoscale": {"window": "3s"}},
            # both set here: compared once, here, whatever the environments say
            "both": {"command": "x", "environments": ["demo", "staging"],
                     "autoscale": {"window": "1s", "panic_window": "2s"}},
            "fits": {"command": "x", "environments": ["demo", "staging"],
                     "autoscale": {"window": "5s", "panic_window": "5s"}},
        },
    })
    assert problems_of(path) == [
        f"{path}: services.hello.autoscale.panic_window: is 3s, longer than window (2s, in "
        f"environment demo); {WINDOW_RULE}",
        f"{path}: services.hello.autoscale.panic_window: is 3s, longer than window (1s, in "
        f"environment staging); {WINDOW_RULE}",
        f"{path}: services.world.autoscale.window: is 3s, shorter than panic_window (4s, in "
        f"environment production); {WINDOW_RULE}",
        f"{path}: services.both.autoscale.panic_window: is 2s, longer than window (1s); "
        f"{WINDOW_RULE}",
    ]


def test_autoscale_problems_do_not_cascade(tmp_path: Path) -> None:
    path = write_case(tmp_path, {
        "environments": {"demo": {"autoscale": {"window": "1s", "panic_window": "1s",
                                                 "target_concurrency": 0}}},
        "services": {"hello": {"command": "{nope}", "environments": ["private", "demo"],
                               "autoscale": {"window": 0, "panic_window": "30s"}}},
    })
    # demo is not valid, so nothing is checked against it; a bad window is the only problem
    # of the service's block (not also its panic_window against private's window); the
    # command's problem does not hide the block's.
    assert [p.removeprefix(f"{path}: ").split(": ")[0] for p in problems_of(path)] == [
        "environments.demo.autoscale.target_concurrency",
        "services.hello.command",
        "services.hello.autoscale.window",
    ]


@pytest.mark.parametrize(("name", "settings"), [
    ("private", {"max_replicas": 2}),
    ("demo", {"max_replicas": 3, "min_replicas": 3}),
    ("qa", {"kind": "demo", "max_replicas": 10}),
])
def test_private_and_demo_never_scale_by_load(
    tmp_path: Path, name: str, settings: dict[str, Any]
) -> None:
    path = write_case(tmp_path, {"environments": {name: settings}})
    assert problems_of(path) == [
        f"{path}: environments.{name}.max_replicas: is {settings['max_replicas']}, but private "
        "and demo environments run at most 1 replica: they never scale by load; remove "
        "max_replicas, or use a kind that scales (development, staging, production, prerelease)"
    ]


def test_private_and_demo_may_say_max_replicas_1_or_0_and_other_kinds_scale(
    tmp_path: Path,
) -> None:
    config = load_config(write_case(tmp_path, {"environments": {
        "private": {"max_replicas": 1, "min_replicas": 1}, "demo": {"max_replicas": 0},
        "development": {"max_replicas": 3}, "qa": {"kind": "staging", "max_replicas": 5},
    }}))
    assert {name: env.max_replicas for name, env in config.environments.items()} == {
        "private": 1, "demo": 0, "development": 3, "qa": 5}


# --- issue 15: prefixes, the ephemeral kind and section, depends_on ----------------


def test_the_ephemeral_kind_follows_the_design_table() -> None:
    defaults = spec.KIND_DEFAULTS[spec.EPHEMERAL]
    assert (defaults.access, defaults.idle_timeout, defaults.min_replicas,
            defaults.max_replicas) == ("public", 15 * 60.0, 0, 1)


def test_prefixes_default_by_kind_and_may_be_set_or_removed(tmp_path: Path) -> None:
    config = load_config(write_case(tmp_path, {"environments": {
        "development": {}, "staging": {}, "production": {}, "prerelease": {},
        "qa": {"kind": "development", "prefix": "qa1"}, "plain": {"kind": "production",
                                                                   "prefix": ""},
        "bare": {"kind": "staging", "prefix": None}, "named": {"kind": "demo", "prefix": "x"},
    }}))
    assert {name: env.prefix for name, env in config.environments.items()} == {
        "private": "", "demo": "", "development": "dev", "staging": "stg", "production": "prod",
        "prerelease": "", "qa": "qa1", "plain": "", "bare": "", "named": "x"}


@pytest.mark.parametrize(("value", "got"), [
    ("Dev", 'string "Dev"'), ("toolong12", 'string "toolong12"'), ("a-b", 'string "a-b"'),
    (12, 'integer 12 (quote it: "12")'), (["dev"], "list"), (True, "boolean true"),
])
def test_a_bad_prefix_is_a_precise_problem(tmp_path: Path, value: object, got: str) -> None:
    path = write_case(tmp_path, {"environments": {"demo": {"prefix": value}}})
    assert problems_of(path) == [
        f'{path}: environments.demo.prefix: must be 1 to 8 lowercase letters and digits '
        f'(e.g. "dev"), or "" for no prefix, got {got}']


def test_the_ephemeral_kind_is_made_by_env_create_not_by_the_config(tmp_path: Path) -> None:
    path = write_case(tmp_path, {"environments": {"pr-1": {"kind": "ephemeral"},
                                                  "ephemeral": {}}})
    kinds = "private, demo, development, staging, production, prerelease"
    assert problems_of(path) == [
        f'{path}: environments.pr-1.kind: is "ephemeral", but ephemeral environments are made '
        f"by `wakegate env create NAME --from ENV`, not in the config; use one of {kinds}",
        f"{path}: environments.ephemeral.kind: is required: ephemeral environments are made by "
        "`wakegate env create NAME --from ENV`, not in the config; to call a config "
        f'environment "ephemeral", add kind: with one of {kinds}',
    ]
    # A config environment may still be called so, with a kind of its own.
    config = load_config(write_case(tmp_path, {"environments": {"ephemeral": {"kind": "demo"}}}))
    assert config.environments["ephemeral"].kind == "demo"


def test_ephemeral_settings_default_and_are_read(tmp_path: Path) -> None:
    assert load_config(write_case(tmp_path, {})).ephemeral == spec.EphemeralSettings(
        max_environments=20, idle_timeout=900.0, ttl=86400.0, max_ttl=30 * 86400.0)
    config = load_config(write_case(tmp_path, {
        "max_ephemeral_environments": 0,
        "ephemeral": {"idle_timeout": "300ms", "ttl": "2h", "max_ttl": "48h"},
    }))
    assert config.ephemeral == spec.EphemeralSettings(
        max_environments=0, idle_timeout=0.3, ttl=7200.0, max_ttl=48 * 3600.0)


@pytest.mark.parametrize(("case", "problem"), [
    ({"max_ephemeral_environments": -1}, "max_ephemeral_environments: must be at least 0, got -1"),
    ({"max_ephemeral_environments": "20"},
     'max_ephemeral_environments: must be an integer, got string "20"'),
    ({"ephemeral": "24h"},
     "ephemeral: must be a mapping with keys idle_timeout, ttl, max_ttl, got string \"24h\""),
    ({"ephemeral": {"tl": "1h"}},
     'ephemeral.tl: unknown key (did you mean "ttl"?); allowed keys: idle_timeout, ttl, max_ttl'),
    ({"ephemeral": {"idle_timeout": 0}},
     "ephemeral.idle_timeout: must be more than 0 (e.g. 30s), got 0"),
    ({"ephemeral": {"ttl": "soon"}},
     'ephemeral.ttl: bad duration "soon": use a number of seconds or a value like 150ms, 30s, '
     "15m, 1h"),
    ({"ephemeral": {"ttl": "48h", "max_ttl": "24h"}},
     "ephemeral.ttl: is 48h, more than max_ttl (24h); the TTL `env create` gives must not "
     "exceed the longest TTL; lower ttl or raise max_ttl"),
    ({"ephemeral": {"max_ttl": "1h"}},
     "ephemeral.ttl: is 24h (the default), more than max_ttl (1h); the TTL `env create` gives "
     "must not exceed the longest TTL; lower ttl or raise max_ttl"),
    ({"ephemeral": {"max_ttl": "400d"}},
     "ephemeral.max_ttl: is 400d, more than 365d: an ephemeral environment is a preview, not "
     "a home; use at most 365d"),
])
def test_ephemeral_setting_problems(tmp_path: Path, case: dict[str, Any], problem: str) -> None:
    path = write_case(tmp_path, case)
    assert problems_of(path) == [f"{path}: {problem}"]


def services_with(**depends_on: Any) -> dict[str, Any]:
    """Services a, b, c (in private and demo), each with its depends_on when given."""
    return {"services": {name: {"command": "x {port}", **(
        {"depends_on": depends_on[name]} if name in depends_on else {})} for name in "abc"}}


def test_depends_on_is_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, yaml.safe_dump(services_with(a=["b", "c"], b=["c"]))))
    assert {name: svc.depends_on for name, svc in config.services.items()} == {
        "a": ("b", "c"), "b": ("c",), "c": ()}


@pytest.mark.parametrize(("depends_on", "field", "problem"), [
    (["b", "d"], "depends_on[1]", 'service "d" is not defined; defined services: b, c'),
    (["bb"], "depends_on[0]", 'service "bb" is not defined (did you mean "b"?); defined '
     "services: b, c"),
    (["a"], "depends_on[0]", '"a" is this service itself; a service cannot depend on itself'),
    (["b", "b"], "depends_on[1]", 'service "b" is listed twice; list each service once'),
    ([3], "depends_on[0]", "must be a service name, got integer 3"),
    ("b", "depends_on", 'must be a list, e.g. [a, b], got string "b"'),
])
def test_depends_on_problems(tmp_path: Path, depends_on: object, field: str,
                             problem: str) -> None:
    path = write(tmp_path, yaml.safe_dump(services_with(a=depends_on)))
    assert problems_of(path) == [f"{path}: services.a.{field}: {problem}"]


@pytest.mark.parametrize(("depends_on", "problem"), [
    ({"a": ["b"], "b": ["a"]}, "services.a.depends_on: a -> b -> a is a cycle"),
    ({"b": ["c"], "c": ["a"], "a": ["b"]}, "services.a.depends_on: a -> b -> c -> a is a cycle"),
    ({"a": ["b"], "b": ["c"], "c": ["b"]}, "services.b.depends_on: b -> c -> b is a cycle"),
])
def test_a_cycle_of_depends_on_is_said_once(tmp_path: Path, depends_on: dict[str, Any],
                                            problem: str) -> None:
    path = write(tmp_path, yaml.safe_dump(services_with(**depends_on)))
    assert problems_of(path) == [
        f"{path}: {problem}: services that wake together cannot depend on each other in a "
        "circle; remove one of these dependencies"]


def test_a_dependency_must_be_in_every_environment_of_its_dependent(tmp_path: Path) -> None:
    data = services_with(a=["b", "c"])
    data["environments"] = {"private": {}, "demo": {}, "qa": {"kind": "demo"}}
    data["services"]["a"]["environments"] = ["demo", "qa", "private"]
    data["services"]["b"]["environments"] = ["demo"]
    data["services"]["c"]["environments"] = ["demo", "qa", "private"]
    path = write(tmp_path, yaml.safe_dump(data))
    assert problems_of(path) == [
        f'{path}: services.a.depends_on[0]: service "b" is not in environments "qa", '
        '"private", where "a" is: a service and its dependencies must be in the same '
        "environments; add qa, private to services.b.environments"]


def test_an_invalid_dependency_is_not_also_a_placement_problem(tmp_path: Path) -> None:
    data = services_with(a=["b"])
    data["services"]["b"]["environments"] = ["nowhere"]
    path = write(tmp_path, yaml.safe_dump(data))
    assert [p.removeprefix(f"{path}: ").split(": ")[0] for p in problems_of(path)] == [
        "services.b.environments[0]"]
