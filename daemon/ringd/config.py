"""Configuration: one frozen dataclass per layer, presets, validation, TOML/env/flag loading.

Precedence, lowest first: preset defaults < TOML file < ``RINGD_*`` environment < flags.
Every knob has a dotted key (``gossip.probe_interval_s``); the environment variable for it
is ``RINGD_`` + the key upper-cased with dots as underscores (``RINGD_GOSSIP_PROBE_INTERVAL_S``).
Every error is a :class:`ConfigError` whose message is one line naming the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad configuration value; ``str(err)`` is one line naming the key."""


Check = Callable[[Any], str | None]  # returns a problem description, or None when fine


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _between(lo: float, hi: float) -> Check:
    def check(v: Any) -> str | None:
        return None if lo <= v <= hi else f"must be between {lo} and {hi}"

    return check


def _port(v: Any) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number 0..65535"


def _ip(v: Any) -> str | None:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return "must be an IP address"
    return None


def _multicast(v: Any) -> str | None:
    try:
        addr = ipaddress.ip_address(v)
    except ValueError:
        return "must be an IP address"
    return None if addr.is_multicast else "must be a multicast address (224.0.0.0/4 or ff00::/8)"


def _name(v: Any) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}", v):
        return "must be 1-63 characters of letters, digits, '.', '_' or '-'"
    return None


def _hostport(v: Any) -> str | None:
    for item in v:
        host, sep, port = item.rpartition(":")
        # isascii: str.isdigit() also accepts digits int() refuses (e.g. "²")
        if not sep or not port.isascii() or not port.isdigit() or len(port) > 5 \
                or not 0 < int(port) <= 65535:
            return f"entry {item!r} must be host:port"
        if _ip(host.strip("[]")):
            return f"entry {item!r} must have an IP address as host"
    return None


def _path(v: Any) -> str | None:
    return "must not contain a NUL character" if "\0" in v else None


def _log_level(v: Any) -> str | None:
    ok = ("debug", "info", "warning", "error")
    return None if v in ok else f"must be one of {', '.join(ok)}"


def _key_mode(v: Any) -> str | None:
    return None if v in KEY_MODES else f"must be one of {', '.join(KEY_MODES)}"


def _users(v: Any) -> str | None:
    for item in v:
        if not re.fullmatch(r"\*|[0-9]+|[A-Za-z_][A-Za-z0-9_.\-]{0,31}\$?", item):
            return f"entry {item!r} must be a user name, a uid or \"*\""
    return None


KEY_MODES = ("encrypt", "auth_only")


def _preset(v: Any) -> str | None:
    return None if v in PRESETS else f"must be one of {', '.join(PRESETS)}"


def knob(default: Any, help: str, check: Check | None = None) -> Any:
    """A config field with its help text and validator kept next to its default."""
    return field(default=default, metadata={"help": help, "check": check})


@dataclass(frozen=True, slots=True, kw_only=True)
class NetConfig:
    """Sockets. Defaults keep every byte on the loopback interface."""

    bind_host: str = knob("127.0.0.1", "unicast bind address (gossip and token)", _ip)
    port: int = knob(7946, "unicast UDP port (0 = pick a free one)", _port)
    advertise_host: str = knob("", "address peers use to reach us (empty = bind_host)",
                               lambda v: None if v == "" else _ip(v))
    multicast_group: str = knob("239.255.77.77", "multicast group for discovery and Totem", _multicast)
    multicast_port: int = knob(7947, "multicast UDP port, shared by all daemons of a host", _port)
    multicast_interface: str = knob("127.0.0.1", "address of the interface that joins the group", _ip)
    multicast_ttl: int = knob(1, "multicast TTL (1 = never leaves the link)", _between(0, 255))
    multicast_enabled: bool = knob(True, "use multicast (false: seeds only)")
    seeds: tuple[str, ...] = knob((), "host:port of peers to contact by unicast", _hostport)
    inbox_len_max: int = knob(4096, "datagrams queued for the protocol task before drops", _positive)
    datagram_bytes_max: int = knob(65000, "largest datagram sent or accepted", _between(512, 65507))


