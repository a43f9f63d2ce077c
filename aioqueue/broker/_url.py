"""Redis URLs, read once for both clients (the hot-path connection and redis-py).

Before this module the two clients read the same URL differently: redis-py honoured TLS and
timeout options that the hot path dropped, so a ``rediss://...?ssl_cert_reqs=none`` URL
worked for ``ping`` and failed for ``delay``. Now :func:`parse_redis_url` is the one reader:
it gives a :class:`RedisTarget`, which hands each client its own spelling of the same
settings. Query options are the ones redis-py reads, with the same meaning; anything else is
a :class:`~aioqueue.errors.ConfigurationError` rather than silently ignored.

:func:`redact_url` is the one way a URL is printed: passwords (in the userinfo or in a
``?password=`` option) become ``***``.

``sentinel://[user:password@]host1[:26379],host2,.../MASTER_NAME[/DB]?sentinel_password=...``
names Redis Sentinel's sentinels instead of one server; the spelling is described in
``_sentinel.py``, and :attr:`RedisTarget.sentinel` carries it to both clients.

``redis+cluster://[user:password@]host1:port,host2:port,.../`` (and ``rediss+cluster://``)
names start-up nodes of a Redis Cluster; see ``_cluster.py``, carried by
:attr:`RedisTarget.cluster`.
"""

from __future__ import annotations

import math
import re
import ssl as ssl_module
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qsl, unquote, unquote_plus, urlsplit

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ._cluster import Cluster
    from ._sentinel import Sentinels

__all__ = ("RedisTarget", "is_cluster_url", "parse_redis_url", "redact_url")

_CERT_REQS = {
    "none": ssl_module.CERT_NONE,
    "optional": ssl_module.CERT_OPTIONAL,
    "required": ssl_module.CERT_REQUIRED,
}
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
_SSL_OPTIONS = frozenset(
    {"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}
)
#: redis-py pool options that have no meaning for aioqueue's own connections (one shared
#: auto-pipelining socket, its own retries and keepalive): accepted, so a URL shared with a
#: redis-py application keeps working, and ignored.
_IGNORED = frozenset(
    {"max_connections", "health_check_interval", "retry_on_timeout", "socket_keepalive",
     "single_connection_client"}
)
#: Schemes whose authority is a comma-separated list of hosts.
_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_LISTS = ("sentinel", *_CLUSTER_SCHEMES)
#: Options of sentinel:// URLs only (see ``_sentinel.py``).
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password", "master_name"})
_OPTIONS = frozenset(
    {"db", "password", "username", "socket_timeout", "socket_connect_timeout", "client_name"}
    | _SSL_OPTIONS | _IGNORED | _SENTINEL_OPTIONS
)


@dataclass(frozen=True)
class RedisTarget:
    """One Redis server and how to talk to it, as parsed from a URL.

    ``ssl`` is the TLS context for the hot-path connection, built once from the ``ssl_*``
    options (``None`` for ``redis://`` and ``unix://``); the options themselves are kept
    for redis-py, which builds its own context from them. The password never shows in the
    repr; :attr:`display_url` is the URL with it masked.

    ``sentinel`` is set for a ``sentinel://`` URL: the master is then found through the
    sentinels at each connect, and ``host``/``port`` are not used; ``username``,
    ``password`` and ``db`` are the master's.

    ``cluster`` is set for a ``redis+cluster://`` URL: the master owning the app's slot is
    found at each connect (the broker sets the slot from its key prefix), and
    ``host``/``port`` are not used.
    """

    display_url: str
    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: ssl_module.SSLContext | None = field(default=None, compare=False)
    ssl_cert_reqs: str = "required"
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    connect_timeout_s: float = 5.0
    read_timeout_s: float | None = 30.0
    client_name: str | None = None
    sentinel: Sentinels | None = None
    cluster: Cluster | None = None

    def resp_options(self, *, extra_read_timeout_s: float = 0.0) -> dict[str, Any]:
        """Keyword arguments for :class:`~aioqueue.broker._resp.RespConnection`.

        ``extra_read_timeout_s`` is added to the read timeout: a connection that runs
        blocking commands passes their longest block, so a quiet server that is merely
        blocking is not taken for a stalled one.
        """
        read_timeout_s = self.read_timeout_s
        if read_timeout_s is not None:
            read_timeout_s += extra_read_timeout_s
        if self.sentinel is not None:
            # Every (re)connect asks the sentinels, and refuses a node that is no master.
            return {**self._resp_options(read_timeout_s),
                    "locate": self.sentinel.master_address, "require_master": True}
        if self.cluster is not None:
            # Every (re)connect asks where the slot is; MOVED & co. close the socket.
            return {**self._resp_options(read_timeout_s), **self.cluster.resp_options()}
        return self._resp_options(read_timeout_s)

    def _resp_options(self, read_timeout_s: float | None) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "path": self.path,
            "ssl": self.ssl,
            "username": self.username,
            "password": self.password,
            "db": self.db,
            "connect_timeout_s": self.connect_timeout_s,
            "read_timeout_s": read_timeout_s,
            "client_name": self.client_name,
        }

    def redis_py_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.asyncio.Redis(...)`` with the same meaning.

        For a ``sentinel://`` URL: the master's connection keywords (no host or port), for
        ``Sentinel(sentinel.addresses, sentinel_kwargs=..., **these).master_for(name)``.
        For a ``redis+cluster://`` URL: no host or port either (the caller adds the slot's
        master).
        """
        kwargs: dict[str, Any] = {
            "db": self.db,
            "username": self.username,
            "password": self.password,
            "socket_connect_timeout": self.connect_timeout_s,
            "socket_timeout": self.read_timeout_s,
            "client_name": self.client_name,
        }
        if self.path is not None:
            kwargs["unix_socket_path"] = self.path
        elif self.sentinel is None and self.cluster is None:
            kwargs.update(host=self.host, port=self.port)
        if self.ssl is not None:
            kwargs.update(
                ssl=True,
                ssl_cert_reqs=self.ssl_cert_reqs,
                ssl_ca_certs=self.ssl_ca_certs,
                ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
                ssl_check_hostname=self.ssl.check_hostname,
            )
        return kwargs


def is_cluster_url(url: str) -> bool:
    """True for a ``redis+cluster://`` or ``rediss+cluster://`` URL (no other check)."""
    return url.partition("://")[0].lower() in _CLUSTER_SCHEMES


