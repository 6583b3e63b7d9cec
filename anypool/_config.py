"""Validated, immutable configuration: how to reach Redis (RedisConfig), how to pool (PoolConfig).

Both records validate every field when they are built, so a bad value fails where it is written,
with a :class:`~anypool.ConfigError` that names the field and the value.  Passwords never appear
in ``repr()``, in error messages, or in :meth:`RedisConfig.to_url` unless ``redact=False``.

URLs follow redis-py's conventions::

    redis://[[username]:password@]host[:port][/db][?option=value&...]
    rediss://...                      (TLS; ssl_* options are only allowed here)
    unix://[[username]:password@]/path/to/socket[?db=N&...]

Query options use the field names below, and every option redis-py's ``from_url`` reads, with
redis-py's meaning (``socket_connect_timeout`` is ``connect_timeout``...).  Pool and client
options (``max_connections``, ``health_check_interval``, ``timeout``, ``retry_on_timeout``) are
returned separately by :func:`split_url` for the pool to use.  Options whose values are objects
(``ssl_context``, ``credential_provider``, ``socket_keepalive_options``) have no URL form.
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import importlib.metadata
import math
import os
import re
import ssl
from collections.abc import Iterable, Mapping
from ssl import SSLContext, TLSVersion, VerifyFlags  # the class has a field named ssl
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote

from ._compat import DEFAULT_WIRE_PROTOCOL, HAS_LEGACY_RESPONSES_OPTION, REDIS_PY_VERSION_TEXT
from ._errors import ConfigError

__all__ = [
    "BackoffPolicy", "BreakerPolicy", "PoolConfig", "RedisConfig", "redact_url", "split_url",
    "split_url_over",
]  # fmt: skip

SslCertReqs = Literal["required", "optional", "none"]

_DEFAULT_PORT = 6379
_REDACTED = "***"
_MIB = 1024 * 1024
try:
    _LIB_VERSION: str | None = importlib.metadata.version("anypool")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
    _LIB_VERSION = None
_CERT_REQS: dict[Any, SslCertReqs] = {
    ssl.CERT_REQUIRED: "required", ssl.CERT_OPTIONAL: "optional", ssl.CERT_NONE: "none",
}  # fmt: skip


def _fail(field: str, value: Any, reason: str) -> ConfigError:
    return ConfigError(field, value, reason)


def _check_int(field: str, value: Any, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(field, value, "must be an integer")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _fail(field, value, f"must be {bounds}")
    return value


def _check_timeout(field: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(field, value, "must be a number of seconds, or None for no timeout")
    if not (value > 0 and math.isfinite(value)):
        raise _fail(field, value, "must be a positive, finite number of seconds (or None)")
    return float(value)


def _check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(field, value, "must be True or False")
    return value


def _check_optional_str(field: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _fail(field, value, "must be a string or None")
    return value


def _check_client_attribute(field: str, value: Any, what: str) -> None:
    """Texts Redis shows in CLIENT LIST (``what``: "a client name"...): printable ASCII
    without spaces."""
    if value is not None and (
        not isinstance(value, str) or not value or not all("!" <= c <= "~" for c in value)
    ):
        raise _fail(
            field, value, f"{what} must be printable ASCII without spaces (Redis refuses "
            "anything else)",
        )  # fmt: skip


def _tls_version(field: str, value: Any) -> ssl.TLSVersion | None:
    """``ssl_min_version`` as redis-py takes it: an ``ssl.TLSVersion``, its number (as in a
    redis-py URL: 771 is TLS 1.2), or its name (``TLSv1_2``)."""
    if value is None or isinstance(value, ssl.TLSVersion):
        return value
    try:
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            return ssl.TLSVersion[value.strip()]
        if isinstance(value, bool):
            raise TypeError
        return ssl.TLSVersion(int(value))
    except (KeyError, ValueError, TypeError):
        names = ", ".join(v.name for v in ssl.TLSVersion if v.name.startswith("TLS"))
        raise _fail(field, value, f"is not a TLS version (use ssl.TLSVersion: {names})") from None


def _verify_flags(field: str, value: Any) -> tuple[ssl.VerifyFlags, ...]:
    """A list of ``ssl.VerifyFlags`` (or their names, comma-separated in a URL)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
    if isinstance(value, ssl.VerifyFlags) or not isinstance(value, Iterable):
        value = [value]
    flags = []
    for item in value:
        if isinstance(item, str) and item in ssl.VerifyFlags.__members__:
            item = ssl.VerifyFlags[item]
        if not isinstance(item, ssl.VerifyFlags):
            names = ", ".join(ssl.VerifyFlags.__members__)
            raise _fail(field, item, f"is not an ssl.VerifyFlags value ({names})")
        flags.append(item)
    return tuple(flags)