@dataclass(frozen=True, slots=True, kw_only=True)
class GossipConfig:
    """SWIM + Lifeguard timings.

    Suspicion timeout (memberlist ``suspicionTimeout``):
      min = suspicion_mult * max(1, log10(n)) * probe_interval_s,  max = suspicion_max_mult * min,
      after c of k = suspicion_confirmations independent confirmations:
      timeout = max - (ln(c+1) / ln(k+1)) * (max - min), floored at min.
    Retransmit limit per update = retransmit_mult * ceil(log10(n + 1)).
    """

    probe_interval_s: float = knob(0.4, "time between probes of one member", _positive)
    probe_timeout_s: float = knob(0.2, "wait for a direct ack before indirect probes", _positive)
    indirect_checks: int = knob(3, "members asked to probe indirectly (k)", _between(0, 16))
    suspicion_mult: float = knob(1.5, "suspicion timeout multiplier", _positive)
    suspicion_max_mult: float = knob(4.0, "max suspicion timeout as a multiple of the min", _between(1, 100))
    suspicion_confirmations: int = knob(2, "independent confirmations that shrink suspicion to min", _between(0, 32))
    retransmit_mult: int = knob(4, "piggyback retransmissions multiplier (lambda)", _between(1, 32))
    gossip_interval_s: float = knob(0.1, "interval of gossip rounds while updates are pending", _positive)
    gossip_nodes: int = knob(3, "random members each gossip round sends to", _between(1, 32))
    push_pull_interval_s: float = knob(15.0, "full state sync with a random member", _positive)
    announce_interval_s: float = knob(2.0, "multicast discovery announcements while alone or periodically", _positive)
    reap_dead_s: float = knob(60.0, "forget dead/left members after this time", _positive)
    awareness_max: int = knob(8, "Lifeguard local health multiplier ceiling", _between(1, 64))
    tags_bytes_max: int = knob(512, "largest encoded tags", _between(0, 4096))


@dataclass(frozen=True, slots=True, kw_only=True)
class TotemConfig:
    """Totem single-ring timings and limits (corosync ``totem_config`` names, in seconds)."""

    token_timeout_s: float = knob(0.5, "token loss timeout (of a ring of two; see token_coefficient_s)", _positive)
    token_coefficient_s: float = knob(0.03, "added to the token loss timeout (and, in proportion, to consensus) per ring member beyond two, as corosync's token_coefficient: a rotation has one hop per member", _non_negative)
    token_retransmit_s: float = knob(0.1, "resend the token when no progress seen (the longest wait; see token_retransmit_min_s)", _positive)
    token_retransmit_min_s: float = knob(0.02, "shortest wait before resending the token: the wait adapts to three rotations at the fastest recent pace, within [token_retransmit_min_s, token_retransmit_s] (token_retransmit_s if lower), so a lost token costs a few rotations", _positive)
    join_s: float = knob(0.05, "join message retransmit interval", _positive)
    consensus_s: float = knob(0.6, "time to reach consensus before failing silent members", _positive)
    merge_s: float = knob(0.2, "merge-detect interval while the token is held", _positive)
    window_size: int = knob(200, "messages all members may send per rotation", _between(1, 100000))
    max_messages: int = knob(100, "messages one member may send per token visit", _between(1, 100000))
    fail_recv_const: int = knob(50, "token visits without aru progress before failing to receive", _positive)
    seqno_unchanged_const: int = knob(1, "quiet rotations, after the first, before the token is held by the member that sent last (corosync: 30, but a token hop here costs about 0.2 ms of CPU); at least 1, because members deliver a safe message only once the token has passed them twice since they had it", _positive)
    mtu_bytes: int = knob(60000, "largest packed Totem datagram payload", _between(512, 65000))
    message_bytes_max: int = knob(1 << 20, "largest application message (fragmented)", _between(1, 64 << 20))
    send_queue_len_max: int = knob(10000, "app messages queued before send refuses", _positive)
    flap_window_s: float = knob(30.0, "window in which alive/dead changes count as flapping", _positive)
    flap_count: int = knob(3, "changes within the window that mark a member flapping", _between(2, 1000))
    flap_stable_s: float = knob(10.0, "time a flapping member must stay alive before rejoining", _non_negative)
    # 16 with the local preset: 50 daemons started together on one 2-core host form a ring
    # of 16 within 20 s (32 also holds, but takes 24-29 s to form while 50 interpreters
    # start). The lan preset (one daemon per host) allows 32, corosync's tested size.
    ring_size_max: int = knob(16, "largest ring; alive members beyond it, in name order, stay "
                              "gossip-only observers", _between(1, 256))


