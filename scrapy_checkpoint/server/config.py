"""The status server's settings: where it listens, its bearer token and its timers."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
from dataclasses import dataclass

from ..errors import ConfigError

logger = logging.getLogger("scrapy_checkpoint.server")

#: The environment variable that may hold the bearer token (``--token-file`` wins over it).
TOKEN_ENV = "SCRAPY_CHECKPOINT_TOKEN"
#: The shortest token accepted, in characters.
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class ServerConfig:
    """What ``scrapy-checkpoint serve`` was given.

    ``token`` None: no token, so actions are refused and the server may only listen on a
    loopback address. ``stuck_after``: seconds without a commit after which a ``running``
    stage with a live owner is called stuck. ``sample_interval``: seconds between two
    samples of every stage's progress (the history and the page's chart); ``history_size``
    samples are kept per stage. ``max_auth_failures`` failed attempts per client within
    ``auth_window`` seconds, then 429 until the window has passed.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    stuck_after: float = 300.0
    sample_interval: float = 5.0
    history_size: int = 720
    max_auth_failures: int = 10
    auth_window: float = 60.0

    def __repr__(self) -> str:  # never show the token
        return (f"ServerConfig(host={self.host!r}, port={self.port}, "
                f"token={'set' if self.token else None})")

    @property
    def loopback(self) -> bool:
        """True if the server listens on loopback addresses only (see :func:`is_loopback`)."""
        return is_loopback(self.host)

    def check_bind(self) -> None:
        """Raise :class:`ConfigError` (one paragraph saying what to do) for a server that
        would listen beyond loopback without a token."""
        if self.token is None and not self.loopback:
            raise ConfigError(
                f"Refusing to serve on {self.host} without a token: on an address other than "
                f"loopback, anyone who can reach this machine could read every stage. Put a "
                f"token of at least {MIN_TOKEN_LENGTH} characters in a file readable only by "
                f"you and pass --token-file FILE, or set {TOKEN_ENV}; clients then send "
                f"'Authorization: Bearer <token>'. Or listen on 127.0.0.1 (the default) and "
                f"reach the server through an SSH tunnel or a reverse proxy.")


def is_loopback(host: str) -> bool:
    """True if every address ``host`` names is a loopback address (127.0.0.0/8, ::1);
    an empty host, ``0.0.0.0`` or ``::`` (every interface) is not."""
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def load_token(token_file: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The bearer token: the stripped content of ``token_file`` if given, else the
    :data:`TOKEN_ENV` variable, else None. Never taken from the command line itself.

    Raises :class:`ConfigError` when the file cannot be read, or the token is shorter than
    :data:`MIN_TOKEN_LENGTH` or holds whitespace. Logs a warning when the file is readable
    by other users. The token itself is never logged nor put in a message.
    """
    env = os.environ if environ is None else environ
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
            mode = os.stat(token_file).st_mode
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Cannot read the token file {token_file}: "
                              f"{getattr(exc, 'strerror', None) or exc}.") from None
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            logger.warning("The token file %s is readable by other users: chmod 600 it.",
                           token_file)
        source = f"the token file {token_file}"
    elif env.get(TOKEN_ENV):
        token, source = env[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    else:
        return None
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise ConfigError(f"The token in {source} must be at least {MIN_TOKEN_LENGTH} characters "
                          f"without spaces (e.g. the output of 'openssl rand -hex 32').")
    return token


__all__ = ["MIN_TOKEN_LENGTH", "TOKEN_ENV", "ServerConfig", "is_loopback", "load_token"]