def parse_redis_url(
    url: str, *, connect_timeout_s: float, read_timeout_s: float | None
) -> RedisTarget:
    """Read a ``redis://``, ``rediss://``, ``unix://``, ``sentinel://`` or
    ``redis+cluster://`` (``rediss+cluster://``) URL.

    ``connect_timeout_s`` and ``read_timeout_s`` are the defaults; the URL's
    ``socket_connect_timeout`` and ``socket_timeout`` override them.

    Raises :class:`~aioqueue.errors.ConfigurationError` naming the URL (password masked)
    and the option at fault: unknown scheme or option, a malformed value, TLS options on a
    plain connection, or a certificate file that cannot be loaded.
    """
    display_url = redact_url(url)

    def bad(problem: str) -> ConfigurationError:
        return ConfigurationError(f"Redis URL {display_url!r}: {problem}")

    try:
        parts = urlsplit(url)
        # sentinel:// and redis+cluster:// name a list of hosts
        port = None if parts.scheme.lower() in _LISTS else parts.port
    except ValueError as exc:
        raise bad(f"malformed ({exc})") from None
    scheme = parts.scheme.lower()
    cluster_scheme = scheme in _CLUSTER_SCHEMES
    if scheme not in ("redis", "rediss", "unix", "sentinel", *_CLUSTER_SCHEMES):
        raise bad("the scheme must be redis://, rediss://, unix://, sentinel:// or "
                  "redis+cluster:// (rediss+cluster://)")

    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _OPTIONS:
            known = ", ".join(sorted(_OPTIONS))
            raise bad(f"unknown option {name!r} (known: {known})")
        if name in options:
            raise bad(f"option {name!r} is given twice")
        if value and name not in _IGNORED:  # as in redis-py, empty means "not given"
            options[name] = value
    if scheme == "sentinel" and (misplaced := sorted(options.keys() & _SSL_OPTIONS)):
        raise bad(f"option {misplaced[0]!r}: TLS is not supported with sentinel:// yet")
    tls = scheme in ("rediss", "rediss+cluster")
    if not tls and (misplaced := sorted(options.keys() & _SSL_OPTIONS)):
        raise bad(f"option {misplaced[0]!r} needs a rediss:// (or rediss+cluster://) URL")
    if scheme != "sentinel" and (misplaced := sorted(options.keys() & _SENTINEL_OPTIONS)):
        raise bad(f"option {misplaced[0]!r} needs a sentinel:// URL")

    def seconds(name: str) -> float | None:
        if name not in options:
            return None
        try:
            value = float(options[name])
        except ValueError:
            value = math.nan
        if not (value > 0 and math.isfinite(value)):
            raise bad(f"option {name!r} must be a positive number of seconds")
        return value

    db_text = options.get("db")
    if scheme == "sentinel":
        addresses, master_name, path_db = _sentinel_parts(parts, options, bad)
        db_text = path_db if db_text is None else db_text
    elif db_text is None and scheme != "unix":
        db_text = parts.path.strip("/") or "0"  # redis://host:6379/2, as redis-py reads it
    if db_text is not None and not (db_text.isascii() and db_text.isdigit()):
        raise bad("option 'db' (or the path) must be a database number")
    if cluster_scheme and int(db_text or 0) != 0:
        raise bad(f"database {int(db_text or 0)}: Redis Cluster has only database 0 "
                  "(leave the path empty or write /0)")
    client_name = options.get("client_name")
    if client_name is not None and not all("!" <= char <= "~" for char in client_name):
        # Redis refuses these in CLIENT SETNAME: better now than at every connect.
        raise bad("option 'client_name' may hold no spaces or special characters")

    connect_s, read_s = seconds("socket_connect_timeout"), seconds("socket_timeout")
    path: str | None = None
    if scheme == "unix":
        path = unquote(parts.path)
        if not path:
            raise bad("a unix:// URL needs a socket path")
    ssl_context: ssl_module.SSLContext | None = None
    ssl_settings: dict[str, Any] = {}
    if tls:
        ssl_context, ssl_settings = _ssl_context(options, bad)
    sentinel: Sentinels | None = None
    if scheme == "sentinel":
        from ._sentinel import Sentinels  # here: plain URLs need no RESP code to be parsed

        # One question to a sentinel: its answer is quick, or that sentinel is no help.
        ask_s = connect_timeout_s if connect_s is None else connect_s
        sentinel = Sentinels(
            addresses, master_name, username=options.get("sentinel_username"),
            password=options.get("sentinel_password"), connect_timeout_s=ask_s,
            read_timeout_s=ask_s,
        )
    cluster: Cluster | None = None
    if cluster_scheme:
        from ._cluster import Cluster  # here: plain URLs need no RESP code to be parsed

        # One question to a node (CLUSTER SLOTS): quick, or that node is no help.
        ask_s = connect_timeout_s if connect_s is None else connect_s
        cluster = Cluster(
            _cluster_nodes(parts, bad),
            username=unquote(parts.username or "") or options.get("username"),
            password=unquote(parts.password or "") or options.get("password"),
            ssl=ssl_context, connect_timeout_s=ask_s, read_timeout_s=ask_s,
        )

    return RedisTarget(
        display_url=display_url,
        host="" if sentinel or cluster else unquote(parts.hostname or "") or "localhost",
        port=port or 6379,
        path=path,
        db=int(db_text or 0),
        # The userinfo wins over ?username= / ?password=, as in redis-py.
        username=unquote(parts.username or "") or options.get("username"),
        password=unquote(parts.password or "") or options.get("password"),
        ssl=ssl_context,
        connect_timeout_s=connect_timeout_s if connect_s is None else connect_s,
        read_timeout_s=read_timeout_s if read_s is None else read_s,
        client_name=client_name,
        sentinel=sentinel,
        cluster=cluster,
        **ssl_settings,
    )


