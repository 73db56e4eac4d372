"""State files under state_dir that are corrupt or invalid stop the start, and are kept.

keys.json, versions.json, releases.json and ephemeral.json are what wakegate remembers across
restarts. One that cannot be used stops `wakegate up` / `wakegate controller`
(and fails `wakegate validate`) with exit status 2 and one line per problem,
``<file>: <path.in.file>: <problem>``; it is never rewritten, since a guess
written back would lose a key, a version or which colour is live. Real
processes, run to completion: none of these starts gets far enough to need
stopping.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import Controller, Wakegate, hello_service

Start = Callable[..., Wakegate]

SHA = "0123456789abcdef" * 4  # a well-formed SHA-256 hex digest
STATE_FILES = ("keys.json", "versions.json", "releases.json", "ephemeral.json")


def config() -> dict[str, Any]:
    envs = {"private": {"idle_timeout": "1h"}, "demo": {"idle_timeout": "1h"},
            "production": {"min_replicas": 1, "scale_down_delay": "30s"}}
    return {"environments": envs,
            "services": {"hello": hello_service(environments=list(envs), version="1.0.0")}}


def refused_start(wg: Wakegate, files: dict[str, str]) -> list[str]:
    """Write the state files, run wakegate to its exit; the problems it printed, one a line.

    Checks what every refused start must do: exit 2, no traceback, every file
    byte for byte as written, nothing else created and no process left.
    """
    wg.state_dir.mkdir(parents=True)
    for name, text in files.items():
        (wg.state_dir / name).write_text(text)
    code, stderr = wg.run_to_exit()
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    for name, text in files.items():
        assert (wg.state_dir / name).read_bytes() == text.encode(), f"{name} was rewritten"
    assert sorted(os.listdir(wg.state_dir)) == sorted(files), "nothing else is written"
    assert wg.leftovers() == []
    return stderr.splitlines()


def at(wg: Wakegate, name: str) -> str:
    """How a problem line starts: the state file's absolute path."""
    return str((wg.state_dir / name).resolve())


