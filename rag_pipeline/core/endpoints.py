"""What an embedding endpoint's settings mean before anything is sent: does its host need a
key, and how to name it in a message without secrets. No client libraries (the code server's
sensor asks this every tick)."""

from __future__ import annotations

# Hosts that never need a key: this machine, private networks, and single-label names (a compose
# service such as `ollama`). Any other host is taken to need OPENAI_API_KEY.
_LOCAL_SUFFIXES = (".local", ".localhost", ".internal", ".lan", ".home.arpa")
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class MissingKey(Exception):
    """RAG_EMBEDDER=openai without OPENAI_API_KEY against a host that needs one."""


def _needs_key(host: str) -> bool:
    import ipaddress

    host = host.strip("[]").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return not (not host or host == "localhost" or "." not in host or host.endswith(_LOCAL_SUFFIXES))
    return not (address.is_private or address.is_loopback or address.is_link_local)


def missing_key_problem(*, provider: str, base_url: str | None, api_key: str | None) -> str | None:
    """The one line for RAG_EMBEDDER=openai without a key against a host that needs one, or None.
    Local servers (vLLM, Ollama, TEI on this machine or a private network) take no key, so the
    rule is by host: asked before any run, instead of sending a placeholder key and retrying."""
    from urllib.parse import urlsplit

    if provider != "openai" or api_key:
        return None
    url = base_url or DEFAULT_BASE_URL
    if not _needs_key(urlsplit(url).hostname or ""):
        return None
    return (
        f"OPENAI_API_KEY is not set, and RAG_EMBEDDER=openai sends to {redact_url(url)}, which needs one: "
        "set OPENAI_API_KEY (in .env for docker compose), or point OPENAI_BASE_URL at a local endpoint"
    )


def redact_url(url: str) -> str:
    """A URL without its credentials or query (either may hold a key), for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def connection_problem(exc: BaseException) -> str:
    """What a failed connection came down to, from the innermost cause: "connection refused",
    "name not found", "timed out"."""
    seen: list[str] = []
    while exc is not None and len(seen) < 10:
        seen.append(str(exc).lower())
        exc = exc.__cause__ or exc.__context__
    text = " ".join(seen)
    for needle, said in (("refused", "connection refused"), ("name or service not known", "host name not found"),
                         ("nodename nor servname", "host name not found"), ("name resolution", "host name not found"),
                         ("timed out", "timed out"), ("timeout", "timed out"), ("unreachable", "network unreachable"),
                         ("certificate", "TLS certificate refused")):
        if needle in text:
            return said
    return seen[-1][:120] if seen and seen[-1] else "no connection"

