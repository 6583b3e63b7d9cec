"""redis-py's client keywords, read with redis-py's meaning.

``RedisPool(**options)`` takes anypool's own names (every :class:`RedisConfig` and
:class:`PoolConfig` field) and every keyword of redis-py's ``Redis()`` (5.x to 8.x, asyncio and
sync): an alias where anypool has the setting under another name, the setting itself where the
name is shared, a documented no-op where ignoring it cannot surprise, and otherwise a
ConfigError that says why and what to use instead.  An unknown name gets the closest valid one.
docs/configuration.md has the table.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ._config import PoolConfig, RedisConfig, suggest
from ._errors import ConfigError

__all__ = ["CLIENT_OPTIONS", "connection_kwargs", "sort_options"]

# Same setting, another name here.
_ALIASES = {
    "socket_connect_timeout": "connect_timeout", "max_connections": "max_size",
    "charset": "encoding", "errors": "encoding_errors",  # redis-py 5's deprecated names
}  # fmt: skip
# Keywords of RedisPool itself (retries), not of either config record.
CLIENT_OPTIONS = frozenset({
    "retry", "retry_on_error", "retry_on_timeout", "retry_may_have_run",
    "autopipeline", "autopipeline_connections", "autopipeline_max_in_flight",
})  # fmt: skip
# redis-py keywords that change nothing here, whatever their value.
_NO_OPS = {
    "socket_read_size": "anypool sizes its own reads (64 KiB)",
    "auto_close_connection_pool": "anypool always closes the pool it made, when the pool closes",
}
# redis-py keywords accepted only with the value that asks for nothing (their default); any
# other value asks for something anypool does not do: a ConfigError with this advice.
_ONLY_DEFAULT: dict[str, tuple[Any, str]] = {
    "connection_pool": (None, "anypool builds its own pool: pass its settings (max_size=...) "
                        "to RedisPool instead"),
    "single_connection_client": (False, "for commands that must share one connection, use "
                                 "`async with redis.acquire() as conn:`"),
    "redis_connect_func": (None, "anypool runs its own connect handshake; there is no hook"),
    "event_dispatcher": (None, "anypool dispatches no redis-py events (see its statistics() "
                         "and logging instead)"),
    "cache": (None, "client-side caching is not supported"),
    "cache_config": (None, "client-side caching is not supported"),
    "ssl_validate_ocsp": (False, "OCSP validation is not supported"),
    "ssl_validate_ocsp_stapled": (False, "OCSP validation is not supported"),
    "ssl_ocsp_context": (None, "OCSP validation is not supported"),
    "ssl_ocsp_expected_cert": (None, "OCSP validation is not supported"),
    "oss_cluster_maint_notifications_handler": (None, "maintenance notifications are not "
                                                "supported"),
}  # fmt: skip
_REDIS_FIELDS = frozenset(f.name for f in dataclasses.fields(RedisConfig))
_POOL_FIELDS = frozenset(f.name for f in dataclasses.fields(PoolConfig))
KNOWN = (
    _REDIS_FIELDS | _POOL_FIELDS | CLIENT_OPTIONS | set(_ALIASES) | set(_NO_OPS)
    | set(_ONLY_DEFAULT) | {"maint_notifications_config", "driver_info"}
)  # fmt: skip


def sort_options(
    options: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split keywords into RedisConfig fields, PoolConfig fields and client options, turning
    redis-py's names and values into anypool's.

    Raises:
        ConfigError: an unknown keyword (naming the closest one), a keyword whose value asks
            for something anypool does not do (saying what to use instead), or two keywords
            for the same setting.
    """
    redis_options: dict[str, Any] = {}
    pool_options: dict[str, Any] = {}
    client_options: dict[str, Any] = {}
    for name, value in options.items():
        target = _ALIASES.get(name, name)
        if target in redis_options or target in pool_options:
            raise ConfigError(name, value, f"sets {target}, which is already given")
        if name == "max_connections" and value is None:
            raise ConfigError(
                name, value, "anypool's pool is always bounded: give a number (max_size)"
            )
        if name == "health_check_interval" and value == 0 and not isinstance(value, bool):
            value = None  # redis-py: 0 turns the checks off
        if target in _REDIS_FIELDS:
            redis_options[target] = value
        elif target in _POOL_FIELDS:
            pool_options[target] = value
        elif name in CLIENT_OPTIONS:
            client_options[name] = value
        elif name in _NO_OPS:
            continue
        elif name in _ONLY_DEFAULT:
            default, advice = _ONLY_DEFAULT[name]
            if value is not default and value != default:
                raise ConfigError(name, _shown(value), f"is not supported: {advice}")
        elif name == "maint_notifications_config":
            if value is not None and getattr(value, "enabled", None) is not False:
                raise ConfigError(
                    name, _shown(value),
                    "is not supported: maintenance notifications are not handled (pass None, "
                    "or a config with enabled=False)",
                )  # fmt: skip
        elif name == "driver_info":
            _driver_info(value, options, redis_options)
        else:
            raise ConfigError(
                name, _shown(value),
                f"is not a RedisPool option{suggest(name, KNOWN)}; see docs/configuration.md "
                "for every option and the redis-py keywords it takes",
            )  # fmt: skip
    return redis_options, pool_options, client_options