def _keepalive_options(value: Any) -> tuple[tuple[int, int | bytes], ...] | None:
    if value is None:
        return None
    items = value.items() if isinstance(value, Mapping) else value
    try:
        pairs = tuple((option, setting) for option, setting in items)
    except (TypeError, ValueError):
        raise _fail(
            "socket_keepalive_options", value,
            "must map socket option numbers to values, e.g. {socket.TCP_KEEPIDLE: 30}",
        ) from None  # fmt: skip
    for option, setting in pairs:
        if isinstance(option, bool) or not isinstance(option, int):
            raise _fail("socket_keepalive_options", option, "must be a socket option number")
        if isinstance(setting, bool) or not isinstance(setting, int | bytes):
            raise _fail("socket_keepalive_options", setting, "must be an int or bytes value")
    return pairs


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class RedisConfig:
    """How to connect to one Redis server.  Immutable; every field is validated on creation.

    Attributes:
        host: server host name or IP address (ignored when ``unix_socket_path`` is set).
        port: TCP port, 1-65535.
        db: database number selected after connecting.
        username: ACL user name (Redis >= 6); ``None`` means the default user.
        password: password for ``AUTH``; never shown by ``repr()`` or by default by ``to_url()``.
            A username with no password authenticates with an empty password (``nopass`` users).
        unix_socket_path: connect through this unix socket instead of TCP.
        ssl: use TLS.  The server certificate is verified by default.
        ssl_ca_certs: CA bundle file trusted to verify the server, in addition to the system's
            CAs (as redis-py).
        ssl_certfile: client certificate file, for servers that require one.
        ssl_keyfile: private key of the client certificate.
        ssl_cert_reqs: ``"required"`` (default), ``"optional"`` or ``"none"`` (no verification).
        ssl_check_hostname: check that the certificate matches ``host`` (default True).
        ssl_ca_data: CA certificates given as PEM text (or DER bytes), also trusted.
        ssl_ca_path: a directory of CA certificates (hashed names, as ``c_rehash`` makes),
            also trusted.
        ssl_password: password of an encrypted ``ssl_keyfile``; never shown, like ``password``.
        ssl_min_version: the oldest TLS version accepted (an ``ssl.TLSVersion``; its name or
            number in a URL).
        ssl_ciphers: OpenSSL cipher list for TLS 1.2 and older (``SSLContext.set_ciphers``).
        ssl_include_verify_flags: ``ssl.VerifyFlags`` added to the context's verify flags.
        ssl_exclude_verify_flags: ``ssl.VerifyFlags`` removed from them.
        ssl_context: a ready ``ssl.SSLContext`` to use as it is; the other ``ssl_*`` file and
            policy options may then not be given (set them on the context).
        credential_provider: a redis-py ``CredentialProvider`` asked for ``(password,)`` or
            ``(username, password)`` on every connect (``get_credentials_async()`` when it
            implements it, else ``get_credentials()``).  A streaming provider (``on_next``)
            that rotates the credentials has live connections re-authenticated.  Not together
            with ``username``/``password``.
        lib_name: library name sent with ``CLIENT SETINFO LIB-NAME`` on connect (default
            ``"anypool"``); None or ``""`` (read as None, as in redis-py) sends none.  Servers
            without SETINFO (< 7.2) ignore it.
        lib_version: library version sent with ``CLIENT SETINFO LIB-VER`` (default: anypool's
            version); None or ``""`` sends none.
        connect_timeout: seconds allowed for TCP connect, TLS and the Redis handshake together.
        socket_timeout: default seconds allowed for one command; ``None`` waits forever.  A
            command that times out closes its connection (its reply is still owed).
        socket_keepalive: enable TCP keepalive on the socket (default True).
        socket_keepalive_options: TCP keepalive socket options to set instead of anypool's
            (idle 60 s, interval 10 s, 3 probes), e.g. ``{socket.TCP_KEEPIDLE: 30}``.
        client_name: name given with ``CLIENT SETNAME`` (visible in ``CLIENT LIST``).
        protocol: None (the default: as the installed redis-py given no ``protocol``, which
            is RESP3 with RESP2-shaped results on redis-py 8, RESP2 on redis-py 5-7), 2 (RESP2)
            or 3 (RESP3, with redis-py's RESP3 shapes).  When RESP3 is wanted and the server
            has no ``HELLO`` (Redis < 6), the connection speaks RESP2, with the shapes
            redis-py gives over RESP2 (see docs/protocol.md).
        legacy_responses: redis-py 8's option: True (the default) keeps redis-py's historical
            result shapes; False selects its unified shapes, the same over RESP2 and RESP3.
            False needs redis-py 8 or later.
        decode_responses: decode replies to ``str`` with ``encoding``.
        encoding: codec used to encode ``str`` arguments and decode replies.
        encoding_errors: codec error handler (``"strict"``, ``"replace"``...).
        max_reply_size: largest reply, in bytes, the parser will buffer before failing with a
            ProtocolError (default 512 MiB, Redis's own ``proto-max-bulk-len``).
        readonly: send ``READONLY`` on connect, so a cluster replica serves reads of the slots
            its primary owns (``RedisCluster`` sets it on its replica pools for replica reads).
    """

    host: str = "localhost"
    port: int = _DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = None
    unix_socket_path: str | None = None
    ssl: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: SslCertReqs = "required"
    ssl_check_hostname: bool = True
    ssl_ca_data: str | bytes | None = None
    ssl_ca_path: str | None = None
    ssl_password: str | None = None
    ssl_min_version: TLSVersion | None = None
    ssl_ciphers: str | None = None
    ssl_include_verify_flags: tuple[VerifyFlags, ...] = ()
    ssl_exclude_verify_flags: tuple[VerifyFlags, ...] = ()
    ssl_context: SSLContext | None = None
    connect_timeout: float | None = 10.0
    socket_timeout: float | None = None
    socket_keepalive: bool = True
    socket_keepalive_options: tuple[tuple[int, int | bytes], ...] | None = None
    client_name: str | None = None
    lib_name: str | None = "anypool"
    lib_version: str | None = _LIB_VERSION
    # Compared by identity-or-equality like any field, but not hashed: a provider need not be
    # hashable (a dataclass with eq).
    credential_provider: Any = dataclasses.field(default=None, hash=False)
    protocol: int | None = None
    legacy_responses: bool = True
    decode_responses: bool = False
    encoding: str = "utf-8"
    encoding_errors: str = "strict"
    max_reply_size: int = 512 * _MIB
    readonly: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise through the back door, once, here
        if not isinstance(self.host, str) or not self.host:
            raise _fail("host", self.host, "must be a non-empty string")
        _check_int("port", self.port, low=1, high=65535)
        _check_int("db", self.db, low=0)
        _check_optional_str("username", self.username)
        if self.password is not None and not isinstance(self.password, str):
            raise _fail("password", _REDACTED, "must be a string or None")
        _check_optional_str("unix_socket_path", self.unix_socket_path)
        if self.unix_socket_path == "":
            raise _fail("unix_socket_path", "", "must be a socket path, or None for TCP")
        _check_bool("ssl", self.ssl)
        self._check_tls()
        if self.ssl and self.unix_socket_path is not None:
            raise _fail("ssl", self.ssl, "TLS over a unix socket is not supported")
        set_(self, "connect_timeout", _check_timeout("connect_timeout", self.connect_timeout))
        set_(self, "socket_timeout", _check_timeout("socket_timeout", self.socket_timeout))
        _check_bool("socket_keepalive", self.socket_keepalive)
        set_(self, "socket_keepalive_options", _keepalive_options(self.socket_keepalive_options))
        _check_client_attribute("client_name", self.client_name, "a client name")
        for name in ("lib_name", "lib_version"):
            if getattr(self, name) == "":
                set_(self, name, None)  # as redis-py: an empty value sends no CLIENT SETINFO
        _check_client_attribute("lib_name", self.lib_name, "a library name")
        _check_client_attribute("lib_version", self.lib_version, "a library version")
        provider = self.credential_provider
        if provider is not None:
            if not callable(getattr(provider, "get_credentials", None)) and not callable(
                getattr(provider, "get_credentials_async", None)
            ):
                raise _fail(
                    "credential_provider", type(provider).__name__,
                    "must be a redis-py CredentialProvider (with get_credentials() or "
                    "get_credentials_async())",
                )  # fmt: skip
            if self.username is not None or self.password is not None:
                raise _fail(
                    "credential_provider", type(provider).__name__,
                    "cannot be combined with username/password: the provider gives them",
                )  # fmt: skip
        if self.protocol is not None and (
            type(self.protocol) is not int or self.protocol not in (2, 3)
        ):
            raise _fail(
                "protocol", self.protocol,
                "must be 2 (RESP2), 3 (RESP3), or None for redis-py's default",
            )  # fmt: skip
        _check_bool("legacy_responses", self.legacy_responses)
        if not self.legacy_responses and not HAS_LEGACY_RESPONSES_OPTION:
            raise _fail(
                "legacy_responses", self.legacy_responses,
                f"needs redis-py 8 or later (redis-py {REDIS_PY_VERSION_TEXT} is installed, "
                "which has only the legacy shapes): upgrade redis-py, or leave it True",
            )  # fmt: skip
        _check_bool("decode_responses", self.decode_responses)
        _check_bool("readonly", self.readonly)
        try:
            codecs.lookup(self.encoding)
        except (LookupError, TypeError):
            raise _fail("encoding", self.encoding, "is not a known codec") from None
        try:
            codecs.lookup_error(self.encoding_errors)
        except (LookupError, TypeError):
            raise _fail(
                "encoding_errors", self.encoding_errors, "is not a codec error handler"
            ) from None
        _check_int("max_reply_size", self.max_reply_size, low=1024)

    def _check_tls(self) -> None:
        set_ = object.__setattr__
        cert_reqs: Any = self.ssl_cert_reqs
        if cert_reqs is None:  # redis-py reads None as ssl.CERT_NONE
            set_(self, "ssl_cert_reqs", "none")
        elif not isinstance(cert_reqs, str) and cert_reqs in _CERT_REQS:  # ssl.CERT_*
            set_(self, "ssl_cert_reqs", _CERT_REQS[cert_reqs])
        elif isinstance(cert_reqs, str) and cert_reqs.lower() in ("required", "optional", "none"):
            set_(self, "ssl_cert_reqs", cert_reqs.lower())
        else:
            raise _fail("ssl_cert_reqs", cert_reqs, "must be required, optional or none")
        _check_bool("ssl_check_hostname", self.ssl_check_hostname)
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path", "ssl_ciphers"):
            _check_optional_str(name, getattr(self, name))
        if self.ssl_ca_data is not None and not isinstance(self.ssl_ca_data, str | bytes):
            raise _fail("ssl_ca_data", self.ssl_ca_data, "must be PEM text or DER bytes")
        if self.ssl_password is not None and not isinstance(self.ssl_password, str | bytes):
            raise _fail("ssl_password", _REDACTED, "must be a string or None")
        set_(self, "ssl_min_version", _tls_version("ssl_min_version", self.ssl_min_version))
        for name in ("ssl_include_verify_flags", "ssl_exclude_verify_flags"):
            set_(self, name, _verify_flags(name, getattr(self, name)))
        if self.ssl_context is not None and not isinstance(self.ssl_context, ssl.SSLContext):
            raise _fail("ssl_context", self.ssl_context, "must be an ssl.SSLContext")
        given = [
            name for name in _TLS_CONTEXT_OPTIONS
            if getattr(self, name) != _FIELD_DEFAULTS[name]
        ]  # fmt: skip
        if given and not self.ssl:
            value = _REDACTED if given[0] == "ssl_password" else getattr(self, given[0])
            raise _fail(
                given[0], value, "is a TLS option but ssl is off (use rediss:// or ssl=True)"
            )
        if self.ssl_context is not None:
            given += [name for name in ("ssl_cert_reqs", "ssl_check_hostname")
                      if getattr(self, name) != _FIELD_DEFAULTS[name]]  # fmt: skip
        if self.ssl_context is not None and len(given) > 1:
            other = next(name for name in given if name != "ssl_context")
            raise _fail(
                other, _REDACTED if other == "ssl_password" else getattr(self, other),
                "cannot be combined with ssl_context: set it on the context itself",
            )  # fmt: skip
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise _fail("ssl_keyfile", self.ssl_keyfile, "needs ssl_certfile as well")
        if self.ssl_password is not None and self.ssl_certfile is None:
            raise _fail("ssl_password", _REDACTED, "is the key's password: it needs ssl_certfile")

    # --- presentation -------------------------------------------------------------------------

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            if f.name in _SECRET_FIELDS and value is not None:
                value = _REDACTED
            elif f.name == "credential_provider":
                shown.append(f"{f.name}=<{type(value).__name__}>")
                continue
            shown.append(f"{f.name}={value!r}")
        return f"RedisConfig({', '.join(shown)})"

    @property
    def address(self) -> str:
        """The ``host:port`` or socket path this config connects to (used in messages)."""
        if self.unix_socket_path is not None:
            return self.unix_socket_path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def wire_protocol(self) -> int:
        """The RESP version a connection asks the server for: ``protocol``, or when that is
        None the one the installed redis-py speaks by default (3 on redis-py 8, 2 on 5-7)."""
        return DEFAULT_WIRE_PROTOCOL if self.protocol is None else self.protocol

    def replace(self, **changes: Any) -> RedisConfig:
        """Return a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    # --- URLs ---------------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> RedisConfig:
        """Parse a ``redis://``, ``rediss://`` or ``unix://`` URL.

        Args:
            url: the URL; see the module documentation for its form and options.
            **overrides: fields that take precedence over what the URL says.

        Raises:
            ConfigError: the URL or an option in it is invalid, or it names a pool option
                (``max_connections``...), which belongs to the pool (use :func:`split_url`).
        """
        config, pool_options = split_url(url, **overrides)
        if pool_options:
            field = next(iter(pool_options))
            option = next(k for k, v in _POOL_OPTIONS.items() if v == field)
            raise _fail(
                option,
                pool_options[field],
                "is a pool option: pass the URL to RedisPool.from_url(), or use split_url()",
            )
        return config

    def to_url(self, *, redact: bool = True) -> str:
        """Build the URL that :meth:`from_url` turns back into this config.

        Options that have their default value are left out, and so are those whose values are
        objects with no URL form (``ssl_context``, ``credential_provider``,
        ``socket_keepalive_options``).  The password (and ``ssl_password``) appears as ``***``
        unless ``redact=False``; user name and password are percent-encoded.

        Args:
            redact: hide the password (default).  Pass False only to hand the URL to a program
                that must connect with it.
        """
        userinfo = ""
        if self.username is not None or self.password is not None:
            userinfo = quote(self.username or "", safe="")
            if self.password is not None:
                userinfo += ":" + (_REDACTED if redact else quote(self.password, safe=""))
            userinfo += "@"
        options: dict[str, str] = {}
        if self.unix_socket_path is not None:
            base = f"unix://{userinfo}{quote(self.unix_socket_path, safe='/')}"
            if self.db:
                options["db"] = str(self.db)
        else:
            scheme = "rediss" if self.ssl else "redis"
            base = f"{scheme}://{userinfo}{self.address}/{self.db}"
        for f in dataclasses.fields(self):
            if f.name in _NOT_QUERY_OPTIONS or f.name in _OBJECT_OPTIONS:
                continue
            value = getattr(self, f.name)
            if value != f.default:
                if f.name in _SECRET_FIELDS and redact:
                    options[f.name] = _REDACTED
                else:
                    options[f.name] = _format_option(value)
        if not options:
            return base
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in options.items())
        return f"{base}?{query}"

    # --- the environment ----------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RedisConfig:
        """Build a config from ``REDIS_URL`` and ``REDIS_SOCKET_TIMEOUT``.

        ``REDIS_URL`` defaults to ``redis://localhost:6379/0``.  Pool variables
        (``REDIS_MAX_CONNECTIONS``, ``REDIS_HEALTH_CHECK_INTERVAL``) are read by
        :meth:`PoolConfig.from_env`.

        Args:
            environ: the variables to read (default ``os.environ``).
            **overrides: fields that take precedence over the environment.

        Raises:
            ConfigError: a variable is invalid; the error names the variable.
        """
        env = os.environ if environ is None else environ
        url = env.get("REDIS_URL") or "redis://localhost:6379/0"
        if "REDIS_SOCKET_TIMEOUT" in env and "socket_timeout" not in overrides:
            overrides["socket_timeout"] = _env_timeout(env, "REDIS_SOCKET_TIMEOUT")
        try:
            return cls.from_url(url, **overrides)
        except ConfigError as exc:
            exc.add_note("(read from the REDIS_URL environment variable)")
            raise


@dataclasses.dataclass(frozen=True)
class BackoffPolicy:
    """How the pool spaces out reconnect attempts: ``base * 2**n`` capped at ``cap``, spread by
    up to ``±jitter`` (a fraction) so that clients do not retry in lock-step.

    Attributes:
        base: seconds before the first retry.
        cap: the longest wait between retries, before jitter.
        jitter: fraction of each delay to randomise, 0 to 1.
    """

    base: float = 0.1
    cap: float = 10.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        _check_timeout("reconnect_backoff.base", self.base)
        _check_timeout("reconnect_backoff.cap", self.cap)
        if self.cap < self.base:
            raise _fail("reconnect_backoff.cap", self.cap, f"must be >= base ({self.base})")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int | float):
            raise _fail("reconnect_backoff.jitter", self.jitter, "must be a number from 0 to 1")
        if not 0 <= self.jitter <= 1:
            raise _fail("reconnect_backoff.jitter", self.jitter, "must be from 0 to 1")


@dataclasses.dataclass(frozen=True)
class BreakerPolicy:
    """When the circuit breaker opens, and for how long.

    Attributes:
        failure_threshold: consecutive connect failures that open the breaker.
        reset_timeout: seconds it stays open before one probe is let through.
    """

    failure_threshold: int = 5
    reset_timeout: float = 5.0

    def __post_init__(self) -> None:
        _check_int("breaker.failure_threshold", self.failure_threshold, low=1)
        _check_timeout("breaker.reset_timeout", self.reset_timeout)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PoolConfig:
    """How many connections to keep, and how to look after them.  Immutable, validated.

    psycopg_pool and HikariCP are the references for names and defaults.

    Attributes:
        min_size: connections opened at start and kept open (refilled in the background).
        max_size: most connections open at once; beyond that, requests wait.
        timeout: seconds ``acquire()`` waits for a connection before PoolTimeout; None waits
            forever.
        max_waiting: most tasks allowed to wait at once (TooManyWaiters beyond); None: no limit.
        max_idle: seconds an idle connection above ``min_size`` is kept; None: forever.
        max_lifetime: seconds after which a connection is retired (when idle, or on return);
            each connection's lifetime is shortened by a random fraction up to
            ``lifetime_jitter`` so that they do not all expire together; None: forever.
        lifetime_jitter: see ``max_lifetime``; 0 to 0.5.
        health_check_interval: seconds an idle connection may go unused before the background
            task checks it (PING); None disables the checks.
        leak_threshold: seconds a lease may be held before a warning is logged with the
            holder's task and the stack where it acquired; None disables leak detection.
        reconnect_backoff: spacing of background reconnect attempts.
        breaker: the circuit breaker's threshold and reset timeout.
        close_timeout: seconds leaving the pool waits for leased connections to come back
            before closing them anyway.
        name: the pool's name in logs, errors and ``repr()``.
    """

    min_size: int = 0
    max_size: int = 10
    timeout: float | None = 30.0
    max_waiting: int | None = None
    max_idle: float | None = 600.0
    max_lifetime: float | None = 3600.0
    lifetime_jitter: float = 0.05
    health_check_interval: float | None = 30.0
    leak_threshold: float | None = None
    reconnect_backoff: BackoffPolicy = BackoffPolicy()
    breaker: BreakerPolicy = BreakerPolicy()
    close_timeout: float = 5.0
    name: str | None = None

    def __post_init__(self) -> None:
        _check_int("min_size", self.min_size, low=0)
        _check_int("max_size", self.max_size, low=1)
        if self.min_size > self.max_size:
            raise _fail("min_size", self.min_size, f"must not exceed max_size ({self.max_size})")
        if self.max_waiting is not None:
            _check_int("max_waiting", self.max_waiting, low=0)
        set_ = object.__setattr__
        for name in (
            "timeout", "max_idle", "max_lifetime", "health_check_interval", "leak_threshold",
        ):  # fmt: skip
            set_(self, name, _check_timeout(name, getattr(self, name)))
        close_timeout = _check_timeout("close_timeout", self.close_timeout)
        if close_timeout is None:
            raise _fail("close_timeout", None, "must be a number of seconds")
        set_(self, "close_timeout", close_timeout)
        if isinstance(self.lifetime_jitter, bool) or not isinstance(
            self.lifetime_jitter, int | float
        ):
            raise _fail("lifetime_jitter", self.lifetime_jitter, "must be a number from 0 to 0.5")
        if not 0 <= self.lifetime_jitter <= 0.5:
            raise _fail("lifetime_jitter", self.lifetime_jitter, "must be from 0 to 0.5")
        if not isinstance(self.reconnect_backoff, BackoffPolicy):
            raise _fail("reconnect_backoff", self.reconnect_backoff, "must be a BackoffPolicy")
        if not isinstance(self.breaker, BreakerPolicy):
            raise _fail("breaker", self.breaker, "must be a BreakerPolicy")
        _check_optional_str("name", self.name)

    def replace(self, **changes: Any) -> PoolConfig:
        """Return a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> PoolConfig:
        """Build a pool config from ``REDIS_MAX_CONNECTIONS`` and ``REDIS_HEALTH_CHECK_INTERVAL``.

        Raises:
            ConfigError: a variable is invalid; the error names the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if "REDIS_MAX_CONNECTIONS" in env:
            raw = env["REDIS_MAX_CONNECTIONS"]
            try:
                values["max_size"] = _check_int("REDIS_MAX_CONNECTIONS", int(raw), low=1)
            except ValueError:
                raise _fail("REDIS_MAX_CONNECTIONS", raw, "must be an integer >= 1") from None
        if "REDIS_HEALTH_CHECK_INTERVAL" in env:
            values["health_check_interval"] = _env_timeout(env, "REDIS_HEALTH_CHECK_INTERVAL")
        values.update(overrides)
        return cls(**values)


# --- URL parsing ------------------------------------------------------------------------------

_SCHEMES = ("redis", "rediss", "unix")
# Fields that the URL carries outside the query string.
_NOT_QUERY_OPTIONS = frozenset(
    {"host", "port", "db", "username", "password", "unix_socket_path", "ssl"}
)
# Fields whose values are objects: no URL form, left out of to_url().
_OBJECT_OPTIONS = frozenset({"ssl_context", "credential_provider", "socket_keepalive_options"})
_SECRET_FIELDS = frozenset({"password", "ssl_password"})
# TLS options that need ssl on, and that a given ssl_context already holds.
_TLS_CONTEXT_OPTIONS = (
    "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_data", "ssl_ca_path", "ssl_password",
    "ssl_min_version", "ssl_ciphers", "ssl_include_verify_flags", "ssl_exclude_verify_flags",
    "ssl_context",
)  # fmt: skip
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RedisConfig)}
_SSL_OPTIONS = frozenset(_TLS_CONTEXT_OPTIONS) | {"ssl_cert_reqs", "ssl_check_hostname"}
_ALIASES = {"socket_connect_timeout": "connect_timeout"}
# Query options that configure the pool or the client rather than the connection, and the
# name each one has there (a PoolConfig field, or RedisPool's retry_on_timeout).
_POOL_OPTIONS = {
    "max_connections": "max_size", "health_check_interval": "health_check_interval",
    "timeout": "timeout", "retry_on_timeout": "retry_on_timeout",
    "retry_on_error": "retry_on_error", "autopipeline": "autopipeline",
    "autopipeline_connections": "autopipeline_connections",
    "autopipeline_max_in_flight": "autopipeline_max_in_flight",
}  # fmt: skip
_POOL_OPTION_KINDS = {
    "max_connections": "int", "health_check_interval": "float | None",
    "timeout": "float | None", "retry_on_timeout": "to_bool", "retry_on_error": "str",
    "autopipeline": "bool", "autopipeline_connections": "int",
    "autopipeline_max_in_flight": "int",
}  # fmt: skip
# Query options redis-py reads with its to_bool: "" leaves them unset, 0/F/FALSE/N/NO (any
# case) is False, any other text True ("off" too, as in redis-py).
_TO_BOOL_OPTIONS = frozenset(
    {"socket_keepalive", "retry_on_timeout", "ssl_check_hostname", "legacy_responses"}
)
_FALSE_STRINGS = frozenset({"0", "F", "FALSE", "N", "NO"})
# Query options redis-py reads that change nothing here (anypool sizes its own reads).
_IGNORED_OPTIONS = frozenset({"socket_read_size"})
_CREDENTIAL_OPTIONS = frozenset({"username", "password"})
_QUERY_OPTIONS = frozenset(
    {f.name for f in dataclasses.fields(RedisConfig)} - _NOT_QUERY_OPTIONS - _OBJECT_OPTIONS
    | _CREDENTIAL_OPTIONS
    | {"db", *_POOL_OPTIONS, *_ALIASES, *_IGNORED_OPTIONS}
)
_SECRET_NAME = re.compile(r"(?i)pass|secret|token|auth|cred")


def _shown_option(name: str, raw_value: str) -> str:
    """A query option's value as an error may show it: never a secret, nor the value of an
    option anypool does not know (a misspelt "pasword=...")."""
    if name not in _QUERY_OPTIONS or name == "password" or _SECRET_NAME.search(name):
        return _REDACTED
    return raw_value


# Names an error may cite when a URL that cannot be shown failed (never text from the URL).
_KNOWN_URL_FIELDS = {"url", *_POOL_OPTIONS, *(f.name for f in dataclasses.fields(RedisConfig))}
_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True,
               "0": False, "false": False, "no": False, "off": False}  # fmt: skip


def _format_option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return ""
    if isinstance(value, ssl.TLSVersion):
        return str(value.value)  # as redis-py's URLs write it
    if isinstance(value, tuple):
        return ",".join(flag.name or str(int(flag)) for flag in value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def suggest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` naming the known name closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _field_types() -> dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(RedisConfig)}


def to_bool(raw: str) -> bool | None:
    """redis-py's ``to_bool`` for URL options: None for "" (unset), False for 0, F, FALSE, N
    or NO in any case, True for any other text."""
    if raw == "":
        return None
    return raw.upper() not in _FALSE_STRINGS


def _convert(name: str, raw: str, kind: str) -> Any:
    """Turn the text of one query option into the type its field wants."""
    if name in _TO_BOOL_OPTIONS:
        return to_bool(raw)
    if "bool" in kind:
        word = raw.strip().lower()
        if word not in _BOOL_WORDS:
            raise _fail(name, raw, "must be true or false")
        return _BOOL_WORDS[word]
    if kind.startswith("int"):
        try:
            return int(raw)
        except ValueError:
            raise _fail(name, raw, "must be an integer") from None
    if "float" in kind:
        if raw.strip().lower() in ("", "none"):
            return None
        try:
            return float(raw)
        except ValueError:
            raise _fail(name, raw, "must be a number of seconds") from None
    return raw


_PLAIN_USER = re.compile(r"[A-Za-z0-9._~%!$&'()*+,;=-]*")


def redact_url(url: str) -> str:
    """The URL as error messages show it: everything that could be a credential redacted.

    Whatever precedes the *last* ``@`` after the scheme is treated as user info, even where
    a ``/``, ``?`` or ``#`` (which a password may not contain unencoded) puts it outside the
    URL's authority: the password part becomes ``***``, and so does a user name that is not
    plainly one.  This may hide more than the credentials of a URL that does not parse; it
    never shows any part of them.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, after = rest.rpartition("@")
    if not at:
        return _redact_query(url)
    user, colon, _ = userinfo.partition(":")
    if colon and _PLAIN_USER.fullmatch(user):
        shown_userinfo = f"{user}:{_REDACTED}"
    elif not colon and _PLAIN_USER.fullmatch(user):
        shown_userinfo = user  # a user name alone is not a secret
    else:
        shown_userinfo = _REDACTED
    return _redact_query(f"{scheme}{sep}{shown_userinfo}@{after}")