def _cluster_nodes(
    parts: SplitResult, bad: Callable[[str], ConfigurationError]
) -> tuple[tuple[str, int], ...]:
    """The start-up nodes of a ``redis+cluster://`` URL (the spelling is in ``_cluster.py``)."""
    from ._cluster import DEFAULT_CLUSTER_PORT

    spelling = "redis+cluster://[user:password@]host1:port,host2:port,.../"
    return _host_list(parts.netloc.rpartition("@")[2], DEFAULT_CLUSTER_PORT, "node", spelling,
                      bad)


def _host_list(netloc: str, default_port: int, what: str, spelling: str,
               bad: Callable[[str], ConfigurationError]) -> tuple[tuple[str, int], ...]:
    """``host1[:port],host2[:port],...`` (IPv6 in brackets) as (host, port) pairs: the
    start-up nodes of a cluster, or the sentinels."""
    addresses: list[tuple[str, int]] = []
    for item in netloc.split(","):
        try:
            one = urlsplit(f"//{item}")
            host, port = unquote(one.hostname or ""), one.port
        except ValueError as exc:
            raise bad(f"{what} {item!r} is malformed ({exc})") from None
        if not host:
            raise bad(f"a {what} without a host in the list: {spelling}")
        addresses.append((host, port or default_port))
    return tuple(addresses)


