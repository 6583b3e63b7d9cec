"""RedisConfig / PoolConfig: URLs both ways, environment, validation, password hygiene."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import pytest
import redis.asyncio
from hypothesis import given
from hypothesis import strategies as st

from anypool import ConfigError, PoolConfig, RedisConfig, split_url


@pytest.mark.parametrize(
    ("config", "url"),
    [
        (RedisConfig(host="localhost", port=6379, db=0, password="secret"),
         "redis://:secret@localhost:6379/0"),
        (RedisConfig(host="redis.example.com", username="admin", password="pass"),
         "redis://admin:pass@redis.example.com:6379/0"),
        (RedisConfig(host="secure.redis.com", port=6380, ssl=True),
         "rediss://secure.redis.com:6380/0"),
        (RedisConfig(password="p@ss:w0rd!"), "redis://:p%40ss%3Aw0rd%21@localhost:6379/0"),
    ],
)  # fmt: skip
def test_to_url_exact(config: RedisConfig, url: str) -> None:
    assert config.to_url(redact=False) == url
    assert RedisConfig.from_url(url) == config


def test_to_url_redacts_by_default() -> None:
    config = RedisConfig(username="admin", password="hunter2")
    assert config.to_url() == "redis://admin:***@localhost:6379/0"
    assert "hunter2" not in repr(config)
    assert "password='***'" in repr(config)


def test_from_url_forms() -> None:
    config = RedisConfig.from_url(
        "rediss://user:pw@[::1]:7000/5?protocol=2&decode_responses=true&client_name=api"
        "&socket_timeout=1.5&socket_connect_timeout=3&ssl_cert_reqs=none"
    )
    assert (config.host, config.port, config.db, config.username, config.password) == (
        "::1", 7000, 5, "user", "pw",
    )  # fmt: skip
    assert config.ssl and config.ssl_cert_reqs == "none"
    assert config.protocol == 2 and config.decode_responses and config.client_name == "api"
    assert (config.socket_timeout, config.connect_timeout) == (1.5, 3.0)
    assert config.address == "[::1]:7000"
    assert RedisConfig.from_url(config.to_url(redact=False)) == config

    unix = RedisConfig.from_url("unix://:pw@/tmp/redis.sock?db=2")
    assert (unix.unix_socket_path, unix.db, unix.password) == ("/tmp/redis.sock", 2, "pw")
    assert unix.to_url(redact=False) == "unix://:pw@/tmp/redis.sock?db=2"
    assert RedisConfig.from_url("redis://h").port == 6379
    assert RedisConfig.from_url("redis://h/?db=4").db == 4
    assert RedisConfig.from_url("REDIS://h:1/0").host == "h"
    assert RedisConfig.from_url("redis://user@h").username == "user"
    assert RedisConfig.from_url("redis://h", db=7).db == 7  # overrides win


def test_split_url_returns_pool_options() -> None:
    config, pool = split_url("redis://h/0?max_connections=20&health_check_interval=5")
    assert config.host == "h"
    assert pool == {"max_size": 20, "health_check_interval": 5.0}
    with pytest.raises(ConfigError, match=r"max_connections .* is a pool option"):
        RedisConfig.from_url("redis://h/0?max_connections=20")


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("http://localhost:6379/0", "url"),
        ("localhost:6379", "url"),
        ("redis://localhost:0/0", "port"),
        ("redis://localhost:70000/0", "port"),
        ("redis://localhost:abc/0", "port"),
        ("redis://localhost:6379/-1", "db"),
        ("redis://localhost:6379/abc", "db"),
        ("redis://localhost/0?db=abc", "db"),
        ("redis://localhost/1?db=2", "db"),
        ("redis://localhost/0?socket_timeout=-1", "socket_timeout"),
        ("redis://localhost/0?socket_timeout=abc", "socket_timeout"),
        ("redis://localhost/0?connect_timeout=0", "connect_timeout"),
        ("redis://localhost/0?bogus=1", "bogus"),
        ("redis://localhost/0?ssl_ca_certs=/ca.pem", "ssl_ca_certs"),
        ("redis://localhost/0?ssl_cert_reqs=none", "ssl_cert_reqs"),
        ("redis://localhost/0?protocol=4", "protocol"),
        ("redis://localhost/0?decode_responses=maybe", "decode_responses"),
        ("redis://localhost/0?encoding=klingon", "encoding"),
        ("redis://localhost/0?db=1&db=1", "db"),
        ("redis://localhost/0?client_name=a%20b", "client_name"),
        ("unix://", "url"),
        ("redis://[::1/0", "url"),
        ("redis://localhost:\u00b2/0", "port"),  # "²".isdigit(), but int() refuses it
        ("redis://localhost/\u0661", "db"),  # an Arabic-Indic 1
    ],
)
def test_bad_urls_name_the_field(url: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedisConfig.from_url(url)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert field in str(info.value)


def test_bad_url_message_never_shows_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        RedisConfig.from_url("redis://user:topsecret@localhost:99999/0")
    assert "topsecret" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        RedisConfig.from_url("ftp://user:topsecret@localhost/0")
    assert "topsecret" not in str(info.value)
    assert "***" in str(info.value)
    with pytest.raises(ConfigError) as info:
        RedisConfig(password=123)  # type: ignore[arg-type]
    assert "123" not in str(info.value)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"port": True}, "port"),
        ({"db": -1}, "db"),
        ({"db": "abc"}, "db"),
        ({"host": ""}, "host"),
        ({"socket_timeout": -1}, "socket_timeout"),
        ({"socket_timeout": float("nan")}, "socket_timeout"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"ssl_ca_certs": "/ca.pem"}, "ssl_ca_certs"),
        ({"ssl": True, "ssl_keyfile": "k.pem"}, "ssl_keyfile"),
        ({"ssl": True, "ssl_cert_reqs": "sometimes"}, "ssl_cert_reqs"),
        ({"ssl": True, "unix_socket_path": "/s"}, "ssl"),
        ({"unix_socket_path": ""}, "unix_socket_path"),
        ({"protocol": 1}, "protocol"),
        ({"protocol": "3"}, "protocol"),
        ({"legacy_responses": "no"}, "legacy_responses"),
        ({"encoding_errors": "nope"}, "encoding_errors"),
        ({"max_reply_size": 10}, "max_reply_size"),
        ({"client_name": "has space"}, "client_name"),
        ({"decode_responses": "yes"}, "decode_responses"),
    ],
)
def test_bad_values_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedisConfig(**changes)
    assert info.value.field == field


def test_config_is_frozen_and_replace_validates() -> None:
    config = RedisConfig()
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]
    assert config.replace(port=1).port == 1
    with pytest.raises(ConfigError):
        config.replace(port=-1)
    with pytest.raises(ConfigError, match="not a RedisConfig field"):
        RedisConfig.from_url("redis://h", colour="blue")


def test_from_env() -> None:
    env = {
        "REDIS_URL": "redis://:pw@cache:6380/2",
        "REDIS_SOCKET_TIMEOUT": "2.5",
        "REDIS_MAX_CONNECTIONS": "32",
        "REDIS_HEALTH_CHECK_INTERVAL": "15",
    }
    config = RedisConfig.from_env(env)
    assert (config.host, config.port, config.db, config.password) == ("cache", 6380, 2, "pw")
    assert config.socket_timeout == 2.5
    pool = PoolConfig.from_env(env)
    assert (pool.max_size, pool.health_check_interval) == (32, 15.0)
    assert RedisConfig.from_env({}) == RedisConfig()
    assert PoolConfig.from_env({}) == PoolConfig()


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"REDIS_SOCKET_TIMEOUT": "soon"}, "REDIS_SOCKET_TIMEOUT"),
        ({"REDIS_SOCKET_TIMEOUT": "-3"}, "REDIS_SOCKET_TIMEOUT"),
        ({"REDIS_MAX_CONNECTIONS": "many"}, "REDIS_MAX_CONNECTIONS"),
        ({"REDIS_MAX_CONNECTIONS": "0"}, "REDIS_MAX_CONNECTIONS"),
        ({"REDIS_HEALTH_CHECK_INTERVAL": "-1"}, "REDIS_HEALTH_CHECK_INTERVAL"),
    ],
)
def test_bad_env_names_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedisConfig.from_env(env)
        PoolConfig.from_env(env)
    assert info.value.field == name


def test_bad_redis_url_in_env_says_where_it_came_from() -> None:
    with pytest.raises(ConfigError) as info:
        RedisConfig.from_env({"REDIS_URL": "redis://h:0/0"})
    assert info.value.field == "port"
    assert any("REDIS_URL" in note for note in info.value.__notes__)


_text = st.text(min_size=1, max_size=12).filter(lambda s: "\x00" not in s)


@given(
    host=st.sampled_from(["localhost", "127.0.0.1", "::1", "redis.example.com"]),
    port=st.integers(1, 65535),
    db=st.integers(0, 10_000),
    username=st.none() | _text,
    password=st.none() | _text,
    ssl=st.booleans(),
    protocol=st.sampled_from([None, 2, 3]),
    decode=st.booleans(),
    timeout=st.none() | st.floats(0.001, 1e6),
    name=st.none() | st.text("abcxyz-_:0123", min_size=1, max_size=10),
)
def test_url_round_trip(
    host: str, port: int, db: int, username: str | None, password: str | None, ssl: bool,
    protocol: int | None, decode: bool, timeout: float | None, name: str | None,
) -> None:  # fmt: skip
    config = RedisConfig(
        host=host, port=port, db=db, username=username, password=password, ssl=ssl,
        protocol=protocol, decode_responses=decode, socket_timeout=timeout, client_name=name,
    )  # fmt: skip
    url = config.to_url(redact=False)
    assert RedisConfig.from_url(url) == config
    redacted = RedisConfig.from_url(config.to_url())
    assert redacted.password == (None if password is None else "***")
    assert redacted.replace(password=password) == config


@given(st.text(max_size=80))
def test_url_parser_only_raises_config_error(url: str) -> None:
    with contextlib.suppress(ConfigError):
        RedisConfig.from_url(url)


@given(st.text(alphabet="redis:/@[]?&=%:.0123456789abcdhlostu", max_size=60))
def test_url_parser_on_url_like_junk(url: str) -> None:
    with contextlib.suppress(ConfigError):
        split_url(url)


def test_pool_config_validation() -> None:
    with pytest.raises(ConfigError, match="max_size"):
        PoolConfig(max_size=0)
    with pytest.raises(ConfigError, match="health_check_interval"):
        PoolConfig(health_check_interval=-5)
    assert PoolConfig(health_check_interval=None).health_check_interval is None


# Passwords written raw into a URL, with characters a URL cannot carry unencoded.
_LEAKY_URLS = [
    "redis://:QXsec/retZJ#frag@localhost:6379/0",
    "redis://:QXp@ss:w/rdZJ#1@localhost:6379/0",
    "redis://:QXsec?retZJ@localhost:6379/0",
    "redis://user:QX12/34ZJ@localhost:6379/x",
    "redis://user:QX1?db=0ZJ@localhost:6379/0",
    "rediss://user:QX#ZJ@localhost",
]


@pytest.mark.parametrize("url", _LEAKY_URLS)
def test_a_url_that_fails_to_parse_shows_no_part_of_its_password(url: str) -> None:
    """Issue 10, defect 14: "redis://:sec/ret#frag@host" printed the whole password, and
    other forms printed parts of it (as a port, a db, an option)."""
    with pytest.raises(ConfigError) as info:
        RedisConfig.from_url(url)
    error = info.value
    shown = " ".join([str(error), repr(error), repr(error.value), *getattr(error, "__notes__", [])])
    assert error.__cause__ is None
    assert error.__context__ is None  # no chained exception carrying the raw text either
    for letter in "QXZJ":  # every password above is marked with these (absent elsewhere)
        assert letter not in shown, shown
    assert "percent-encode" in str(error)
    assert "localhost" in str(error)  # what is not secret is still shown


_password_text = st.text(alphabet="QXZJ/?#@:%&=", min_size=1, max_size=12)


@given(user=st.sampled_from(["", "user"]), password=_password_text)
def test_no_raw_password_ever_shows_in_a_url_error(user: str, password: str) -> None:
    url = f"redis://{user}:{password}@localhost:6379/0"
    error: ConfigError | None = None
    try:
        RedisConfig.from_url(url)
    except ConfigError as exc:
        error = exc
    if error is not None:
        shown = " ".join([str(error), repr(error), repr(error.value)])
        for letter in "QXZJ":
            assert letter not in shown, shown
        assert error.__context__ is None


def test_password_and_username_as_url_options_never_shown() -> None:
    """As redis-py, ``?password=`` (and ``?username=``) are accepted; found by the adversarial
    review: an error showed such a password, or what a raw "&" or "#" split off it."""
    config = RedisConfig.from_url("redis://localhost:6379/0?username=u&password=QXp%26ZJ")
    assert (config.username, config.password) == ("u", "QXp&ZJ")
    for url in [
        "redis://localhost:6379/0?password=QXsecZJ#frag",
        "ftp://localhost/0?password=QXsecZJ",
        "redis://localhost:6379/0?password=QX?a&ZJ,b",
        "redis://localhost:6379/0?password=QXa&password=ZJb",
        "redis://u:pw@localhost/0?password=QXsecZJ",
        "redis://localhost/0?passwd=QXsecZJ",
    ]:
        with pytest.raises(ConfigError) as info:
            RedisConfig.from_url(url)
        shown = " ".join([str(info.value), repr(info.value.value)])
        for letter in "QXZJ":
            assert letter not in shown, shown


def test_types_redis_refuses_are_refused_at_configuration() -> None:
    with pytest.raises(ConfigError, match="protocol"):
        RedisConfig(protocol=3.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="client_name"):
        RedisConfig(client_name="café")


# --- protocol and legacy_responses: redis-py's defaults ------------------------------------------

REDIS_PY_8 = "legacy_responses" in inspect.signature(redis.asyncio.Redis).parameters


def test_no_protocol_means_the_installed_redis_py_s_default() -> None:
    config = RedisConfig()
    assert config.protocol is None and config.legacy_responses is True
    # redis-py 8 speaks RESP3 when given no protocol; redis-py 5-7 speak RESP2
    assert config.wire_protocol == (3 if REDIS_PY_8 else 2)
    assert RedisConfig(protocol=2).wire_protocol == 2
    assert RedisConfig(protocol=3).wire_protocol == 3
    assert "protocol" not in repr(config) and "protocol" not in config.to_url()
    assert RedisConfig.from_url("redis://h/0?protocol=3").to_url() == "redis://h:6379/0?protocol=3"


@pytest.mark.skipif(not REDIS_PY_8, reason="legacy_responses is redis-py 8's option")
def test_legacy_responses_in_urls_and_keywords() -> None:
    config = RedisConfig.from_url("redis://h/0?legacy_responses=false&protocol=2")
    assert (config.protocol, config.legacy_responses) == (2, False)
    assert "legacy_responses=False" in repr(config)
    assert config.to_url() == "redis://h:6379/0?protocol=2&legacy_responses=false"
    assert RedisConfig.from_url(config.to_url()) == config
    assert RedisConfig(legacy_responses=False).protocol is None


@pytest.mark.skipif(REDIS_PY_8, reason="redis-py 8 has legacy_responses")
def test_legacy_responses_false_needs_redis_py_8() -> None:
    for build in (
        lambda: RedisConfig(legacy_responses=False),
        lambda: RedisConfig.from_url("redis://h/0?legacy_responses=false"),
    ):
        with pytest.raises(ConfigError) as info:
            build()
        assert info.value.field == "legacy_responses"
        assert "redis-py 8" in str(info.value) and redis.__version__ in str(info.value)
    assert RedisConfig(legacy_responses=True).legacy_responses is True


# --- redis-py's from_url meaning (review 2) ----------------------------------------------------

_PRECEDENCE_CASES = [
    ("redis://localhost:6379/2", {"db": 3}, "db"),
    ("redis://:pw@localhost:6379/0", {"password": "other"}, "password"),
    ("redis://u:p@localhost:6379/0", {"username": "x"}, "username"),
    ("redis://localhost:6379/0?socket_timeout=1", {"socket_timeout": 2}, "socket_timeout"),
    ("redis://localhost:6379/0", {"host": "otherhost"}, "host"),
    ("redis://localhost:6379/0", {"port": 1234}, "port"),
    ("redis://localhost:6379/0?protocol=2", {"protocol": 3}, "protocol"),
    ("redis://localhost:6379", {"db": 4}, "db"),  # no path: the keyword fills in
    ("redis://localhost:6379/0?socket_connect_timeout=1", {"socket_connect_timeout": 2},
     "socket_connect_timeout"),
]  # fmt: skip


@pytest.mark.parametrize(("url", "keywords", "name"), _PRECEDENCE_CASES)
def test_from_url_gives_the_url_priority_as_redis_py(
    url: str, keywords: dict[str, Any], name: str
) -> None:
    import anypool

    theirs = redis.asyncio.Redis.from_url(url, **keywords).connection_pool.connection_kwargs
    field = "connect_timeout" if name == "socket_connect_timeout" else name
    config = anypool.RedisPool.from_url(url, **keywords).config
    expected = theirs[name]
    if name == "protocol":  # redis-py 5 and 6 keep the URL's text ("2") and int() it on connect
        expected = int(expected)
    assert getattr(config, field) == expected


@pytest.mark.anyio
async def test_from_url_priority_on_a_real_server(redis_server: Any) -> None:
    """The URL's database wins over ``db=`` (as in redis-py), for both pool classes."""
    import anyio

    import anypool

    async with anypool.RedisPool.from_url(redis_server.url, db=3) as client:
        assert (await client.client_info())["db"] == 0
    async with anypool.RedisPool.from_url(redis_server.url.rsplit("/", 1)[0], db=3) as client:
        assert (await client.client_info())["db"] == 3

    def blocking() -> int:
        with anypool.BlockingRedisPool.from_url(redis_server.url, db=3) as client:
            return int(client.client_info()["db"])

    assert await anyio.to_thread.run_sync(blocking) == 0


