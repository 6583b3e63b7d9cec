"""What a Sentinel-managed pool needs to know: the sentinels, the service, the role it serves,
and how to talk to the sentinels (their own credentials and TLS); and the
``redis+sentinel://`` URL form that carries all of it.

Pure code, no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode

from .._config import RedisConfig, redact_url, split_url_over
from .._errors import ConfigError

__all__ = ["DEFAULT_SENTINEL_PORT", "SentinelSettings", "sentinel_config", "split_sentinel_url"]

DEFAULT_SENTINEL_PORT = 26379
Role = Literal["primary", "replica"]
_ROLES: dict[str, Role] = {
    "primary": "primary", "master": "primary", "replica": "replica", "slave": "replica",
}  # fmt: skip
_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
# Query options of a sentinel URL that are about the sentinels (or the service), not the data
# nodes; every other option configures the data nodes, as in a redis:// URL.
_SENTINEL_QUERY = ("sentinel_username", "sentinel_password", "role", "service_name")
# RedisConfig fields a sentinel connection takes from the data nodes' configuration unless
# told otherwise: how to reach a server (TLS, timeouts, keepalive), never who to be.
_INHERITED = (
    "ssl", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname",
    "ssl_ca_data", "ssl_ca_path", "ssl_password", "ssl_min_version", "ssl_ciphers",
    "ssl_include_verify_flags", "ssl_exclude_verify_flags", "ssl_context", "socket_keepalive",
    "socket_keepalive_options", "client_name", "lib_name", "lib_version",
)  # fmt: skip
# A sentinel that accepts a connection and never answers must not stall discovery: each one
# gets this long (connect and reply) unless sentinel_options say otherwise.
SENTINEL_TIMEOUT = 2.0


def _fail(field: str, shown: Any, reason: str) -> ConfigError:
    return ConfigError(field, shown, reason)


@dataclasses.dataclass(frozen=True)
class SentinelSettings:
    """Where the sentinels are and what to ask them.

    Attributes:
        sentinels: ``(host, port)`` of each sentinel, in the order to ask them first.
        service_name: the name the sentinels monitor the primary under.
        role: ``"primary"`` (writes and reads) or ``"replica"`` (reads, spread over the
            healthy replicas).
        config: how to connect to a sentinel (its host and port are each sentinel's).
    """

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    role: Role
    config: RedisConfig

    def __post_init__(self) -> None:
        if not self.sentinels:
            raise _fail("sentinels", self.sentinels, "must name at least one (host, port)")
        if not isinstance(self.service_name, str) or not self.service_name:
            raise _fail("service_name", self.service_name, "must be a non-empty string")


def check_role(value: Any) -> Role:
    """``"primary"`` or ``"replica"`` (redis-py's ``"master"``/``"slave"`` are accepted).

    Raises:
        ConfigError: any other value.
    """
    role = _ROLES.get(value) if isinstance(value, str) else None
    if role is None:
        raise _fail("role", value, "must be 'primary' or 'replica'")
    return role


def check_sentinels(sentinels: Any) -> tuple[tuple[str, int], ...]:
    """The sentinel addresses as ``(host, port)`` pairs; ``"host:port"`` strings and a bare
    host (port 26379) are accepted too.

    Errors never show what could be a password: a string with user info (a URL given by
    mistake) is shown redacted, and a port that is not a number only by its type.

    Raises:
        ConfigError: not a sequence of addresses, or an address is malformed.
    """
    if isinstance(sentinels, str | bytes) or not isinstance(sentinels, Iterable):
        raise _fail(
            "sentinels", _shown(sentinels),
            "must be a sequence of (host, port) pairs or 'host:port' strings (a URL goes to "
            "from_url)",
        )  # fmt: skip
    result = []
    for entry in sentinels:
        if isinstance(entry, str):
            if "@" in entry or "://" in entry:
                raise _fail(
                    "sentinels", _shown(entry),
                    "an entry is 'host:port' (credentials go in sentinel_username and "
                    "sentinel_password; a URL goes to from_url)",
                )  # fmt: skip
            result.append(_address(entry, "sentinels", repr(entry)))
            continue
        try:
            host, port = entry
        except (TypeError, ValueError):
            raise _fail(
                "sentinels", type(entry).__name__, "entries must be (host, port) pairs"
            ) from None
        if not isinstance(host, str) or not host:
            raise _fail("sentinels", type(host).__name__,
                        "a sentinel's host must be a non-empty string")  # fmt: skip
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            shown = (host, port) if isinstance(port, int) else (host, type(port).__name__)
            raise _fail("sentinels", shown, "a sentinel's port must be an integer in 1-65535")
        result.append((host, port))
    if not result:
        raise _fail("sentinels", _shown(sentinels), "must name at least one sentinel")
    return tuple(result)


def is_port(text: str) -> bool:
    """Whether ``text`` is a TCP port number in ASCII digits (``str.isdigit`` accepts "²",
    which ``int()`` refuses)."""
    return text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


def _shown(value: Any) -> Any:
    """``value`` as an error shows it: a string with user info redacted (see redact_url);
    anything else but a short sequence of addresses by its type."""
    if isinstance(value, str):
        return redact_url(value) if "@" in value else value
    if isinstance(value, bytes):
        return "bytes"
    if isinstance(value, list | tuple) and len(value) <= 8:
        return [_shown(item) if isinstance(item, str) else type(item).__name__ for item in value]
    return type(value).__name__


def _address(text: str, field: str, shown: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` (port 26379 when left out)."""
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise _fail(field, shown, "an IPv6 sentinel must be written [address]:port")
        port_text = after[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise _fail(field, shown, "a sentinel's host is empty")
    if not port_text:
        return unquote(host), DEFAULT_SENTINEL_PORT
    if not is_port(port_text):
        raise _fail(field, shown, "a sentinel's port must be an integer in 1-65535")
    return unquote(host), int(port_text)


def sentinel_config(
    data: RedisConfig,
    *,
    username: str | None = None,
    password: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> RedisConfig:
    """How to connect to a sentinel: the data nodes' TLS, keepalive and client name (not
    their credentials, database or protocol), ``username``/``password`` for the sentinels,
    a bounded connect and reply time (``SENTINEL_TIMEOUT``) unless the data nodes' are
    shorter, and then ``options`` (any RedisConfig field) over all of that.

    Raises:
        ConfigError: an option is not a RedisConfig field, or is invalid.
    """
    if options is not None and not isinstance(options, Mapping):
        raise _fail(
            "sentinel_options", type(options).__name__,
            "must be a mapping of RedisConfig fields to values, e.g. {'socket_timeout': 1.0}",
        )  # fmt: skip
    fields: dict[str, Any] = {name: getattr(data, name) for name in _INHERITED}
    fields["username"], fields["password"] = username, password
    fields["protocol"] = 2  # sentinel replies are read in their RESP2 shapes
    for name in ("connect_timeout", "socket_timeout"):
        value = getattr(data, name)
        fields[name] = SENTINEL_TIMEOUT if value is None else min(value, SENTINEL_TIMEOUT)
    for name in options or {}:
        if name not in RedisConfig.__dataclass_fields__:
            raise _fail("sentinel_options", name, "is not a RedisConfig field")
        if name in ("host", "port", "db", "unix_socket_path"):
            raise _fail(
                "sentinel_options", name, "cannot be set: each sentinel's address is its own"
            )
    fields.update(options or {})
    return RedisConfig(**fields)


def split_sentinel_url(
    url: str, defaults: Mapping[str, Any]
) -> tuple[tuple[tuple[str, int], ...], str, dict[str, Any], RedisConfig, dict[str, Any]]:
    """Read ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]
    [?options]`` (``rediss+sentinel://`` for TLS to the sentinels and the data nodes).

    A sentinel without a port listens on 26379.  The user info and the options are the data
    nodes', as in a ``redis://`` URL; ``sentinel_username`` and ``sentinel_password`` are the
    sentinels' credentials, ``role=primary|replica`` picks what the pool serves.

    Returns:
        The sentinels, the service name, the sentinel-side options found (``role``,
        ``sentinel_username``, ``sentinel_password``), the data nodes' RedisConfig (with
        redis-py's ``from_url`` precedence over ``defaults``) and the pool options.

    Raises:
        ConfigError: the URL or an option is invalid; no part of a password is shown.
    """
    if not isinstance(url, str):
        raise _fail("url", url, "must be a string")
    shown = redact_url(url)
    scheme, sep, rest = url.partition("://")
    tls = _SCHEMES.get(scheme.lower()) if sep else None
    if tls is None:
        raise _fail(
            "url", shown, "a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://"
        )
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise _fail("url", shown, "a Redis URL has no #fragment")
    location, _, query = rest.partition("?")
    userinfo, at, hostpart = location.rpartition("@")
    if not at:
        hostpart = location
    hosts, slash, path = hostpart.partition("/")
    if not hosts:
        raise _fail("url", shown, "names no sentinel: redis+sentinel://host:26379/service")
    sentinels = tuple(_address(h, "url", shown) for h in hosts.split(","))
    service, _, db_text = path.partition("/")
    sentinel_options: dict[str, Any] = {}
    kept = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in _SENTINEL_QUERY:
            if name in sentinel_options:
                raise _fail(name, "***", "is given more than once in the URL")
            sentinel_options[name] = value
        else:
            kept.append((name, value))
    named = sentinel_options.pop("service_name", None)
    if named is not None and service and unquote(service) != named:
        raise _fail(
            "service_name", named, f"contradicts the service {unquote(service)!r} in the URL path"
        )
    service = unquote(service) if service else (named or "")
    if not service or (not slash and named is None):
        raise _fail("url", shown, "names no service: redis+sentinel://host:26379/<service>[/db]")
    if "role" in sentinel_options:
        sentinel_options["role"] = check_role(sentinel_options["role"])
    # The data nodes' part, as a redis:// URL of its own (the host is a stand-in: the
    # sentinels say where the data nodes are).
    data_url = f"{'rediss' if tls else 'redis'}://{userinfo + '@' if at else ''}sentinel-managed"
    if db_text:
        data_url += f"/{db_text}"
    if kept:
        data_url += "?" + urlencode(kept)
    try:
        config, pool_options = split_url_over(data_url, defaults)
    except ConfigError as exc:
        raise _fail(exc.field, exc.value, f"{str(exc).partition(': ')[2]} (in {shown})") from None
    return sentinels, service, sentinel_options, config, pool_options


def addresses_text(addresses: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses)