_SECRET_OPTION = re.compile(r"[?&]([^=&#]*)=")


def _secret_option_at(url: str) -> int:
    """Where the value of the first secret-looking query option (``?password=``...) starts,
    or -1."""
    for match in _SECRET_OPTION.finditer(url):
        if _SECRET_NAME.search(match.group(1)):
            return match.end()
    return -1


def _redact_query(url: str) -> str:
    """Everything from the value of a secret-looking query option (``?password=``...) on
    replaced by ``***``: a password written raw may hold "&" or "#", so nothing after it is
    shown."""
    start = _secret_option_at(url)
    return url if start < 0 else url[:start] + _REDACTED


def _userinfo_outside_authority(url: str) -> bool:
    """Whether an ``@`` comes after the URL's authority (after its first ``/``, ``?`` or
    ``#``): the sign of a password written with characters it must percent-encode."""
    _, sep, rest = url.partition("://")
    if not sep:
        return "@" in url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return "@" in rest[end:]


def split_url(url: str, **overrides: Any) -> tuple[RedisConfig, dict[str, Any]]:
    """Parse a URL into a :class:`RedisConfig` and the pool options it carries.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL.
        **overrides: RedisConfig fields that take precedence over the URL.

    Returns:
        The connection config, and a dict of the pool and client options found in the query
        string, by the name RedisPool takes them (``max_connections`` becomes ``max_size``,
        ``health_check_interval=0`` becomes None, ``retry_on_timeout`` and
        ``retry_on_error`` stay).

    Raises:
        ConfigError: the URL or one of its options is invalid.  No part of a password is
            ever shown, even when the password broke the URL's syntax.
    """
    return _split(url, overrides, {})