def _driver_info(value: Any, options: dict[str, Any], redis_options: dict[str, Any]) -> None:
    """redis-py 7's DriverInfo: its formatted name and version become lib_name/lib_version."""
    if value is None:
        redis_options["lib_name"] = redis_options["lib_version"] = None
        return
    if not hasattr(value, "formatted_name") or not hasattr(value, "lib_version"):
        raise ConfigError("driver_info", _shown(value), "must be a redis.DriverInfo or None")
    if "lib_name" in options or "lib_version" in options:
        raise ConfigError(
            "driver_info", _shown(value), "cannot be combined with lib_name/lib_version"
        )
    redis_options["lib_name"] = value.formatted_name
    redis_options["lib_version"] = value.lib_version or None


def _shown(value: Any) -> Any:
    """A value as an error may show it: objects by their type (they may hold secrets)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return f"<{type(value).__name__}>"


_SSL_KWARGS = (
    "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_data", "ssl_ca_path",
    "ssl_check_hostname", "ssl_min_version", "ssl_ciphers", "ssl_password",
)  # fmt: skip


def connection_kwargs(config: RedisConfig) -> dict[str, Any]:
    """The connection keywords redis-py's ``Redis()`` would hold for ``config`` (what its
    ``get_connection_kwargs()`` returns), by redis-py's names: ``decode_responses``,
    ``encoding``, ``socket_connect_timeout``, ``path`` for a unix socket, the ``ssl_*`` options
    with TLS.  A new dict each call: changing it changes nothing."""
    kwargs: dict[str, Any] = {
        "db": config.db, "username": config.username, "password": config.password,
        "credential_provider": config.credential_provider,
        "socket_timeout": config.socket_timeout, "encoding": config.encoding,
        "encoding_errors": config.encoding_errors, "decode_responses": config.decode_responses,
        "client_name": config.client_name, "lib_name": config.lib_name,
        "lib_version": config.lib_version, "protocol": config.protocol,
        "legacy_responses": config.legacy_responses,
    }  # fmt: skip
    if config.unix_socket_path is not None:
        kwargs["path"] = config.unix_socket_path
        return kwargs
    kwargs.update(
        host=config.host, port=config.port, socket_connect_timeout=config.connect_timeout,
        socket_keepalive=config.socket_keepalive,
        socket_keepalive_options=(
            None if config.socket_keepalive_options is None
            else dict(config.socket_keepalive_options)
        ),
    )  # fmt: skip
    if config.ssl:
        kwargs.update({name: getattr(config, name) for name in _SSL_KWARGS})
        kwargs["ssl_include_verify_flags"] = list(config.ssl_include_verify_flags) or None
        kwargs["ssl_exclude_verify_flags"] = list(config.ssl_exclude_verify_flags) or None
    return kwargs