# Each kind of bad file: what is written, and the lines wakegate prints (after the path).
BAD_FILES: dict[str, tuple[str, str, list[str]]] = {
    "json_syntax_error": (
        "keys.json",
        # A comma left out by hand.
        '{\n  "private/hello": [\n    {"sha256": "' + SHA + '", "created": 1}\n  ]\n'
        '  "demo/hello": []\n}\n',
        ["line 5, column 3: Expecting ',' delimiter"],
    ),
    "wrong_top_level_type": (
        "versions.json", '["1.0.0"]\n',
        ['(top level): must be an object mapping "<environment>/<service>" to a version, '
         "got array"],
    ),
    "not_a_colour": (
        "releases.json", '{"production/hello": {"live": "purple"}}\n',
        ['production/hello.live: "purple" is not a colour: blue or green'],
    ),
    "invalid_version": (
        "versions.json", '{"private/hello": "1.1.0; rm -rf /", "demo/hello": "1.0 beta"}\n',
        ['private/hello: "1.1.0; rm -rf /" is not a valid version: use 1 to 128 letters, '
         "digits, dots, dashes and underscores, starting with a letter or digit",
         'demo/hello: "1.0 beta" is not a valid version: use 1 to 128 letters, digits, dots, '
         "dashes and underscores, starting with a letter or digit"],
    ),
    "bad_sha256": (
        "keys.json",
        json.dumps({"private/hello": [{"sha256": SHA.upper(), "created": 1700000000},
                                      {"sha256": SHA[:-1], "created": 1700000000}]}),
        # Never a whole digest in a message: its first 12 characters.
        ['private/hello[0].sha256: must be a SHA-256 digest: 64 lowercase hex digits, got '
         f'a string of 64 characters, "{SHA.upper()[:12]}..."',
         'private/hello[1].sha256: must be a SHA-256 digest: 64 lowercase hex digits, got '
         f'a string of 63 characters, "{SHA[:12]}..."'],
    ),
    "unknown_field": (
        "keys.json",
        json.dumps({"private/hello": [{"sha256": SHA, "created": 1, "created_at": 1}]}),
        ['private/hello[0].created_at: unknown field (did you mean "created"?); allowed '
         "fields: sha256, created, last_used"],
    ),
    "same_key_twice": (
        "keys.json",
        json.dumps({"private/hello": [{"sha256": SHA, "created": 1},
                                      {"sha256": SHA, "created": 2, "last_used": None}]}),
        ["private/hello[1].sha256: the same key as private/hello[0]; keep one"],
    ),
    "duplicate_name": (
        "versions.json", '{"private/hello": "1.1.0", "private/hello": "1.2.0"}',
        ['"private/hello" appears more than once in one object; keep one'],
    ),
    "ephemeral_details": (
        "ephemeral.json",
        json.dumps({"pr-42": {"source": "demo", "access": "everyone", "created": 1700000000,
                              "expires": "tomorrow", "versions": {"hello": "1.0 beta"}},
                    "pr 43": {},
                    "pr-44": {"source": "demo", "access": "public", "created": 1}}),
        ['pr-42.access: must be "public" or "api_key", got string "everyone"',
         'pr-42.expires: must be epoch seconds (an integer), got string "tomorrow"',
         'pr-42.versions.hello: "1.0 beta" is not a valid version: use 1 to 128 letters, '
         "digits, dots, dashes and underscores, starting with a letter or digit",
         '"pr 43": this name is not a valid environment name: 1 to 24 letters, digits and '
         "dashes, starting with a letter",
         "pr-44.expires: missing: the field is required",
         "pr-44.versions: missing: the field is required"],
    ),
    "ephemeral_names": (
        "ephemeral.json",
        json.dumps({name: {"source": "demo", "access": "public", "created": 1,
                           "expires": expires, "versions": versions}
                    for name, expires, versions in (
                        ("prerelease", 2, {}), ("pr-", 2, {}), ("pr-1", 2, {}),
                        ("PR-1", 2, {}), ("pr-2", 10**400, {"Hello World/..": "1.0.0"}))}),
        ["prerelease: this name is reserved: it names a kind of environment; pick another "
         "name, e.g. pr-42",
         "pr-: this name ends with a dash; an ephemeral environment's name must end with a "
         "letter or digit",
         "PR-1: the same environment as pr-1 (names ignore case: their hosts are the same); "
         "keep one",
         "pr-2.expires: must be epoch seconds (an integer), got number 1" + "0" * 76 + "...",
         'pr-2.versions."Hello World/..": not a service name: a lowercase DNS label '
         "(letters, digits, dashes)"],
    ),
    "release_details": (
        "releases.json",
        json.dumps({"production/hello": {"live": "green", "last": "undo",
                                         "other": {"version": "", "role": "preview"}},
                    "hello": {"live": "blue"}}),
        ['production/hello.last: must be "promote", "rollback" or null, got string "undo"',
         'production/hello.other.version: "" is not a valid version: use 1 to 128 letters, '
         "digits, dots, dashes and underscores, starting with a letter or digit",
         'hello: not an instance name: use "<environment>/<service>", e.g. '
         '"production/hello"'],
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_state_file_stops_up_and_is_kept(tmp_path: Path, case: str) -> None:
    name, text, problems = BAD_FILES[case]
    wg = Wakegate(tmp_path, config())
    assert refused_start(wg, {name: text}) == [f"{at(wg, name)}: {p}" for p in problems]


def test_every_problem_in_every_file_in_one_run(tmp_path: Path) -> None:
    wg = Controller(tmp_path, config(), "controller")  # `wakegate controller` does the same
    files = {
        "keys.json": json.dumps({"private/hello": {"sha256": SHA}}),
        "versions.json": '{"demo/hello": 1.5}',
        "releases.json": '{"production/hello": {"live": "purple", "colour": "green"}}',
    }
    assert refused_start(wg, files) == [
        f"{at(wg, 'keys.json')}: private/hello: must be a list of keys, got object",
        f'{at(wg, "versions.json")}: demo/hello: must be a string, got number 1.5 '
        '(quote it: "1.5")',
        f"{at(wg, 'releases.json')}: production/hello.colour: unknown field; allowed "
        "fields: live, last, other",
        f'{at(wg, "releases.json")}: production/hello.live: "purple" is not a colour: '
        "blue or green",
    ]


def test_an_unreadable_state_file_names_the_os_error(tmp_path: Path) -> None:
    wg = Wakegate(tmp_path, config())
    (wg.state_dir / "versions.json").mkdir(parents=True)  # (as root, permissions never stop)
    code, stderr = wg.run_to_exit()
    assert code == 2, stderr
    assert stderr.splitlines() == [
        f"{at(wg, 'versions.json')}: cannot read the file: Is a directory"], stderr


def test_validate_checks_the_state_files(tmp_path: Path) -> None:
    wg = Wakegate(tmp_path, config())
    validate = wg.cli("validate", "-c", str(wg.config_path))
    assert validate.returncode == 0 and ": ok (" in validate.stdout, validate
    wg.state_dir.mkdir(parents=True)
    text = '{"production/hello": {"live": "purple"}}'
    (wg.state_dir / "releases.json").write_text(text)
    validate = wg.cli("validate", "-c", str(wg.config_path))
    assert validate.returncode == 2, validate
    assert validate.stderr.splitlines() == [
        f'{at(wg, "releases.json")}: production/hello.live: "purple" is not a colour: '
        "blue or green"], validate.stderr
    assert (wg.state_dir / "releases.json").read_text() == text


def test_files_written_by_a_real_run_start_again(wakegate: Start) -> None:
    wg = wakegate(config())
    assert list(wg.new_keys()) == ["private/hello"]  # keys.json
    wg.cli("push", "hello", "1.1.0", check=True)  # versions.json
    wg.cli("deploy", "hello", "2.0.0", "--env", "production", check=True)  # releases.json
    wg.cli("env", "create", "pr-1", "--from", "demo", "--ttl", "1h", check=True)  # ephemeral.json
    assert wg.stop() == 0
    for name in STATE_FILES:
        assert (wg.state_dir / name).exists(), name

    # Recorded by a newer wakegate: read, and kept when the file is written again.
    keys_path = wg.state_dir / "keys.json"
    keys = json.loads(keys_path.read_text())
    keys["private/hello"][0]["last_used"] = 1700000000
    keys_path.write_text(json.dumps(keys))
    validate = wg.cli("validate", "-c", str(wg.config_path))
    assert validate.returncode == 0, validate.stderr

    wg.start()
    assert wg.new_keys() == {}, "the stored key was read back"
    assert wg.status()[("private", "hello")]["version"] == "1.1.0"
    assert wg.status()[("pr-1", "hello")]["state"] == "sleeping"
    release = wg.cli("release", "status", "hello", check=True).stdout
    assert "live colour blue" in release and "green  preview   version 2.0.0" in release, release
    wg.cli("keys", "create", "hello", check=True)  # keys.json written again
    entries = json.loads(keys_path.read_text())["private/hello"]
    assert len(entries) == 2 and entries[0]["last_used"] == 1700000000, entries