NONPRIMARY_POLICIES = ("safe", "all", "none")


def _policy(v: Any) -> str | None:
    return None if v in NONPRIMARY_POLICIES else f"must be one of {', '.join(NONPRIMARY_POLICIES)}"


def _group_policies(v: Any) -> str | None:
    for group, policy in v:
        if not group:
            return "empty group name"
        if problem := _policy(policy):
            return f"group {group!r}: {problem}"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class QuorumConfig:
    """Quorum: which configuration is the primary component (votequorum's option names).

    A configuration is primary when its members' votes reach the quorum,
    ``expected // 2 + 1``, where ``expected`` is the highest of the members' expected votes
    and of the votes present. ``two_node``: a quorum of 1 when expected is 2.
    """

    votes: int = knob(1, "votes this daemon brings to a configuration", _between(0, 1000))
    expected_votes: int = knob(0, "votes of the whole cluster (0 = the highest total of votes "
                               "ever seen in a regular configuration, persisted)", _between(0, 100000))
    wait_for_all: bool = knob(False, "after a start, primary only once a configuration held all "
                              "expected votes (or joins members already in a primary component)")
    last_man_standing: bool = knob(False, "after a stable loss, expected votes shrink to the "
                                   "votes present (one step per window)")
    last_man_standing_window_s: float = knob(10.0, "how long a primary configuration must stay "
                                             "before last_man_standing shrinks expected votes", _positive)
    two_node: bool = knob(False, "two daemons of 1 vote: either alone is primary (implies "
                          "wait_for_all; needs fencing to be safe)")
    nonprimary_sends: str = knob("safe", "sends refused from a non-primary component: safe "
                                 "(safe sends refused, agreed delivered marked primary=false), "
                                 "all, or none (everything delivered, marked)", _policy)
    group_policy: tuple[tuple[str, str], ...] = knob(
        (), "per-group nonprimary_sends (group=safe|all|none, comma-separated)", _group_policies)


def _default_name() -> str:
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname())[:63] or "ringd"
    return host if host[0].isalnum() else "n" + host[:62]


def _runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "ringd" if base else Path(f"/tmp/ringd-{os.getuid()}")


