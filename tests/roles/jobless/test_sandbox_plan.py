"""The sandbox's pure logic: which paths a job sees, which are masked, the network policy."""

from __future__ import annotations

import pytest

from node.roles.jobless.sandbox.plan import (
    SandboxSettings,
    job_environment,
    network_allowed,
    plan_mounts,
    topmost,
)


def test_topmost_keeps_each_tree_once():
    paths = ["/usr/lib", "/usr", "/opt/x", "/opt/x/y", "/opt/xy", "/"]
    assert topmost(paths) == ["/opt/x", "/opt/xy", "/usr"]


def test_node_paths_inside_a_shown_path_are_masked_and_shown_paths_inside_node_paths_dropped():
    plan = plan_mounts(
        shown=["/usr", "/srv/venv", "/srv/venv/lib/site-packages", "/data/node/plugins", "/etc"],
        hidden=["/srv/venv/seamless-data", "/data/node", "/etc/seamless/node.key", "/elsewhere"],
        symlinks={},
    )
    assert plan.binds == ("/etc", "/srv/venv", "/usr")
    assert plan.masks == ("/etc/seamless/node.key", "/srv/venv/seamless-data")


def test_a_shown_path_that_is_a_node_path_is_not_shown():
    plan = plan_mounts(shown=["/usr", "/srv/project"], hidden=["/srv/project"], symlinks={})
    assert plan.binds == ("/usr",) and plan.masks == ()


def test_reserved_paths_and_symlinks_are_not_bound():
    plan = plan_mounts(shown=["/tmp", "/tmp/x", "/proc", "/dev/shm", "/job", "/bin", "/usr"], hidden=[],
                       symlinks={"/bin": "usr/bin"})
    assert plan.binds == ("/usr",) and plan.symlinks == {"/bin": "usr/bin"}


@pytest.mark.parametrize(
    "policy,powers,allowed",
    [
        ("none", {"network": True}, False),
        ("requested", {"network": True}, True),
        ("requested", {"network": False}, False),
        ("requested", None, False),
        ("requested", ["network"], False),
        ("always", None, True),
    ],
)
def test_network_policy(policy, powers, allowed):
    assert network_allowed(policy, powers) is allowed


def test_settings_travel_as_json_and_ignore_unknown_keys():
    settings = SandboxSettings(uid=1234, read_only=("/ref",), hidden=("/data",), memory=5, output=7)
    assert SandboxSettings.from_json(settings.to_json()) == settings
    assert SandboxSettings.from_dict({**settings.to_dict(), "later": 1}) == settings


def test_the_job_environment_keeps_nothing_of_the_nodes_but_the_locale():
    env = job_environment("/venv/bin", {"LANG": "C.UTF-8", "AWS_SECRET_ACCESS_KEY": "x", "PATH": "/root/bin"})
    assert env["PATH"].split(":")[0] == "/venv/bin" and "/root/bin" not in env["PATH"]
    assert env["LANG"] == "C.UTF-8" and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["HOME"] == "/job/work"


def test_the_seccomp_program_is_well_formed():
    from node.roles.jobless.sandbox.seccomp import ALLOW, program

    for machine in ("x86_64", "aarch64"):
        ops = program(machine)
        assert 0 < len(ops) < 4096 and ops[-1] == (0x06, 0, 0, ALLOW)
        for index, (code, jt, jf, _k) in enumerate(ops):
            if code & 0x07 == 0x05:  # a jump lands inside the program
                assert index + 1 + max(jt, jf) < len(ops)
    assert program("sparc") == []
