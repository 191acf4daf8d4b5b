"""Store URLs: what they name, and how to show them without a password."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit


def redact(url: str) -> str:
    """The URL with its password replaced, safe for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite://`` URL, by SQLAlchemy's convention:
    ``sqlite:///relative.db`` and ``sqlite:////abs/path.db``."""
    return unquote(url.split("://", 1)[1])[1:]
