"""The Sentinel settings and the ``redis+sentinel://`` URL: pure code, no server."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import redis.asyncio.sentinel
import redis.sentinel

import anypool
from anypool import RedisConfig, RedisPool
from anypool._sentinel import settings as make_settings
from anypool._sentinel import split_sentinel_url
from anypool._sentinel._discovery import parse_address, parse_state


def split(url: str, **defaults: Any) -> Any:
    return split_sentinel_url(url, defaults)


def test_url_with_every_part() -> None:
    sentinels, service, options, config, pool = split(
        "redis+sentinel://alice:s3cret@h1:26380,h2,[::1]:26381/mymaster/3"
        "?sentinel_password=spw&sentinel_username=watcher&role=replica&max_connections=7"
        "&socket_timeout=2.5"
    )
    assert sentinels == (("h1", 26380), ("h2", 26379), ("::1", 26381))
    assert service == "mymaster"
    assert options == {
        "sentinel_password": "spw",
        "sentinel_username": "watcher",
        "role": "replica",
    }
    assert (config.username, config.password, config.db) == ("alice", "s3cret", 3)
    assert config.socket_timeout == 2.5 and not config.ssl
    assert pool == {"max_size": 7}


def test_url_minimal_and_tls() -> None:
    sentinels, service, options, config, _ = split("rediss+sentinel://10.0.0.1/svc")
    assert sentinels == (("10.0.0.1", 26379),) and service == "svc" and options == {}
    assert config.ssl and config.db == 0 and config.password is None
    _, service, _, _, _ = split("redis+sentinel://h?service_name=other")
    assert service == "other"


@pytest.mark.parametrize(
    ("url", "field", "words"),
    [
        ("redis://h/svc", "url", r"redis\+sentinel://"),
        ("redis+sentinel:///svc", "url", "names no sentinel"),
        ("redis+sentinel://h", "url", "names no service"),
        ("redis+sentinel://h/", "url", "names no service"),
        ("redis+sentinel://h:0/svc", "url", "port"),
        ("redis+sentinel://h:99999/svc", "url", "port"),
        ("redis+sentinel://h:x/svc", "url", "port"),
        ("redis+sentinel://h:\u00b2/svc", "url", "port"),  # "²".isdigit(), but not int()'s
        ("redis+sentinel://h:1,h:\u0662/svc", "url", "port"),  # an Arabic-Indic 2
        ("redis+sentinel://[::1/svc", "url", "IPv6"),
        ("redis+sentinel://h/svc/x", "db", "database number"),
        ("redis+sentinel://h/svc?role=leader", "role", "'primary' or 'replica'"),
        ("redis+sentinel://h/svc?service_name=b", "service_name", "contradicts"),
        ("redis+sentinel://h/svc?nope=1", "nope", "not a known URL option"),
        ("redis+sentinel://h/svc#frag", "url", "fragment"),
    ],
)
def test_url_errors_name_the_part(url: str, field: str, words: str) -> None:
    with pytest.raises(anypool.ConfigError, match=words) as info:
        split(url)
    assert info.value.field == field


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:hunter2@h/svc?nope=1",
        "redis+sentinel://u:hunter2@h:x/svc",
        "redis+sentinel://h/svc?sentinel_password=hunter2&role=leader",
        "redis+sentinel://h/svc?sentinel_password=hunter2&sentinel_password=hunter2",
        "redis+sentinel://h/svc/x?password=hunter2",
    ],
)
def test_url_errors_never_show_a_password(url: str) -> None:
    with pytest.raises(anypool.ConfigError) as info:
        split(url)
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(info.value.value)


def test_from_url_and_from_sentinel_build_the_same_pool() -> None:
    by_url = RedisPool.from_url(
        "redis+sentinel://:dpw@127.0.0.1:1,127.0.0.1:2/svc?sentinel_password=spw",
        decode_responses=True,
    )
    by_call = RedisPool.from_sentinel(
        [("127.0.0.1", 1), "127.0.0.1:2"], "svc", password="dpw", sentinel_password="spw",
        decode_responses=True,
    )  # fmt: skip
    for pool in (by_url, by_call):
        assert pool.config.password == "dpw" and pool.config.decode_responses
        assert "sentinel 'svc' primary" in pool.pool.name
        assert "spw" not in repr(pool) and "dpw" not in repr(pool)


def test_what_the_url_says_wins_over_keywords() -> None:
    pool = RedisPool.from_url("redis+sentinel://h/svc/2?role=replica", db=5, role="primary")
    assert pool.config.db == 2
    assert "replica" in pool.pool.name


def test_sentinel_connections_get_their_own_credentials_and_the_data_tls() -> None:
    data = RedisConfig(
        password="dpw", username="app", ssl=True, ssl_ca_certs="/ca.pem", db=4,
        socket_timeout=None, connect_timeout=30, client_name="app1",
    )  # fmt: skip
    settings = make_settings(
        ["h:1"], "svc", data, sentinel_password="spw", sentinel_options={"ssl_ca_certs": "/s.pem"}
    )
    sentinel = settings.config
    assert (sentinel.username, sentinel.password) == (None, "spw")  # never the data nodes'
    assert sentinel.ssl and sentinel.ssl_ca_certs == "/s.pem" and sentinel.db == 0
    assert sentinel.client_name == "app1"
    assert sentinel.connect_timeout == 2.0 and sentinel.socket_timeout == 2.0  # bounded
    assert make_settings(["h"], "svc", RedisConfig(socket_timeout=0.5)).config.socket_timeout == 0.5


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sentinels": []}, "sentinels"),
        ({"sentinels": "h:1"}, "sentinels"),
        ({"sentinels": [("h", "1")]}, "sentinels"),
        ({"sentinels": [("", 1)]}, "sentinels"),
        ({"sentinels": [("h", 1, 2)]}, "sentinels"),
        ({"service_name": ""}, "service_name"),
        ({"role": "master-ish"}, "role"),
        ({"sentinel_options": {"port": 1}}, "sentinel_options"),
        ({"sentinel_options": {"prot": 1}}, "sentinel_options"),
        ({"sentinel_options": "socket_timeout"}, "sentinel_options"),
        ({"sentinel_options": [("socket_timeout", 1)]}, "sentinel_options"),
        ({"sentinels": ["h:\u00b2"]}, "sentinels"),
        ({"sentinels": ["redis://h:26379"]}, "sentinels"),
    ],
)
def test_from_sentinel_refuses_bad_arguments(kwargs: dict[str, Any], field: str) -> None:
    arguments: dict[str, Any] = {"sentinels": [("h", 1)], "service_name": "svc", **kwargs}
    with pytest.raises(anypool.ConfigError) as info:
        RedisPool.from_sentinel(**arguments)
    assert info.value.field == field


@pytest.mark.parametrize(
    "sentinels",
    [
        "redis://:hunter2@h:26379",  # a URL where the addresses go
        ["u:hunter2@h:26379"],
        ["redis://u:hunter2@h:26379"],
        [("h", "hunter2")],  # a password where the port goes
        [("h", b"hunter2")],
        [("hunter2",)],
        [("h", 1, "hunter2")],
        [],
    ],
)
def test_bad_sentinels_never_show_a_password(sentinels: Any) -> None:
    with pytest.raises(anypool.ConfigError) as info:
        RedisPool.from_sentinel(sentinels, "svc")
    assert info.value.field == "sentinels"
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(info.value.value)


def test_redis_py_role_names_are_accepted() -> None:
    assert "replica" in RedisPool.from_sentinel(["h"], "svc", role="slave").pool.name
    assert "primary" in RedisPool.from_sentinel(["h"], "svc", role="master").pool.name


def test_errors_are_redis_pys_too_and_pickle() -> None:
    error = anypool.PrimaryNotFound("none", [(("h", 1), "down")])
    assert isinstance(error, redis.asyncio.sentinel.MasterNotFoundError)
    assert isinstance(error, redis.sentinel.MasterNotFoundError)
    assert isinstance(error, anypool.ConnectError)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == "none" and copy.attempts == [(("h", 1), "down")]
    replica_error = anypool.ReplicaNotFound("none")
    assert isinstance(replica_error, redis.asyncio.sentinel.SlaveNotFoundError)
    assert isinstance(replica_error, redis.sentinel.SlaveNotFoundError)


def test_sentinel_replies_are_read_in_both_protocols() -> None:
    assert parse_address([b"127.0.0.1", b"6380"]) == ("127.0.0.1", 6380)
    assert parse_address(None) is None
    with pytest.raises(anypool.ProtocolError):
        parse_address([b"127.0.0.1"])
    with pytest.raises(anypool.ProtocolError):
        parse_address([b"h", b"port"])
    flat = [b"name", b"m", b"flags", b"master", b"num-slaves", b"2"]
    assert parse_state(flat) == {"name": "m", "flags": "master", "num-slaves": "2"}
    assert parse_state({b"flags": b"slave"}) == {"flags": "slave"}
    with pytest.raises(anypool.ProtocolError):
        parse_state([b"odd"])
