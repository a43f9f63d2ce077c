"""Redis URLs: one reading for both clients, and passwords never printed.

The TLS tests start a real ``redis-server --tls-port`` with a throwaway CA made by the
``openssl`` command, and talk to it with both the hot-path connection and redis-py, each
configured from the same parsed URL.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url as redis_py_parse_url

from aioqueue.broker._resp import RespConnection
from aioqueue.broker._url import RedisTarget, parse_redis_url, redact_url
from aioqueue.errors import ConfigurationError
from aioqueue.testing import RedisServer, free_port


def parse(url: str) -> RedisTarget:
    return parse_redis_url(url, connect_timeout_s=3.0, read_timeout_s=7.0)


# -- parsing -------------------------------------------------------------------------------
def test_defaults() -> None:
    target = parse("redis://")
    assert (target.host, target.port, target.db, target.path) == ("localhost", 6379, 0, None)
    assert target.username is None and target.password is None and target.ssl is None
    assert (target.connect_timeout_s, target.read_timeout_s) == (3.0, 7.0)
    assert target.client_name is None


def test_host_port_db_and_credentials() -> None:
    target = parse("redis://alice:p%40ss%2Fw@cache.example.com:6380/4")
    assert (target.host, target.port, target.db) == ("cache.example.com", 6380, 4)
    assert (target.username, target.password) == ("alice", "p@ss/w")
    v6 = parse("redis://[::1]:7000")
    assert (v6.host, v6.port, v6.db) == ("::1", 7000, 0)


@pytest.mark.parametrize(
    ("url", "field", "value"),
    [
        ("redis://h/1?db=3", "db", 3),  # the option wins over the path, as in redis-py
        ("redis://h?password=s%26cret", "password", "s&cret"),
        ("redis://:from-userinfo@h?password=from-query", "password", "from-userinfo"),
        ("redis://h?username=bob&password=pw", "username", "bob"),
        ("redis://h?socket_timeout=2.5", "read_timeout_s", 2.5),
        ("redis://h?socket_connect_timeout=0.5", "connect_timeout_s", 0.5),
        ("redis://h?client_name=web-1", "client_name", "web-1"),
        ("redis://h?password=", "password", None),  # an empty value is "not given"
        ("unix:///run/redis.sock?db=2&password=pw", "db", 2),
        ("unix:///run/redis%20x.sock", "path", "/run/redis x.sock"),
        ("rediss://h?ssl_cert_reqs=optional", "ssl_cert_reqs", "optional"),
        ("rediss://h?ssl_check_hostname=false", "ssl_check_hostname", False),
    ],
)
def test_each_option(url: str, field: str, value: object) -> None:
    assert getattr(parse(url), field) == value


@pytest.mark.parametrize(
    "url",
    [
        "redis://u:pw@h:6380/2",
        "redis://:pw@h/1?password=other",
        "redis://h?password=pw&username=u&db=5",
        "redis://[::1]:7000/3",
        "unix:///tmp/r.sock?db=1",
    ],
)
def test_agrees_with_redis_py(url: str) -> None:
    theirs: dict[str, Any] = dict(redis_py_parse_url(url))
    ours = parse(url)
    assert ours.password == theirs.get("password")
    assert ours.username == theirs.get("username")
    assert ours.db == int(theirs.get("db", 0))
    if ours.path is None:
        assert (ours.host, ours.port) == (theirs["host"], theirs.get("port", 6379))
    else:
        assert ours.path == theirs["path"]


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://h", "scheme"),
        ("redis://h?max_conections=5", "'max_conections'"),
        ("redis://h?db=x", "'db'"),
        ("redis://h/zero", "'db'"),
        ("redis://h?db=1&db=2", "twice"),
        ("redis://h?socket_timeout=-1", "'socket_timeout'"),
        ("redis://h?socket_timeout=nan", "'socket_timeout'"),
        ("redis://h?socket_connect_timeout=soon", "'socket_connect_timeout'"),
        ("redis://h:port", "malformed"),
        ("redis://h?ssl_cert_reqs=none", "rediss://"),
        ("rediss://h?ssl_cert_reqs=maybe", "'ssl_cert_reqs'"),
        ("rediss://h?ssl_check_hostname=perhaps", "'ssl_check_hostname'"),
        ("rediss://h?ssl_keyfile=/k.pem", "'ssl_keyfile'"),
        ("rediss://h?ssl_ca_certs=/nonexistent/ca.pem", "'ssl_ca_certs'"),
        ("redis://h?client_name=has%20space", "'client_name'"),
        ("unix://", "socket path"),
    ],
)
def test_bad_urls_name_the_problem(url: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        parse(url)


def test_errors_and_repr_never_show_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse("redis://u:hunter2@h?password=hunter3&oops=1")
    assert "hunter" not in str(caught.value) and "u:***@h" in str(caught.value)
    target = parse("redis://u:hunter2@h")
    assert "hunter2" not in repr(target)
    assert target.display_url == "redis://u:***@h"


def test_the_options_for_each_client() -> None:
    target = parse("redis://u:pw@h:6380/2?socket_timeout=4&client_name=web")
    options = target.resp_options(extra_read_timeout_s=2.0)
    assert options == {
        "host": "h", "port": 6380, "path": None, "ssl": None, "username": "u",
        "password": "pw", "db": 2, "connect_timeout_s": 3.0, "read_timeout_s": 6.0,
        "client_name": "web",
    }
    RespConnection(**options)  # every key is a constructor keyword
    kwargs = target.redis_py_kwargs()
    assert kwargs == {
        "host": "h", "port": 6380, "db": 2, "username": "u", "password": "pw",
        "socket_connect_timeout": 3.0, "socket_timeout": 4.0, "client_name": "web",
    }
    aioredis.Redis(**kwargs)  # and every key here is one of redis-py's
    unix = parse("unix:///tmp/r.sock").redis_py_kwargs()
    assert unix["unix_socket_path"] == "/tmp/r.sock" and "host" not in unix


# -- redaction -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:secret@host", "redis://:***@host"),
        ("redis://user:secret@[::1]:6379/0", "redis://user:***@[::1]:6379/0"),
        ("redis://host:6379/0?password=secret", "redis://host:6379/0?password=***"),
        ("redis://h?db=1&password=secret&client_name=x", "redis://h?db=1&password=***&client_name=x"),
        ("redis://h?pass%77ord=secret", "redis://h?pass%77ord=***"),
        ("rediss://u:a@b/c@host/0", "rediss://u:***@host/0"),  # "@" and "/" not encoded
        ("redis://:sec?ret@host", "redis://:***@host"),  # nor "?"
        ("redis://user@host/0", "redis://user@host/0"),
        ("redis://host:6379/0?client_name=a@b", "redis://host:6379/0?client_name=a@b"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("memory://", "memory://"),
        ("", ""),
        ("::::@@@???", ":***@???"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "secret" not in redact_url(url)


def test_redact_url_never_raises() -> None:
    assert redact_url(None) == "<unprintable URL>"  # type: ignore[arg-type]
    for odd in ("redis://[::1", "redis://h:99999999", "redis://%zz@h", "\udc80://a:pw@c"):
        assert isinstance(redact_url(odd), str)
    assert redact_url("\udc80://a:pw@c") == "\udc80://a:***@c"


# -- TLS -----------------------------------------------------------------------------------
def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


class Certificates:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost, and a client's."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca, ca_key = directory / "ca.pem", directory / "ca-key.pem"
        curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        _openssl("req", "-x509", *curve, "-keyout", ca_key, "-out", self.ca, "-days", "2",
                 "-subj", "/CN=aioqueue test CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self.server_cert, self.server_key = self._issue("server", curve, ca_key,
                                                        "IP:127.0.0.1,DNS:localhost")
        self.client_cert, self.client_key = self._issue("client", curve, ca_key, "DNS:client")

    def _issue(self, name: str, curve: tuple[str, ...], ca_key: Path,
               san: str) -> tuple[Path, Path]:
        key, csr, cert = (self.dir / f"{name}{ext}" for ext in ("-key.pem", ".csr", ".pem"))
        extensions = self.dir / f"{name}.ext"
        extensions.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                              "extendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("req", *curve, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", ca_key,
                 "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", extensions)
        return cert, key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    if shutil.which("openssl") is None:
        pytest.fail("the TLS tests need the openssl command (apt-get install openssl)")
    return Certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_port(certificates: Certificates) -> Iterator[int]:
    """A redis-server that speaks only TLS and wants a client certificate."""
    port = free_port()
    args = ("--port", "0", "--tls-port", str(port), "--tls-cert-file", certificates.server_cert,
            "--tls-key-file", certificates.server_key, "--tls-ca-cert-file", certificates.ca,
            "--tls-auth-clients", "yes")
    server = RedisServer(extra_args=tuple(map(str, args)))
    server.port = port
    binary, server_dir = server.binary, server.dir
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--dir", str(server_dir), "--save", "",
         "--appendonly", "no", *server.extra_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        context = ssl.create_default_context(cafile=str(certificates.ca))
        context.load_cert_chain(certificates.client_cert, certificates.client_key)
        deadline = time.monotonic() + 10
        while True:  # ready when it answers PING over TLS
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, \
                        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(b"PING\r\n")
                    if tls.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("redis-server --tls-port did not start (built without TLS?)")
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(server_dir, ignore_errors=True)


def test_rediss_options_build_one_context(certificates: Certificates) -> None:
    url = (f"rediss://h?ssl_cert_reqs=none&ssl_ca_certs={certificates.ca}"
           f"&ssl_certfile={certificates.client_cert}&ssl_keyfile={certificates.client_key}")
    target = parse(url)
    assert target.ssl is not None
    assert target.ssl.verify_mode == ssl.CERT_NONE
    assert target.ssl.check_hostname is False  # no certificate check, so no name check
    subjects = [str(ca["subject"]) for ca in target.ssl.get_ca_certs()]
    assert any("aioqueue test CA" in subject for subject in subjects)
    assert target.redis_py_kwargs()["ssl_cert_reqs"] == "none"
    strict = parse("rediss://h")
    assert strict.ssl is not None and strict.ssl.verify_mode == ssl.CERT_REQUIRED
    assert strict.ssl.check_hostname is True


async def _ping_both(target: RedisTarget) -> None:
    conn = RespConnection(**target.resp_options())
    client = aioredis.Redis(**target.redis_py_kwargs())
    try:
        with anyio.fail_after(10):
            assert await conn.execute("PING") == b"PONG"
            assert await client.ping() is True
    finally:
        await conn.close()
        await client.aclose()


async def test_tls_round_trip_verifying_the_server(
    certificates: Certificates, tls_port: int
) -> None:
    client = f"ssl_certfile={certificates.client_cert}&ssl_keyfile={certificates.client_key}"
    for host in ("127.0.0.1", "localhost"):  # the name is checked against the certificate
        await _ping_both(parse(f"rediss://{host}:{tls_port}/0?ssl_ca_certs={certificates.ca}"
                               f"&{client}&client_name=tls-test"))


async def test_tls_round_trip_without_verifying(
    certificates: Certificates, tls_port: int
) -> None:
    await _ping_both(parse(f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=none"
                           f"&ssl_certfile={certificates.client_cert}"
                           f"&ssl_keyfile={certificates.client_key}"))


async def test_tls_refuses_an_unknown_server_or_a_missing_client_cert(
    certificates: Certificates, tls_port: int
) -> None:
    client = f"ssl_certfile={certificates.client_cert}&ssl_keyfile={certificates.client_key}"
    unknown_ca = parse(f"rediss://127.0.0.1:{tls_port}/0?{client}")  # system CAs only
    with anyio.fail_after(10), pytest.raises(ssl.SSLCertVerificationError):
        conn = RespConnection(**unknown_ca.resp_options())
        try:
            await conn.execute("PING")
        finally:
            await conn.close()
    no_client_cert = parse(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certificates.ca}")
    conn = RespConnection(**no_client_cert.resp_options())
    try:
        with anyio.fail_after(10), pytest.raises(OSError):  # ConnectionError or SSLError
            await conn.execute("PING")
    finally:
        await conn.close()


def test_redis_py_pool_options_are_accepted_and_ignored() -> None:
    from aioqueue.broker._url import parse_redis_url

    target = parse_redis_url(
        "redis://h:6379/2?max_connections=50&health_check_interval=30&retry_on_timeout=true",
        connect_timeout_s=1.0, read_timeout_s=2.0)
    assert (target.host, target.db) == ("h", 2)
    assert "max_connections" not in target.redis_py_kwargs()
