"""Connecting to NATS with the configured credentials and TLS, errors translated."""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import re
import ssl
import weakref
from urllib.parse import urlsplit

import nkeys
from nats.aio.client import Client as NATS

from sisas.bus.raw_client import Client
from sisas.bus.settings import Settings
from sisas.errors import BusUnavailable, UsageError

__all__ = ["URL_FORM", "check_url", "connect", "redact", "refused"]

log = logging.getLogger("sisas.bus")

_TELLING = ("authorization", "authentication", "certificate", "ssl", "tls")
_SCHEMES = ("nats", "tls", "ws", "wss")
URL_FORM = "nats://HOST:PORT (or tls://, ws://, wss://; a cluster: several, separated by commas)"


def check_url(url: str, what: str = "SISAS_NATS_URL") -> list[str]:
    """The server URLs in ``url`` (comma-separated). Raises :class:`UsageError` naming
    ``what`` and the expected form when one is not ``SCHEME://HOST[:PORT]`` with a NATS
    scheme (nats, tls, ws, wss) or a bare ``HOST:PORT``: an ``http://`` URL or a stray
    word is caught here, not reported later as an unknown host."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        raise UsageError(f"{what} is empty: use {URL_FORM}, or unset it")
    for server in servers:
        scheme, sep, _ = server.partition("://")
        problem = ""
        if sep and scheme.lower() not in _SCHEMES:
            problem = f"{scheme}:// is not a NATS scheme"
        else:
            try:
                parsed = urlsplit(server if sep else f"nats://{server}")
                port = parsed.port
            except ValueError:
                problem, parsed, port = "its port is not a number", None, None
            if parsed is not None and not parsed.hostname:
                problem = "it names no host"
            elif parsed is not None and not sep and port is None:
                problem = "it has neither a scheme nor a port"
            elif parsed is not None and parsed.path not in ("", "/"):
                problem = f"it has a path ({parsed.path})"
        if problem:
            which = "" if len(servers) == 1 else f" ({redact(server)!r})"
            raise UsageError(
                f"{what}={redact(url)!r} is not a NATS URL{which}: {problem}; use {URL_FORM}"
            )
    return servers


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls:
        return None
    ctx = ssl.create_default_context(cafile=str(settings.tls_ca) if settings.tls_ca else None)
    if settings.tls_cert and settings.tls_key:
        ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return ctx


def _nkey_seed(settings: Settings) -> str | None:
    """The path of the ``SISAS_NATS_NKEY`` seed, checked to hold a user nkey seed."""
    if settings.nkey is None:
        return None
    path = settings.nkey
    try:
        seed = path.read_bytes().strip()
    except OSError as exc:
        raise UsageError(
            f"SISAS_NATS_NKEY names {path}, which cannot be read ({exc.strerror}): "
            "fix its permissions or the path"
        ) from None
    try:
        nkeys.from_seed(bytearray(seed)).wipe()
        valid = seed.startswith(b"SU")
    except (nkeys.NkeysError, binascii.Error, ValueError, IndexError):
        valid = False
    if not valid:
        raise UsageError(
            f"SISAS_NATS_NKEY names {path}, which is not the seed of an nkey user (SU…): "
            "use a <role>.nk file written by `sisas security init`"
        )
    return str(path)


def _nkey_seed_text(seed: str | None) -> str | None:
    """``seed`` checked to be an nkey user seed (``SU…``); UsageError naming the fix."""
    if seed is None:
        return None
    try:
        nkeys.from_seed(bytearray(seed.strip().encode())).wipe()
        valid = seed.strip().startswith("SU")
    except (nkeys.NkeysError, binascii.Error, ValueError, IndexError):
        valid = False
    if not valid:
        raise UsageError(
            "the nkey seed given is not the seed of an nkey user (SU…): paste the content "
            "of the role's <role>.nk file written by `sisas security init`"
        )
    return seed.strip()


_REFUSED = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)
_refusals: weakref.WeakKeyDictionary[NATS, set[str]] = weakref.WeakKeyDictionary()


def refused(nc: NATS, subject: str) -> bool:
    """Whether the server refused ``nc`` a publish to ``subject`` (its user lacks the
    permission): a request there will only time out, so callers stop retrying."""
    return subject.lower() in _refusals.get(nc, set())


def _log_error(text: str) -> None:
    text = text.removeprefix("nats: ")
    lowered = text.lower()
    if "permissions violation" not in lowered:
        log.warning("nats: %s", text)
    elif "$js.api.consumer.delete." in lowered:
        # A read-only user may not remove the temporary consumer it read a range with;
        # the server reaps it once idle (see sisas.bus.pull_reader).
        log.debug("nats: %s (the server removes the consumer when idle)", text)
    else:
        log.error(
            "nats: %s: this NATS user may not do that; check the permissions of its role "
            "(SISAS_NATS_NKEY, docs/security.md)",
            text,
        )


async def connect(url: str, settings: Settings, *, name: str = "sisas") -> NATS:
    """Open a NATS connection to ``url`` (comma-separated for a cluster).

    Raises :class:`BusUnavailable` naming the URL, the reason and the fix when the server
    cannot be reached within ``settings.timeout`` (plus a short grace), refuses the
    credentials, or fails the TLS handshake; :class:`UsageError` when ``url`` is not a
    NATS URL (:func:`check_url`) or ``SISAS_NATS_NKEY`` does not name an nkey seed.
    After connecting, the client reconnects on its own; callers see transient errors as
    retries, not exceptions.
    """
    seen: list[str] = []
    connected = False

    async def on_error(exc: Exception) -> None:
        if connected:
            text = str(exc) or type(exc).__name__
            if match := _REFUSED.search(text):
                _refusals.setdefault(nc, set()).add(match.group(1).lower())
            _log_error(text)
        else:
            seen.append(str(exc) or type(exc).__name__)
            log.debug("nats connect attempt: %s", exc)

    servers = check_url(url, "SISAS_NATS_URL" if settings.nats_url else "the server URL")
    seed = _nkey_seed(settings)
    seed_text = _nkey_seed_text(settings.nkey_seed)
    nc = Client()
    try:
        await asyncio.wait_for(
            nc.connect(
                servers=servers,
                name=name,
                connect_timeout=max(1, int(settings.timeout)),
                allow_reconnect=True,
                # Fail fast on the first connect; once connected, reconnect for ever.
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                error_cb=on_error,
                user_credentials=str(settings.creds) if settings.creds else None,
                nkeys_seed=seed,
                nkeys_seed_str=seed_text,
                user=settings.user,
                password=settings.password,
                token=settings.token,
                tls=_tls_context(settings),
            ),
            timeout=settings.timeout * 2 + 1,
        )
    except Exception as exc:  # nats-py raises many unrelated types here
        with contextlib.suppress(Exception):
            await nc.close()
        # The most telling error is not always the last (an auth refusal is followed
        # by "connection reset"): prefer one that names the cause.
        telling = [e for e in seen if any(w in e.lower() for w in _TELLING)]
        reason = (telling or seen or [str(exc) or type(exc).__name__])[-1]
        lowered = reason.lower()
        if "authorization" in lowered or "authentication" in lowered:
            fix = (
                "check the credentials (SISAS_NATS_NKEY, SISAS_NATS_CREDS, SISAS_NATS_USER / "
                "SISAS_NATS_PASSWORD or SISAS_NATS_TOKEN)"
            )
        elif "certificate" in lowered or "ssl" in lowered or "tls" in lowered:
            fix = "check SISAS_NATS_TLS_CA (the server's CA) and the client certificate"
        elif settings.nats_url:
            # Nothing sisas starts can help here: the server is someone else's.
            fix = (
                "check that the server at SISAS_NATS_URL is running and reachable from here, "
                "or unset SISAS_NATS_URL to use the embedded server"
            )
        else:
            fix = (
                f"the server sisas started for {settings.home} does not answer: restart it "
                "(`sisas down`, then `sisas up`)"
            )
        raise BusUnavailable(f"cannot reach NATS at {redact(url)} ({reason}): {fix}") from None
    connected = True
    nc.options["max_reconnect_attempts"] = -1
    nc.options["reconnect_time_wait"] = 1
    return nc