def split_url_over(url: str, defaults: Mapping[str, Any]) -> tuple[RedisConfig, dict[str, Any]]:
    """As :func:`split_url`, with redis-py's ``from_url`` precedence: ``defaults`` (RedisConfig
    fields) apply only where the URL says nothing; what the URL says wins (its scheme decides
    ``ssl``; its host, port, path, user info and options their fields)."""
    return _split(url, {}, defaults)


def _split(
    url: str, overrides: Mapping[str, Any], defaults: Mapping[str, Any]
) -> tuple[RedisConfig, dict[str, Any]]:
    if not isinstance(url, str):
        raise _fail("url", url, "must be a string")
    shown = redact_url(url)
    try:
        return _parse_url(url, shown, overrides, defaults)
    except ConfigError as exc:
        if (
            exc.field in overrides
            or exc.field in defaults
            or not _password_may_be_read(url, exc.field)
        ):
            raise  # the message shows no part of a password
        # A "/", "?", "#" or "&" in the password moved part of it into the path, query or
        # fragment, where it was read as something else (a port, a db, an option).  Say so,
        # with nothing from the failed parse: not its message, and no chained exception.
        failed = exc.field
    if failed in _KNOWN_URL_FIELDS and failed != "url":
        part = f" (while reading {failed})"
    else:  # an option name that may be password text: only the known name it resembles
        hint = suggest(failed, _QUERY_OPTIONS | _OBJECT_OPTIONS) if failed != "url" else ""
        part = f" (an option that is not known{hint})" if hint else ""
    raise _fail(
        "url", shown,
        f"it cannot be read{part}; if the password contains '/', '?', '#', '@' or '&', "
        "percent-encode it, e.g. urllib.parse.quote(password, safe='')",
    )  # fmt: skip


