import pytest

from node.config import build_config, parse_seconds, parse_size
from node.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "node.yaml"
    path.write_text(text)
    return str(path)


def test_defaults():
    config = build_config(environ={})
    assert config.node.host == "127.0.0.1"
    assert config.node.port == 5533
    assert config.node.roles == ("buffers",) or "buffers" in config.node.roles
    assert config.buffer_directory.endswith("buffers")


def test_precedence_flags_over_env_over_yaml(tmp_path):
    path = write(tmp_path, "node:\n  port: 1111\n  host: 127.0.0.2\nbuffers:\n  max_buffer_size: 1MiB\n")
    env = {"SEAMLESS_NODE__NODE__PORT": "2222", "SEAMLESS_NODE__BUFFERS__READONLY": "true"}
    config = build_config(config_file=path, environ=env, flags={"node": {"port": 3333, "host": None}})
    assert config.node.port == 3333  # flag wins
    assert config.node.host == "127.0.0.2"  # YAML, no override
    assert config.buffers.readonly is True  # environment
    assert config.buffers.max_buffer_size == 1024 * 1024
    config = build_config(config_file=path, environ=env)
    assert config.node.port == 2222


@pytest.mark.parametrize(
    "text, message",
    [
        ("node: [1, 2\n", "not valid YAML"),
        ("node:\n  prot: 1\n", "unknown setting node.prot"),
        ("nodes:\n  port: 1\n", "unknown section 'nodes'"),
        ("node:\n  port: eighty\n", "node.port: expected a whole number"),
        ("node:\n  port: 70000\n", "between 0 and 65535"),
        ("buffers:\n  max_buffer_size: lots\n", "expected a size"),
        ("buffers:\n  readonly: maybe\n", "expected true or false"),
        ("- a\n- b\n", "mapping of sections"),
        ("node: 5\n", "must be a mapping"),
        ("node:\n  roles: [buffers, bogus]\n", "unknown role(s) bogus; valid roles: buffers, database"),
        ("!!python/object/apply:os.system ['true']\n", "not valid YAML"),
        ("federation:\n  revocations_interval: 0s\n", "revocations_interval must be at least 1"),
    ],
)
def test_bad_yaml_gives_one_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        build_config(config_file=write(tmp_path, text), environ={})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(config_file="/nonexistent/node.yaml", environ={})


def test_bad_environment_variable():
    with pytest.raises(ConfigError, match="SEAMLESS_NODE__NODE__PORT"):
        build_config(environ={"SEAMLESS_NODE__NODE__PORT": "x"})
    with pytest.raises(ConfigError, match="SECTION__KEY"):
        build_config(environ={"SEAMLESS_NODE__PORT": "1"})


def test_roles_from_environment_as_comma_list():
    config = build_config(environ={"SEAMLESS_NODE__NODE__ROLES": "buffers, buffers"})
    assert config.node.roles == ("buffers", "buffers")


@pytest.mark.parametrize(
    "text, value", [(0, 0), ("1k", 1024), ("1kb", 1000), ("1.5MiB", 1572864), ("2 GB", 2_000_000_000)]
)
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_parse_size_rejects():
    for bad in (-1, "1 parsec", True, "", "1e9"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_parse_seconds():
    assert parse_seconds("10m") == 600
    assert parse_seconds(2.5) == 2.5
    assert parse_seconds("1d") == 86400
    with pytest.raises(ValueError):
        parse_seconds("soon")
