"""Service URLs: several nodes in one (a RabbitMQ cluster, a PostgreSQL primary and standby),
the heartbeat an AMQP URL asks for, and what a URL must never show (redaction, its secrets).

`AMQP_URL` may hold several complete URLs separated by commas; the robust connection
(`worker.messaging.failover`) tries them in turn, at start and on every reconnect. Only a comma
followed by `scheme://` separates two URLs, so a comma inside a password is kept; to be safe,
write it `%2C`.

`DATABASE_URL` may name several hosts the way libpq does,
`postgresql+asyncpg://user@h1:5432,h2:5433/db?target_session_attrs=read-write`; SQLAlchemy's
URL parser does not read that form, so it is rewritten into the one SQLAlchemy 2's asyncpg
dialect documents (`...@/db?host=h1:5432&host=h2:5433&...`), which asyncpg then tries in order,
keeping the first host that matches `target_session_attrs`. Both forms are accepted.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import parse_qs, parse_qsl, unquote, urlsplit

from pydantic import PostgresDsn
from yarl import URL

MAX_ADDRESSES: Final = 16  # a bound on what one setting may expand into

# A comma followed by a URL scheme starts the next address (as does one before another comma or
# the end, which leaves an empty entry to refuse); any other comma belongs to the URL.
_NEXT_ADDRESS: Final = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://|,|\s*$)")
_AMQP_SCHEMES: Final = ("amqp://", "amqps://")


class AddressError(ValueError):
    """A list of service addresses that cannot be read; the message never holds a password."""


def split_amqp_urls(value: str) -> list[str]:
    """The broker URLs in `value`, in order: one, or several separated by commas."""
    parts = [part.strip() for part in _NEXT_ADDRESS.split(value.strip())]
    if not parts or any(not part for part in parts):
        raise AddressError("AMQP_URL is empty, or has an empty entry between commas")
    if len(parts) > MAX_ADDRESSES:
        raise AddressError(f"AMQP_URL names {len(parts)} brokers; at most {MAX_ADDRESSES}")
    for position, part in enumerate(parts, start=1):
        if not part.startswith(_AMQP_SCHEMES):
            raise AddressError(
                f"AMQP_URL entry {position} of {len(parts)} does not start with amqp:// or "
                "amqps:// (separate several brokers with commas; write a comma inside a "
                "password as %2C)"
            )
    schemes = {part.partition("://")[0] for part in parts}
    if len(schemes) > 1:
        # A plain-text fallback would silently drop TLS when the TLS nodes are away.
        raise AddressError("AMQP_URL mixes amqp:// and amqps:// brokers; use one scheme for all")
    return parts


def split_urls(value: str) -> list[str]:
    """Each URL of a comma-separated list of complete URLs (one URL gives a list of one);
    for redaction and secret scrubbing, so it never raises."""
    return [part for part in _NEXT_ADDRESS.split(value) if part] or [value]


def postgres_hosts_in_query(url: str) -> str:
    """`url` with a libpq-style host list (`@h1:5432,h2:5433/`) moved into SQLAlchemy's
    `?host=h1:5432&host=h2:5433` form; any other URL unchanged."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    credentials, at, location = rest.rpartition("@")
    netloc, slash, path_and_query = location.partition("/")
    if "," not in netloc:
        return url
    hosts = [host.strip() for host in netloc.split(",")]
    if any(not host for host in hosts):
        raise AddressError("DATABASE_URL has an empty host between commas")
    if len(hosts) > MAX_ADDRESSES:
        raise AddressError(f"DATABASE_URL names {len(hosts)} hosts; at most {MAX_ADDRESSES}")
    database, _, query = path_and_query.partition("?")
    if any(key == "host" for key, _ in parse_qsl(query)):
        raise AddressError("DATABASE_URL names hosts both before the path and in ?host=")
    host_query = "&".join(f"host={host}" for host in hosts)
    query = f"{host_query}&{query}" if query else host_query
    return f"{scheme}://{credentials}{at}/{database if slash else ''}?{query}"