def default_socket_path() -> Path:
    """Control socket of the default daemon (what ``--socket`` defaults to)."""
    return _runtime_dir() / "ringd.sock"


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Whole daemon configuration. Build it with :func:`load_config` or a preset."""

    name: str = knob("", "node name, unique in the cluster (empty = host name)",
                     lambda v: None if v == "" else _name(v))
    cluster_name: str = knob("ringd", "cluster name; datagrams of other clusters are dropped", _name)
    preset: str = knob("local", "timing preset: local or lan", _preset)
    state_dir: str = knob("", "directory for persistent state (empty = runtime dir / name)", _path)
    socket: str = knob("", "control socket path (empty = default socket)", _path)
    key_file: str = knob("", "file with the shared cluster key (mode 0600); enables AES-256-GCM "
                         "encryption of every datagram (see key_mode)", _path)
    key_mode: str = knob("encrypt", "with a key: encrypt (AES-256-GCM, the default) or auth_only "
                         "(authenticated, readable on the wire)", _key_mode)
    control_allow_users: tuple[str, ...] = knob((), "users (names or uids) besides the daemon's own "
                                                "whose processes may use the control socket; "
                                                "\"*\" = anyone who can open it", _users)
    metrics_host: str = knob("127.0.0.1", "address of the /metrics HTTP server", _ip)
    metrics_port: int = knob(0, "port of the /metrics HTTP server (0 = disabled)", _port)
    log_level: str = knob("info", "debug, info, warning or error", _log_level)
    tags: tuple[tuple[str, str], ...] = knob((), "member tags (key=value), disseminated by gossip")
    net: NetConfig = field(default_factory=NetConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    totem: TotemConfig = field(default_factory=TotemConfig)
    quorum: QuorumConfig = field(default_factory=QuorumConfig)

    @classmethod
    def local(cls) -> Config:
        """Fast timings for daemons sharing one host over loopback multicast (the default)."""
        return cls(preset="local")

    @classmethod
    def lan(cls) -> Config:
        """Timings for a switched LAN: slower probes, longer token timeout (still sub-2 s failover)."""
        return cls(
            preset="lan",
            net=NetConfig(bind_host="0.0.0.0", multicast_interface="0.0.0.0", datagram_bytes_max=1400 * 40),
            gossip=GossipConfig(probe_interval_s=0.5, probe_timeout_s=0.3, suspicion_mult=3.0,
                                gossip_interval_s=0.15, push_pull_interval_s=30.0, reap_dead_s=300.0),
            # One daemon per host: no CPU starvation across members, and the token timeout
            # grows with the ring (token_coefficient_s); 32 members pass the simulator.
            totem=TotemConfig(token_timeout_s=1.0, token_retransmit_s=0.2,
                              token_retransmit_min_s=0.01, consensus_s=1.2,
                              mtu_bytes=1400, ring_size_max=32),
        )

    # Derived values -----------------------------------------------------------------

    @property
    def node_name(self) -> str:
        return self.name or _default_name()

    @property
    def advertise_host(self) -> str:
        return self.net.advertise_host or self.net.bind_host

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir) if self.state_dir else _runtime_dir() / self.node_name

    @property
    def socket_path(self) -> Path:
        return Path(self.socket) if self.socket else default_socket_path()

    @property
    def tags_dict(self) -> dict[str, str]:
        return dict(self.tags)


PRESETS: dict[str, Callable[[], Config]] = {"local": Config.local, "lan": Config.lan}
_SECTIONS = {"net": NetConfig, "gossip": GossipConfig, "totem": TotemConfig,
             "quorum": QuorumConfig}


def knobs() -> dict[str, dataclasses.Field[Any]]:
    """Every dotted config key and its dataclass field, for help texts and env lookup."""
    out: dict[str, dataclasses.Field[Any]] = {}
    for f in fields(Config):
        if f.name in _SECTIONS:
            for sub in fields(_SECTIONS[f.name]):
                out[f"{f.name}.{sub.name}"] = sub
        else:
            out[f.name] = f
    return out


def env_var(key: str) -> str:
    return "RINGD_" + key.replace(".", "_").upper()


def _coerce(key: str, f: dataclasses.Field[Any], value: Any) -> Any:
    """Turn a TOML/env/flag value into the field's type, or raise a one-line ConfigError."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
            return out
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if kind == "tuple[str, ...]":
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return tuple(value)
        if kind == "tuple[tuple[str, str], ...]":
            return _coerce_tags(value)
    except (ValueError, TypeError):
        pass
    else:
        raise ConfigError(f"config error: {key}: unsupported type {kind}")
    raise ConfigError(f"config error: {key}: expected {_describe(kind)}, got {value!r}")


