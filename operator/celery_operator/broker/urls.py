"""Broker URLs: their scheme, and keeping their passwords out of every text the operator writes."""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

REDIS_SCHEMES: Final = ("redis", "rediss")
AMQP_SCHEMES: Final = ("amqp", "amqps", "pyamqp")
_SECRET_QUERY_KEYS: Final = frozenset({"password", "passwd", "pass", "secret", "token", "sasl_password"})


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def is_redis_url(url: str) -> bool:
    return scheme(url) in REDIS_SCHEMES


def is_amqp_url(url: str) -> bool:
    return scheme(url) in AMQP_SCHEMES


def redact(url: str) -> str:
    """The URL with its password (and password-like query values) replaced by `***`.

    `redis://:s3cret@redis:6379/0` -> `redis://:***@redis:6379/0`. kombu failover lists
    (`url1;url2`) are redacted one by one. Something unparsable becomes `<unparsable broker URL>`.
    """
    if ";" in url:
        return ";".join(redact(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, has_password, _password = userinfo.partition(":")
            netloc = f"{user}:***@{hostport}" if has_password else f"{userinfo}@{hostport}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(key.lower() in _SECRET_QUERY_KEYS for key, _ in pairs):
                query = urlencode(
                    [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*"
                )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparsable broker URL>"


def _secrets_of(url: str) -> list[str]:
    """Every spelling of every secret in `url` (raw and percent-decoded), longest first."""
    found: set[str] = set()
    for part in url.split(";"):
        try:
            parts = urlsplit(part)
        except ValueError:
            continue
        userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
        if ":" in userinfo:
            found.add(userinfo.partition(":")[2])
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key.lower() in _SECRET_QUERY_KEYS:
                found.add(value)
    found |= {unquote(s) for s in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, *urls: str) -> str:
    """`text` with every URL of `urls` redacted and every secret they hold replaced by `***`."""
    for url in urls:
        text = text.replace(url, redact(url))
        for secret in _secrets_of(url):
            text = text.replace(secret, "***")
    return text


class BrokerUnavailable(Exception):
    """The broker could not be read (within the timeout). Callers hold replicas where they are.

    The message names the broker by its redacted URL and never holds the password. The original
    exception is not chained (`__cause__` is None): its text, scrubbed, is in the message.
    """

    def __init__(self, url: str, what: str, error: BaseException | str | None = None):
        detail = ""
        if isinstance(error, BaseException):
            detail = f": {type(error).__name__}: {error}" if str(error) else f": {type(error).__name__}"
        elif error:
            detail = f": {error}"
        self.broker = redact(url)
        super().__init__(scrub(f"broker {self.broker}: {what}{detail}", url))