def _password_may_be_read(url: str, field: str) -> bool:
    """Whether the option (or URL part) ``field`` that failed may be password text: a
    password written raw with "/", "?", "#" or "@" moves into the path, query or fragment; a
    ``?password=`` value with "&" or "#" turns its tail into options or a fragment, so only
    what comes after it, and only an unknown option name or a fragment."""
    if _userinfo_outside_authority(url):
        return True
    start = _secret_option_at(url)
    if start < 0:
        return False
    if field == "url":
        return "#" in url[start:]
    if field in _KNOWN_URL_FIELDS or field in _QUERY_OPTIONS:
        return False  # a real option failed on its own value, which the error shows
    # An unknown option named before the secret value (or the secret option itself) was
    # written by the user, not spilled from the password.
    return not re.search(r"[?&]" + re.escape(quote(field, safe="")) + r"(=|&|$)", url[:start])


def _parse_url(
    url: str, shown: str, overrides: Mapping[str, Any], defaults: Mapping[str, Any]
) -> tuple[RedisConfig, dict[str, Any]]:
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        raise _fail("url", shown, "the scheme must be redis://, rediss:// or unix://")
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise _fail("url", shown, "a Redis URL has no #fragment")
    location, _, query = rest.partition("?")
    values: dict[str, Any] = {}

    # user info: everything before the last "@" of the location.
    userinfo, at, hostpart = location.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            values["username"] = unquote(user)
        if colon:
            values["password"] = unquote(password)
    else:
        hostpart = location

    path_db: int | None = None
    if scheme == "unix":
        if not hostpart.startswith("/") or hostpart == "/":
            raise _fail("url", shown, "a unix:// URL needs a socket path: unix:///path/to/sock")
        values["unix_socket_path"] = unquote(hostpart)
    else:
        values["ssl"] = scheme == "rediss"
        netloc, slash, path = hostpart.partition("/")
        if netloc.startswith("["):
            host, bracket, after = netloc[1:].partition("]")
            if not bracket or (after and not after.startswith(":")):
                raise _fail("url", shown, "an IPv6 host must be written [address]:port")
            port_text = after[1:] if after else ""
        else:
            host, _, port_text = netloc.partition(":")
        if host:
            values["host"] = unquote(host)
        if port_text:
            if not (port_text.isascii() and port_text.isdigit()):  # int() refuses "²"
                raise _fail("port", port_text, "must be an integer between 1 and 65535")
            values["port"] = int(port_text)
        if slash and path:
            if not (path.isascii() and path.isdigit()):
                raise _fail("db", unquote(path), "the URL path must be a database number")
            path_db = int(path)
            values["db"] = path_db

    pool_options: dict[str, Any] = {}
    types = _field_types()
    seen: set[str] = set()
    for raw_name, raw_value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        name = _ALIASES.get(raw_name, raw_name)
        if name in seen:
            shown_value = _shown_option(name, raw_value)
            raise _fail(raw_name, shown_value, "is given more than once in the URL")
        seen.add(name)
        if raw_name in _POOL_OPTIONS:
            value = _convert(raw_name, raw_value, _POOL_OPTION_KINDS[raw_name])
            if raw_name == "health_check_interval" and value == 0:
                value = None  # redis-py: 0 turns the checks off
            if raw_name in ("retry_on_timeout", "retry_on_error") and value in (None, ""):
                continue  # as redis-py: an empty value leaves it unset
            pool_options[_POOL_OPTIONS[raw_name]] = value
            continue
        if raw_name in _IGNORED_OPTIONS:
            _convert(raw_name, raw_value, "int")
            continue
        if name == "db":
            db = _convert("db", raw_value, "int")
            if path_db is not None and db != path_db:
                raise _fail("db", raw_value, f"contradicts the database {path_db} in the URL path")
            values["db"] = db
            continue
        if name in _CREDENTIAL_OPTIONS:  # as redis-py: ?password=... (and ?username=...)
            if name in values:
                raise _fail(
                    name, _REDACTED, "is given both in the URL's user info and as an option"
                )
            values[name] = raw_value
            continue
        if name in _NOT_QUERY_OPTIONS or name in _OBJECT_OPTIONS or name not in types:
            if name in _OBJECT_OPTIONS:
                reason = "takes an object, which a URL cannot hold: pass it as a keyword"
            else:
                hint = suggest(raw_name, _QUERY_OPTIONS | _OBJECT_OPTIONS)
                known = ", ".join(sorted(_QUERY_OPTIONS))
                reason = f"is not a known URL option{hint} (known: {known})"
            raise _fail(raw_name, _REDACTED, reason)
        if name in _SSL_OPTIONS and scheme != "rediss":
            shown_value = _shown_option(name, raw_value)
            raise _fail(raw_name, shown_value, "is a TLS option: it needs a rediss:// URL")
        if name in ("lib_name", "lib_version") and raw_value == "":
            values[name] = None  # as redis-py: an empty name sends no CLIENT SETINFO
            continue
        value = _convert(raw_name, raw_value, str(types[name]))
        if value is None and name in _TO_BOOL_OPTIONS:
            continue  # as redis-py: an empty value leaves it unset
        values[name] = value

    for name, value in overrides.items():
        if name not in types:
            raise _fail(name, value, f"is not a RedisConfig field{suggest(name, types)}")
    values = {**defaults, **values, **overrides}
    return RedisConfig(**values), pool_options


def _env_timeout(env: Mapping[str, str], name: str) -> float | None:
    raw = env[name]
    if raw.strip().lower() in ("", "none"):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _fail(name, raw, "must be a number of seconds") from None
    return _check_timeout(name, value)
