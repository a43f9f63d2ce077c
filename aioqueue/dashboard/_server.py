"""``serve``: the dashboard on its own uvicorn server, until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import sys
from collections.abc import Generator
from typing import TYPE_CHECKING

import uvicorn

from ..errors import ConfigurationError
from ._app import Dashboard, create_app

if TYPE_CHECKING:
    from ..app import AioQueue

log = logging.getLogger("aioqueue.dashboard")

#: How long open pages get to go away when the server stops, before they are cut.
SHUTDOWN_GRACE_S = 3


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, *, username: str | None, password: str | None,
                   token: str | None) -> None:
    """Refuse to serve the dashboard beyond this machine without authentication."""
    if is_loopback(host):
        return
    if (username is not None and password is not None) or token is not None:
        return
    raise ConfigurationError(
        f"refusing to serve the dashboard on {host}, which is not a loopback address, "
        f"without authentication: anyone who can reach it could read task arguments and "
        f"results, retry, revoke and purge. Give basic-auth credentials (a username and "
        f"a password) or a token, or serve on 127.0.0.1 behind a proxy of your own")


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket (bound here, so a taken port is an exception, not an exit)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigurationError(f"dashboard: cannot resolve host {host!r}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"dashboard: cannot listen on {host}:{port}: "
                                 f"{exc.strerror}") from None
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # A library does not take the process's signals: whoever runs serve() owns them
        # and stops it by cancelling it.
        yield


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if host in ("0.0.0.0", "::", ""):
        shown = socket.gethostname()
    return f"http://{shown}:{port}/"


async def serve(aq: AioQueue, *, host: str = "127.0.0.1", port: int = 5555,
                read_only: bool = False, username: str | None = None,
                password: str | None = None, token: str | None = None) -> None:
    """Serve the dashboard of ``aq`` on ``http://host:port/`` until cancelled.

    Refuses (``ConfigurationError``) a host that is not a loopback address unless basic-auth
    credentials or a token are given. A port already taken raises ``OSError``. Cancelling
    stops the server gracefully: open pages are closed, then the listening socket.
    """
    check_exposure(host, username=username, password=password, token=token)
    app = create_app(aq, read_only=read_only, username=username, password=password,
                     token=token)
    dash: Dashboard = app.state.aioqueue_dashboard
    sock = _bind(host, port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
                            proxy_headers=False, server_header=False)
    server = _Server(config)
    url = url_of(host, port)
    mode = ["read-only" if read_only else "actions enabled"]
    if username is not None:
        mode.append("basic auth")
    if token is not None:
        mode.append("token: open the page once with ?token=<token>")
    print(f"aioqueue dashboard: {url} ({', '.join(mode)})", file=sys.stderr, flush=True)
    log.info("dashboard of %s serving on %s", aq.main, url)
    running = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        await dash.hub.close()  # ends the event streams, which would hold shutdown
        server.should_exit = True
        done, _ = await asyncio.wait([running], timeout=SHUTDOWN_GRACE_S + 2)
        if not done:
            server.force_exit = True
            await asyncio.wait([running], timeout=2)
        raise
    finally:
        sock.close()