def _coerce_tags(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        pairs = []
        for item in filter(None, (v.strip() for v in value.split(","))):
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise ValueError
            pairs.append((k, v))
        return tuple(pairs)
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ValueError
        return tuple(sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return tuple((str(k), str(v)) for k, v in value)
    raise ValueError


def _describe(kind: str) -> str:
    return {
        "bool": "true or false",
        "int": "an integer",
        "float": "a number",
        "str": "a string",
        "tuple[str, ...]": "a list of strings (or comma-separated)",
        "tuple[tuple[str, str], ...]": "key=value pairs (a table, or comma-separated)",
    }.get(kind, kind)


def _flatten_toml(data: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if k in _SECTIONS:
            if not isinstance(v, Mapping):
                raise ConfigError(f"config error: [{k}] must be a table")
            for sk, sv in v.items():
                flat[f"{k}.{sk}"] = sv
        else:
            flat[k] = v
    return flat


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file into dotted keys; errors are one line."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config error: file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config error: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config error: {path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes the whole file first
        raise ConfigError(f"config error: {path}: invalid TOML: not UTF-8 text "
                          f"(byte {exc.start})") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(f"config error: {path}: invalid TOML: arrays or tables nested "
                          "too deeply") from None
    return _flatten_toml(data)


def load_config(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a validated Config: preset < file < env < overrides (dotted keys)."""
    env = os.environ if env is None else env
    table = knobs()
    layers: list[dict[str, Any]] = []
    if file is not None:
        layers.append(read_toml(file))
    layers.append({key: env[env_var(key)] for key in table if env_var(key) in env})
    layers.append(dict(overrides or {}))

    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key not in table:
                shown = key if key.isprintable() else repr(key)  # the error stays one line
                raise ConfigError(f"config error: {shown}: unknown key")
            merged[key] = _coerce(key, table[key], value)

    preset = merged.get("preset", "local")
    if problem := _preset(preset):
        raise ConfigError(f"config error: preset: {problem} (got {preset!r})")
    cfg = PRESETS[preset]()
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    for key, value in merged.items():
        section, _, sub = key.partition(".")
        if sub:
            sections[section][sub] = value
        else:
            top[key] = value
    cfg = replace(
        cfg,
        **top,
        **{s: replace(getattr(cfg, s), **vals) for s, vals in sections.items() if vals},
    )
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Check every knob and the cross-field rules; raise one-line ConfigError on the first problem."""
    for key, f in knobs().items():
        section, _, sub = key.partition(".")
        value = getattr(getattr(cfg, section), sub) if sub else getattr(cfg, key)
        check = f.metadata.get("check")
        if check and (problem := check(value)):
            raise ConfigError(f"config error: {key}: {problem} (got {value!r})")
    g, t = cfg.gossip, cfg.totem
    if g.probe_timeout_s >= g.probe_interval_s:
        raise ConfigError(
            f"config error: gossip.probe_timeout_s: must be less than gossip.probe_interval_s "
            f"({g.probe_timeout_s} >= {g.probe_interval_s})"
        )
    if t.token_retransmit_s >= t.token_timeout_s:
        raise ConfigError(
            f"config error: totem.token_retransmit_s: must be less than totem.token_timeout_s "
            f"({t.token_retransmit_s} >= {t.token_timeout_s})"
        )
    if t.max_messages > t.window_size:
        raise ConfigError(
            f"config error: totem.max_messages: must be <= totem.window_size "
            f"({t.max_messages} > {t.window_size})"
        )
    q = cfg.quorum
    if q.two_node and q.expected_votes not in (0, 2):
        raise ConfigError(f"config error: quorum.two_node: needs quorum.expected_votes 0 or 2 "
                          f"(got {q.expected_votes})")
    if q.two_node and q.votes != 1:
        raise ConfigError(f"config error: quorum.two_node: needs quorum.votes = 1 (got {q.votes})")
    if any(not k for k, _ in cfg.tags):
        raise ConfigError("config error: tags: empty tag name")
    try:
        tag_bytes = sum(len(k.encode()) + len(v.encode()) + 2 for k, v in cfg.tags)
    except UnicodeEncodeError:  # undecodable bytes from the environment or argv
        raise ConfigError("config error: tags: not valid UTF-8 text") from None
    if tag_bytes > g.tags_bytes_max:
        raise ConfigError(
            f"config error: tags: {tag_bytes} bytes exceeds gossip.tags_bytes_max ({g.tags_bytes_max})"
        )
    if cfg.key_file:
        shown = cfg.key_file if cfg.key_file.isprintable() else repr(cfg.key_file)  # one line
        try:
            readable = Path(cfg.key_file).is_file()
        except OSError as exc:  # is_file() lets e.g. ENAMETOOLONG through
            raise ConfigError(f"config error: key_file: {shown}: {exc.strerror}") from None
        if not readable:
            raise ConfigError(f"config error: key_file: {shown} is not a readable file")
