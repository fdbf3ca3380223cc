"""Config loading: presets, precedence (preset < file < env < flags), one-line validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringd.config import Config, ConfigError, env_var, knobs, load_config


def test_no_config_at_all_works_on_localhost() -> None:
    cfg = load_config(env={})
    assert cfg.preset == "local"
    assert cfg.net.bind_host == "127.0.0.1"
    assert cfg.net.multicast_interface == "127.0.0.1"
    assert cfg.net.multicast_ttl <= 1
    assert cfg.node_name  # defaults to the host name


def test_lan_preset_differs_from_local() -> None:
    lan, local = load_config(env={}, overrides={"preset": "lan"}), load_config(env={})
    assert lan.gossip.probe_interval_s > local.gossip.probe_interval_s
    assert lan.totem.token_timeout_s > local.totem.token_timeout_s
    assert lan.totem.ring_size_max == 32 and local.totem.ring_size_max == 16


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "ringd.toml"
    f.write_text(
        'name = "from-file"\ncluster_name = "c1"\n[gossip]\nprobe_interval_s = 0.9\n'
        "probe_timeout_s = 0.3\n[totem]\nwindow_size = 300\n"
    )
    env = {env_var("gossip.probe_interval_s"): "0.8", "RINGD_NAME": "from-env"}
    cfg = load_config(f, env=env, overrides={"name": "from-flag"})
    assert cfg.name == "from-flag"  # flag beats env beats file
    assert cfg.gossip.probe_interval_s == 0.8  # env beats file
    assert cfg.gossip.probe_timeout_s == 0.3  # file beats preset
    assert cfg.totem.window_size == 300
    assert cfg.cluster_name == "c1"


def test_preset_chosen_in_file_then_overridden(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('preset = "lan"\n[net]\nbind_host = "127.0.0.1"\n')
    cfg = load_config(f, env={})
    assert cfg.preset == "lan" and cfg.net.bind_host == "127.0.0.1"
    assert cfg.totem.token_timeout_s == Config.lan().totem.token_timeout_s


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"gossip.probe_timeout_s": "-1"}, "gossip.probe_timeout_s: must be > 0"),
        ({"net.port": "x"}, "net.port: expected an integer"),
        ({"net.port": "70000"}, "net.port: must be a port number"),
        ({"bogus": "1"}, "bogus: unknown key"),
        ({"gossip.nope": "1"}, "gossip.nope: unknown key"),
        ({"net.multicast_group": "10.1.2.3"}, "net.multicast_group: must be a multicast address"),
        ({"net.bind_host": "localhost!"}, "net.bind_host: must be an IP address"),
        ({"preset": "wan"}, "preset: must be one of local, lan"),
        ({"name": "bad name"}, "name: must be 1-63 characters"),
        ({"net.seeds": "127.0.0.1"}, "net.seeds: entry '127.0.0.1' must be host:port"),
        ({"gossip.probe_timeout_s": "2", "gossip.probe_interval_s": "1"}, "must be less than gossip.probe_interval_s"),
        ({"totem.max_messages": "500", "totem.window_size": "100"}, "totem.max_messages: must be <= totem.window_size"),
        ({"net.multicast_enabled": "maybe"}, "net.multicast_enabled: expected true or false"),
        ({"gossip.probe_interval_s": "nan"}, "gossip.probe_interval_s: expected a number"),
        ({"key_file": "/nonexistent/key"}, "key_file: /nonexistent/key is not a readable file"),
        ({"tags": "role"}, "tags: expected key=value pairs"),
        ({"key_mode": "mac"}, "key_mode: must be one of encrypt, auth_only"),
        ({"control_allow_users": "app,bad user"}, "control_allow_users: entry 'bad user' must be a user name"),
        ({"tags": "k=" + "v" * 600}, "tags: 603 bytes exceeds gossip.tags_bytes_max"),
        ({"quorum.votes": "-1"}, "quorum.votes: must be between 0 and 1000"),
        ({"quorum.expected_votes": "x"}, "quorum.expected_votes: expected an integer"),
        ({"quorum.nonprimary_sends": "some"}, "quorum.nonprimary_sends: must be one of safe, all, none"),
        ({"quorum.group_policy": "locks=maybe"}, "quorum.group_policy: group 'locks': must be one of"),
        ({"quorum.group_policy": "locks"}, "quorum.group_policy: expected key=value pairs"),
        ({"quorum.two_node": "true", "quorum.expected_votes": "3"}, "quorum.two_node: needs quorum.expected_votes 0 or 2"),
        ({"quorum.last_man_standing_window_s": "0"}, "quorum.last_man_standing_window_s: must be > 0"),
    ],
)
def test_bad_values_give_one_line_error_naming_the_key(overrides: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={}, overrides=overrides)
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg and msg.startswith("config error: ")


def test_bad_env_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match="totem.window_size: expected an integer"):
        load_config(env={"RINGD_TOTEM_WINDOW_SIZE": "lots"})


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("name = ", "invalid TOML"),
        ("[gossip]\nprobe_interval_s = true\n", "gossip.probe_interval_s: expected a number"),
        ("gossip = 3\n", "[gossip] must be a table"),
    ],
)
def test_bad_toml_file(tmp_path: Path, content: str, needle: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(content)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        load_config(f, env={})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Path("/nonexistent/ringd.toml"), env={})


def test_every_knob_has_help_and_an_env_var() -> None:
    table = knobs()
    assert "gossip.probe_interval_s" in table and "totem.token_timeout_s" in table
    for key, f in table.items():
        assert f.metadata.get("help"), key
        assert env_var(key).startswith("RINGD_") and "." not in env_var(key)


def test_tags_parse_forms() -> None:
    assert load_config(env={}, overrides={"tags": "role=db,zone=a"}).tags_dict == {"role": "db", "zone": "a"}
    assert load_config(env={}, overrides={"tags": {"b": "2", "a": "1"}}).tags == (("a", "1"), ("b", "2"))
