"""Credentials out of what is printed or logged: `redact_url` for Redis (and other) URLs.

Kept free of heavy imports so that every command (the collector, the engine's Redis source,
`halflife profile`) can use it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_QUERY_PASSWORD = re.compile(r"(^|[&;])(password=)[^&;]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL without its password, for logs and messages.

    `redis://user:secret@host:6379/0` -> `redis://user:***@host:6379/0`; a user-info without a colon
    (`redis://secret@host`, which redis-py takes for a user name but is often meant as a password)
    becomes `***@`; a `password=` query parameter (redis-py reads it too) becomes `password=***`.
    A user-info holding an unescaped `/`, `?` or `#` (`redis://:pa/ss@host`: the parser takes the part
    after the `/` for the path) is hidden up to its last `@`. A URL that cannot be parsed is not shown.
    """
    try:
        parts = urlsplit(url)
        scheme_end = url.find("://")
        if "@" not in parts.netloc and "@" in url and scheme_end >= 0:
            return url[:scheme_end + 3] + "***@" + url.rpartition("@")[2]
        netloc = parts.netloc
        userinfo, at, hostport = netloc.rpartition("@")
        if at:
            user, colon, _ = userinfo.partition(":")
            netloc = f"{user}:***@{hostport}" if colon else f"***@{hostport}"
        query = _QUERY_PASSWORD.sub(r"\1\2***", parts.query)
        out = url
        if netloc != parts.netloc:
            out = out.replace("//" + parts.netloc, "//" + netloc, 1)
        if query != parts.query:
            head, sep, tail = out.partition("?")
            out = head + sep + tail.replace(parts.query, query, 1)
        return out
    except ValueError:
        return "(unparseable URL)"