def _sentinel_parts(
    parts: SplitResult, options: dict[str, str], bad: Callable[[str], ConfigurationError]
) -> tuple[tuple[tuple[str, int], ...], str, str]:
    """The sentinels' addresses, the master's name and the database (from the path, "0"
    when it has none) of a ``sentinel://`` URL (the spelling is in ``_sentinel.py``)."""
    from ._sentinel import DEFAULT_SENTINEL_PORT

    spelling = "sentinel://[user:password@]host1:26379,host2:26379/MASTER_NAME[/DB]"
    netloc = parts.netloc.rpartition("@")[2]
    if ";" in netloc:
        raise bad(f"list every sentinel in one URL: {spelling} (Celery's spelling, "
                  "'sentinel://h1;sentinel://h2' with master_name in its transport options, "
                  "is not read)")
    addresses = _host_list(netloc, DEFAULT_SENTINEL_PORT, "sentinel", spelling, bad)
    path = parts.path.strip("/")
    segments = [unquote(segment) for segment in path.split("/")] if path else []
    master_name = options.get("master_name")
    if master_name is None:
        if not segments or not segments[0]:
            raise bad(f"the master's name is missing: {spelling}")
        master_name = segments.pop(0)
    if len(segments) > 1:
        raise bad(f"the path has too many parts: {spelling}")
    return tuple(addresses), master_name, (segments[0] if segments else None) or "0"


def _ssl_context(
    options: dict[str, str], bad: Callable[[str], ConfigurationError]
) -> tuple[ssl_module.SSLContext, dict[str, Any]]:
    """The TLS context for ``options``, built the way redis-py builds its own."""
    cert_reqs = options.get("ssl_cert_reqs", "required").lower()
    if cert_reqs not in _CERT_REQS:
        raise bad("option 'ssl_cert_reqs' must be none, optional or required")
    check_text = options.get("ssl_check_hostname", "true").lower()
    if check_text not in _TRUE | _FALSE:
        raise bad("option 'ssl_check_hostname' must be true or false")
    ca_certs = options.get("ssl_ca_certs")
    certfile, keyfile = options.get("ssl_certfile"), options.get("ssl_keyfile")
    if keyfile is not None and certfile is None:
        raise bad("option 'ssl_keyfile' needs 'ssl_certfile' too")

    context = ssl_module.create_default_context()
    # Not checking the certificate means not checking the name in it either (and Python
    # refuses CERT_NONE while check_hostname is on).
    context.check_hostname = cert_reqs != "none" and check_text in _TRUE
    context.verify_mode = _CERT_REQS[cert_reqs]
    if ca_certs is not None:
        try:
            context.load_verify_locations(cafile=ca_certs)
        except (OSError, ssl_module.SSLError) as exc:
            raise bad(f"option 'ssl_ca_certs': cannot load {ca_certs!r} ({exc})") from None
    if certfile is not None:
        try:
            context.load_cert_chain(certfile, keyfile)
        except (OSError, ssl_module.SSLError) as exc:
            raise bad(f"option 'ssl_certfile': cannot load {certfile!r} ({exc})") from None
    settings: dict[str, Any] = {
        "ssl_cert_reqs": cert_reqs,
        "ssl_ca_certs": ca_certs,
        "ssl_certfile": certfile,
        "ssl_keyfile": keyfile,
        "ssl_check_hostname": context.check_hostname,
    }
    return context, settings


#: ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``: an authority with no userinfo in it;
#: or a comma-separated list of them (``sentinel://``).
_ONE_HOST = r"(?:\[[^\]]*\]|[^:@\[\],]*)(?::\d*)?"
_HOST_PORT = re.compile(rf"{_ONE_HOST}(?:,{_ONE_HOST})*")


def redact_url(url: str) -> str:
    """``url`` with every password replaced by ``***``, for logs and error messages.

    Masks the userinfo password (``redis://user:***@host``) and any query option whose
    name contains "password"; keeps everything else as written (IPv6 brackets, port,
    path). Never raises: it runs on the way to reporting some other error.
    """
    try:
        scheme, sep, rest = url.partition("://")
        if not sep:
            scheme, rest = "", url
        # The userinfo ends at the last "@" before the query, so a password with a "/" or
        # "@" its author forgot to percent-encode is still masked whole; if what precedes
        # the path is no host[:port], a "?" or "#" in the password may have cut it short.
        at = rest.split("?", 1)[0].rfind("@")
        if at < 0 and not _HOST_PORT.fullmatch(re.split(r"[/?#]", rest, maxsplit=1)[0]):
            at = rest.rfind("@")
        if at >= 0 and ":" in rest[:at]:
            rest = f"{rest[:at].split(':', 1)[0]}:***{rest[at:]}"
        head, question, query = rest.partition("?")
        if question:
            query, hash_sign, fragment = query.partition("#")
            pieces = []
            for piece in query.split("&"):
                name, equals, _ = piece.partition("=")
                if equals and "password" in unquote_plus(name).lower():
                    piece = f"{name}=***"
                pieces.append(piece)
            rest = f"{head}?{'&'.join(pieces)}{hash_sign}{fragment}"
        return f"{scheme}{sep}{rest}"
    except Exception:  # not even a str: say nothing rather than risk a leak
        return "<unprintable URL>"
