"""Passwords out of what Berth stores, prints and logs.

A database URL may carry a password inline (``postgresql://user:pw@host/db``, or
``?password=pw``). Berth never stores one: a URL is kept with the password removed
(:func:`strip_password`), shown with it masked (:func:`hide_password`), and any message built from
a driver's error has the password replaced (:func:`scrub`), since drivers and URL parsers echo the
string they were given. A password written as an environment reference (``${PGPASSWORD}`` or
``$PGPASSWORD``) is not a secret, only its value is: it stays in a stored URL and is filled in
when the URL is opened.

The string surgery follows SQLAlchemy's own URL grammar (``sqlalchemy.engine.url._parse_url``)
instead of re-rendering the parsed URL, which would percent-encode an ``${VAR}`` and change the
rest of the URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus

MASK = "***"

_USERINFO = re.compile(r"^(?P<head>[\w+]+://[^:/]*):(?P<password>[^@]*)@")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<password>[^&]*)", re.IGNORECASE)
_WEB_USERINFO = re.compile(r"^(?P<scheme>(?:https?|git\+https?)://)[^/@]*@", re.IGNORECASE)
_REFERENCE = re.compile(r"\$\{\w+\}|\$\w+")


def is_reference(value: str) -> bool:
    """``${VAR}`` or ``$VAR``: an environment variable named, not a secret written."""
    return _REFERENCE.fullmatch(value) is not None


def passwords(url: str) -> list[str]:
    """The passwords written in ``url`` (inline and in its query), as written and decoded;
    environment references are not passwords."""
    found: list[str] = []
    inline = _USERINFO.match(url)
    candidates = [inline.group("password")] if inline else []
    candidates += [m.group("password") for m in _QUERY_PASSWORD.finditer(url)]
    for raw in candidates:
        if not raw or is_reference(raw):
            continue
        found += [raw, unquote(raw), unquote_plus(raw)]
    return list(dict.fromkeys(found))


def strip_password(url: str) -> str:
    """``url`` as it may be stored: an inline password removed (``user:pw@`` becomes
    ``user@``, ``?password=pw`` goes), an ``${VAR}`` reference kept."""
    url = _USERINFO.sub(lambda m: _keep_reference(m, m.group("head") + "@"), url, count=1)
    url = _QUERY_PASSWORD.sub(lambda m: _keep_reference(m, m.group("head")[0]), url)
    url = url.replace("?&", "?").replace("&&", "&")
    return url[:-1] if url.endswith(("?", "&")) else url


def strip_credentials(url: str) -> str:
    """A web URL (a git remote) without its user part: ``https://TOKEN@host`` carries a token
    as the user name."""
    return _WEB_USERINFO.sub(r"\g<scheme>", url, count=1)


def hide_password(url: str) -> str:
    """``url`` as it may be shown: an inline password replaced by ``***``."""
    url = _USERINFO.sub(lambda m: _keep_reference(m, m.group("head") + f":{MASK}@"), url, count=1)
    return _QUERY_PASSWORD.sub(lambda m: _keep_reference(m, m.group("head") + MASK), url)


def scrub(text: str, urls: Iterable[str]) -> str:
    """``text`` (an error message, a log line) with every password of ``urls`` masked."""
    secrets = sorted({s for url in urls for s in passwords(url)}, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _keep_reference(match: re.Match[str], replacement: str) -> str:
    return match.group(0) if is_reference(match.group("password")) else replacement