def test_from_url_scheme_and_pool_options_win_as_redis_py() -> None:
    import anypool

    assert anypool.RedisPool.from_url("rediss://h/0", ssl=False).config.ssl is True
    assert anypool.RedisPool.from_url("redis://h/0", ssl=True).config.ssl is False
    pool = anypool.RedisPool.from_url("redis://h/0?max_connections=3", max_connections=5)
    assert pool.pool.config.max_size == 3
    pool = anypool.RedisPool.from_url("redis://h/0?retry_on_timeout=no", retry_on_timeout=True)
    assert pool._retry is None
    # a PoolConfig record is still taken; the URL's pool options win over it too
    record = PoolConfig(max_size=7, min_size=1)
    pool = anypool.RedisPool.from_url("redis://h/0?max_connections=3", pool_config=record)
    assert (pool.pool.config.max_size, pool.pool.config.min_size) == (3, 1)
    assert anypool.RedisPool.from_url("redis://h/0", pool_config=record).pool.config.max_size == 7
    # keywords still fill in what the URL leaves out, and are validated
    assert anypool.RedisPool.from_url("redis://h/0", decode_responses=True).config.decode_responses
    with pytest.raises(ConfigError, match="client_name"):
        anypool.RedisPool.from_url("redis://:pw@h/0", client_name="a b")