def checked_database_url(raw: str) -> str:
    """`DATABASE_URL` checked, in the form SQLAlchemy reads (a libpq host list moved into the
    query); a ValueError (pydantic's ValidationError, or AddressError) says what is wrong."""
    if raw.partition("://")[0] != "postgresql+asyncpg":
        raise ValueError("DATABASE_URL must use the postgresql+asyncpg:// scheme")
    if "?" in raw and any(part.startswith("host=") for part in raw.partition("?")[2].split("&")):
        # SQLAlchemy's multi-host form has no host before the path, which PostgresDsn
        # refuses; SQLAlchemy's own parser checks it.
        from sqlalchemy.engine import make_url

        try:
            make_url(raw)
        except ValueError:
            raise AddressError("DATABASE_URL is not a valid multi-host URL") from None
        return raw
    PostgresDsn(raw)  # also reads libpq's host list `@h1:5432,h2:5433/`
    return postgres_hosts_in_query(raw)


def _parsed(url: str) -> URL | None:
    """The URL as yarl reads it (as aiormq does AMQP_URL), or None if it is not an absolute
    URL with a host."""
    try:
        parsed = URL(url)
        return parsed if parsed.absolute and parsed.scheme else None
    except (ValueError, TypeError):
        return None


def _is_password_parameter(name: str) -> bool:
    # libpq and asyncpg also take the password as a query parameter (`?password=...`).
    return "password" in name.lower()


def with_heartbeat(url: str, seconds: int) -> str:
    """`url` with `heartbeat=seconds` in its query, unless it asks for a heartbeat already."""
    if url_heartbeat(url) is not None:
        return url
    head, hash_, fragment = url.partition("#")
    joiner = "" if head.endswith(("?", "&")) else "&" if "?" in head else "?"
    return f"{head}{joiner}heartbeat={seconds}{hash_}{fragment}"


def urls_heartbeat(urls: list[str]) -> int | None:
    """The heartbeat the nodes' URLs ask for, or None; nodes that disagree are refused."""
    asked = {seconds for seconds in map(url_heartbeat, urls) if seconds is not None}
    if len(asked) > 1:
        raise ValueError(f"the AMQP_URL nodes ask for different heartbeats {sorted(asked)}")
    return asked.pop() if asked else None


def url_heartbeat(url: str) -> int | None:
    """The `heartbeat` query parameter of an AMQP URL (seconds), or None without one."""
    values = parse_qs(urlsplit(url).query).get("heartbeat")
    if not values:
        return None
    try:
        seconds = int(values[0])  # the first, as aiormq (yarl's MultiDict.get) reads it
    except ValueError:
        raise ValueError(f"heartbeat={values[0]!r} in AMQP_URL is not a whole number") from None
    if not 0 <= seconds <= 600:
        raise ValueError(f"heartbeat={seconds} in AMQP_URL is out of range (0-600 seconds)")
    return seconds


def redact_url(url: str) -> str:
    """`scheme://user:***@host:port/path`: where a URL points, without its password. A
    comma-separated list of URLs gives the list of their redactions."""
    return ",".join(_redact_one(part) for part in split_urls(url))


def _redact_one(url: str) -> str:
    parsed = _parsed(url)
    if parsed is None:
        return "***"
    if parsed.password is not None:
        parsed = parsed.with_password("***")
    if any(_is_password_parameter(name) for name in parsed.query):
        parsed = parsed.with_query(
            [
                (name, "***" if _is_password_parameter(name) else value)
                for name, value in parsed.query.items()
            ]
        )
    # An '@' that yarl did not take for the end of the credentials: a password with '/', '?'
    # or '#' written unencoded ends the authority early, and may show in the path.
    if parsed.raw_user is None and parsed.raw_password is None and "@" in url:
        return "***"
    return str(parsed)


def url_password(url: str) -> str | None:
    """The password embedded in a URL, so that logs can scrub it wherever it turns up."""
    parsed = _parsed(url)
    return (parsed.password or None) if parsed is not None else None


def url_secrets(url: str) -> list[str]:
    """The URL's password and its password parameters, each decoded and as written."""
    parsed = _parsed(url)
    if parsed is None:
        return []
    # yarl re-encodes what it reads (`%2C` comes back as `,`): the form as written is taken
    # from the string itself, between the user's ':' and the '@' that ends the credentials.
    written = url.partition("://")[2].rpartition("@")[0].partition(":")[2]
    found = [parsed.password or "", parsed.raw_password or "", written if parsed.password else ""]
    for pair in parsed.raw_query_string.split("&"):
        name, _, raw = pair.partition("=")
        if _is_password_parameter(unquote(name)):
            found += [raw, unquote(raw)]
    return list(dict.fromkeys(secret for secret in found if secret))