@pytest.mark.parametrize("option", ["socket_keepalive", "retry_on_timeout", "ssl_check_hostname"])
@pytest.mark.parametrize(
    "word", ["off", "on", "no", "NO", "n", "N", "f", "F", "false", "0", "1", "yes", "y", "x", ""]
)
def test_url_booleans_are_read_with_redis_py_to_bool(option: str, word: str) -> None:
    scheme = "rediss" if option.startswith("ssl") else "redis"
    url = f"{scheme}://localhost:6379/0?{option}={word}"
    theirs = redis.asyncio.Redis.from_url(url).connection_pool.connection_kwargs.get(option)
    config, pool_options = split_url(url)
    if option == "retry_on_timeout":
        mine = pool_options.get(option)
    else:
        mine = None if word == "" else getattr(config, option)  # "" leaves the default
        assert word != "" or getattr(config, option) == getattr(RedisConfig(), option)
    assert mine == theirs


def test_url_retry_on_error_is_accepted_as_redis_py() -> None:
    import anypool

    # redis-py reads the text as no class: a non-empty value turns retries on, "" leaves it
    pool = anypool.RedisPool.from_url("redis://h/0?retry_on_error=TimeoutError")
    assert pool._retry is not None
    assert anypool.RedisPool.from_url("redis://h/0?retry_on_error=")._retry is None
    assert split_url("redis://h/0?retry_on_error=x")[1] == {"retry_on_error": "x"}


def test_empty_lib_name_and_version_send_nothing() -> None:
    assert RedisConfig(lib_name="").lib_name is None
    assert RedisConfig(lib_version="").lib_version is None
    with pytest.raises(ConfigError, match="a library version must be") as error:
        RedisConfig(lib_version="1 0")
    assert "library name" not in str(error.value)


@pytest.mark.parametrize(
    ("url", "expected", "unexpected"),
    [
        ("redis://localhost:6379/0?password=pw&client_name=a%20b", "client_name 'a b'",
         "percent-encode"),
        ("rediss://localhost/0?ssl_password=pw&ssl_keyfile=/k.pem", "needs ssl_certfile",
         "percent-encode"),
        ("redis://localhost/0?credentials_provider=x", "did you mean 'credential_provider'",
         "percent-encode"),
        # an unknown option after a raw ?password= may be password text: not shown
        ("redis://localhost/0?password=ab&cd=1", "percent-encode", "cd"),
        ("redis://localhost/0?password=ab&credentials_provider=1",
         "did you mean 'credential_provider'", "ab"),
    ],
)  # fmt: skip
def test_url_errors_name_the_real_problem(url: str, expected: str, unexpected: str) -> None:
    with pytest.raises(ConfigError) as error:
        RedisConfig.from_url(url)
    message = str(error.value)
    assert expected in message and unexpected not in message
    assert "pw" not in message.replace("password", "")
