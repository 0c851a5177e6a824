"""Who may act from the dashboard: the actions policy, sign-in, sessions and CSRF.

The dashboard reads with its own connection (the auditor role, when security is on). It
acts only for a signed-in operator, and never by surprise:

- ``off`` (the default): no action; every action API answers 403, the pages show no
  button. ``sisas dashboard --allow-actions`` (``sisas up --dashboard-actions``) turns
  actions on.
- ``credentials``: the dashboard's own connection authenticates (``SISAS_NATS_NKEY``,
  ``SISAS_NATS_CREDS``, a user or a token), so the server has users. Signing in takes
  the operator's credentials (the nkey seed of ``operator.nk``, or a user and password);
  the dashboard opens a connection with them, and every action is sent on it, so the
  server's permissions decide (an auditor's seed signs in to nothing: the server refuses
  it sending a command, checked at sign-in). The credentials live only in that
  connection, in this process's memory: never written, never in the log.
- ``token``: the server has no users (the embedded default). A random token is printed
  at start (as Jupyter does); signing in with it acts on the dashboard's connection.

A session is a random id in a cookie (HttpOnly, SameSite=Strict) and a CSRF token the
page reads from ``GET /api/session`` and sends as ``X-CSRF-Token`` on every POST; every
POST must also come from the dashboard's own origin (``Origin``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Final, Literal
from urllib.parse import urlsplit

from starlette.requests import Request

from sisas.bus.connection import refused
from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings
from sisas.client.client import Client
from sisas.errors import BusUnavailable, SisasError, UsageError
from sisas.signals.names import IN_PREFIX

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "ActionPolicy",
    "Refused",
    "Session",
    "Sessions",
]

log = logging.getLogger(__name__)

COOKIE: Final = "sisas_session"
CSRF_HEADER: Final = "X-CSRF-Token"
MAX_SESSIONS: Final = 32
"""Sessions kept at once; signing in past it ends the oldest (and closes its connection)."""
MAX_NAME: Final = 64

Mode = Literal["off", "token", "credentials"]


class Refused(Exception):
    """An action or a sign-in refused: the HTTP status and the message for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ActionPolicy:
    """Whether the dashboard acts, and how one signs in (see the module's docstring)."""

    mode: Mode = "off"
    token: str = field(default="", repr=False)

    @classmethod
    def for_settings(cls, settings: Settings, *, allow: bool) -> ActionPolicy:
        """``off`` unless ``allow``; ``credentials`` when ``settings`` authenticate to the
        server; else ``token``, with a new random token."""
        if not allow:
            return cls("off")
        if settings.creds or settings.nkey or settings.nkey_seed or settings.user:
            return cls("credentials")
        if settings.token:
            return cls("credentials")
        return cls("token", secrets.token_urlsafe(24))

    def describe(self, url: str) -> str:
        """What a command serving the dashboard prints of its actions (in ``token``
        mode: the address that signs in with the token)."""
        if self.mode == "off":
            return "off (read only; --allow-actions lets a signed-in operator act)"
        if self.mode == "credentials":
            return "on for an operator signed in with the operator role's credentials"
        return "on for who holds the token (below): open the address that carries it"

    def sign_in_url(self, url: str) -> str:
        """The address that signs in with the token (``token`` mode), else ""."""
        return f"{url}/?token={self.token}" if self.mode == "token" else ""


@dataclass
class Session:
    """A signed-in operator: the CSRF token, who they are, and the client that acts."""

    id: str
    csrf: str
    who: str
    client: Client
    stack: contextlib.AsyncExitStack | None = None
    """The operator's own connection (``credentials``), closed with the session."""

    async def close(self) -> None:
        if self.stack is not None:
            stack, self.stack = self.stack, None
            with contextlib.suppress(Exception):
                await stack.aclose()


def check_origin(request: Request) -> None:
    """Refuse (403) a POST that does not come from this dashboard's own pages: its
    ``Origin`` must name the host the request was sent to (``Host``). The scheme is not
    compared, so a proxy that ends TLS in front of the dashboard (and passes ``Host``
    on) still works."""
    origin = request.headers.get("origin", "")
    host = request.headers.get("host", "")
    if not origin or not host or urlsplit(origin).netloc != host:
        raise Refused(
            403,
            f"refused: a POST must come from this dashboard's pages (Origin "
            f"{origin or 'missing'}, expected one for {host or 'this host'})",
        )


class Sessions:
    """The signed-in sessions of one dashboard, and signing in and out."""

    def __init__(self, bus: Bus, policy: ActionPolicy) -> None:
        self.bus = bus
        self.policy = policy
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = asyncio.Lock()

    def of(self, request: Request) -> Session | None:
        """The session the request's cookie names, if signed in."""
        sid = request.cookies.get(COOKIE, "")
        return self._sessions.get(sid) if sid else None

    def acting(self, request: Request) -> Session:
        """The session allowed to act on this POST; raises :class:`Refused` (403) when
        actions are off, the request comes from elsewhere, no operator signed in, or
        the CSRF token is missing or wrong."""
        if self.policy.mode == "off":
            raise Refused(
                403,
                "actions are off on this dashboard: start it with `sisas dashboard "
                "--allow-actions` (or `sisas up --dashboard-actions`) to launch, cancel "
                "and re-execute runs",
            )
        check_origin(request)
        session = self.of(request)
        if session is None:
            raise Refused(403, "sign in as an operator first: this dashboard only reads for you")
        given = request.headers.get(CSRF_HEADER, "")
        if not given or not secrets.compare_digest(given, session.csrf):
            raise Refused(403, f"missing or wrong {CSRF_HEADER}: reload the page and try again")
        return session

    async def sign_in(self, request: Request, form: dict[str, object]) -> Session:
        """See :meth:`_sign_in`; logs who signed in, and each refusal with its reason."""
        client = request.client.host if request.client else "?"
        try:
            session = await self._sign_in(request, form)
        except Refused as exc:
            log.warning(
                "dashboard sign-in from %s refused (%d): %s", client, exc.status, exc.message
            )
            raise
        log.info("dashboard sign-in from %s: %s", client, session.who)
        return session

    async def _sign_in(self, request: Request, form: dict[str, object]) -> Session:
        """A new session for the credentials in ``form`` (``name``, and ``token``, or
        ``seed``, or ``user`` and ``password``). Raises :class:`Refused`: 403 when
        actions are off or the credentials may not send commands, 401 when they are
        wrong, 400 when the form is, 503 when the server cannot be reached."""
        if self.policy.mode == "off":
            raise Refused(403, "actions are off on this dashboard: start it with --allow-actions")
        check_origin(request)
        name = _text(form, "name", MAX_NAME) or "operator"
        if self.policy.mode == "token":
            given = _text(form, "token", 200)
            if not given or not secrets.compare_digest(given, self.policy.token):
                raise Refused(
                    401,
                    "wrong token: use the one `sisas dashboard --allow-actions` (or `sisas "
                    "up --dashboard-actions`) printed at start, in its `operator sign-in: "
                    "URL/?token=…` line (a new one at each start)",
                )
            who = f"{name} (dashboard, token)"
            session = self._new(who, Client(self.bus, requested_by=f"dashboard: {who}"))
        else:
            session = await self._with_credentials(name, form)
        async with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > MAX_SESSIONS:
                _, oldest = self._sessions.popitem(last=False)
                await oldest.close()
        return session

    async def _with_credentials(self, name: str, form: dict[str, object]) -> Session:
        seed, user = _text(form, "seed", 200), _text(form, "user", 200)
        password = _text(form, "password", 500)
        if not seed and not user:
            raise Refused(
                400,
                "give the operator's nkey seed (the content of operator.nk, SU…) or a user "
                "and password",
            )
        settings: Settings = replace(
            self.bus.settings,
            creds=None,
            nkey=None,
            nkey_seed=seed or None,
            user=None if seed else user,
            password=None if seed else password,
            token=None,
            signing_key=None,
        )
        stack = contextlib.AsyncExitStack()
        try:
            bus = await stack.enter_async_context(
                open_bus(settings, name="sisas-dashboard-operator")
            )
            await _may_send_commands(bus)
        except UsageError as exc:
            await stack.aclose()
            raise Refused(400, str(exc)) from None
        except BusUnavailable as exc:
            await stack.aclose()
            if "authoriz" not in str(exc).lower() and "authentic" not in str(exc).lower():
                raise Refused(503, f"the NATS server cannot be reached: {exc}") from None
            raise Refused(
                401,
                "the NATS server refused these credentials (Authorization Violation): paste "
                "the operator's nkey seed (the content of operator.nk) or check the user and "
                "password",
            ) from None
        except Refused:
            await stack.aclose()
            raise
        except SisasError as exc:
            await stack.aclose()
            raise Refused(401, f"signing in failed: {exc}") from None
        identity = f"user {user}" if user and not seed else f"nkey {_public_key(seed)[:12]}…"
        who = f"{name} (dashboard, {identity})"
        session = self._new(who, Client(bus, requested_by=f"dashboard: {who}"))
        session.stack = stack
        return session

    def _new(self, who: str, client: Client) -> Session:
        return Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), who, client)

    async def sign_out(self, request: Request) -> None:
        session = self.of(request)
        if session is not None:
            async with self._lock:
                self._sessions.pop(session.id, None)
            await session.close()

    async def close(self) -> None:
        async with self._lock:
            sessions, self._sessions = list(self._sessions.values()), OrderedDict()
        for s in sessions:
            await s.close()


_PROBE: Final = f"{IN_PREFIX}._dashboard._signin.cancel_run"
"""Where sign-in checks the right to send commands: a JetStream publish the stream
refuses to store (a wrong expected last sequence), or the server refuses to take."""


async def _may_send_commands(bus: Bus) -> None:
    """Raise :class:`Refused` (403) unless the server lets this connection send commands
    to ``SISAS_IN``. Nothing is stored: the publish expects a last sequence the stream
    cannot have, so the stream answers "wrong last sequence" to a user allowed to send,
    and the server refuses the others before any stream sees it."""
    headers = {"Nats-Expected-Last-Sequence": str(2**62)}
    ask = asyncio.ensure_future(
        bus.nc.request(_PROBE, b"{}", timeout=bus.settings.timeout, headers=headers)
    )
    reply = None
    try:
        # A refused publish is never answered: stop waiting once the server said so.
        while not ask.done() and not refused(bus.nc, _PROBE):
            await asyncio.wait({ask}, timeout=0.05)
        if ask.done() and ask.exception() is None:
            reply = ask.result()
    finally:
        ask.cancel()
        with contextlib.suppress(BaseException):
            await ask
    if reply is None or refused(bus.nc, _PROBE):
        raise Refused(
            403,
            "these credentials may only read: the NATS server refused them sending a run "
            "command; sign in with the operator role's (operator.nk from `sisas security "
            "init`)",
        )


def _public_key(seed: str) -> str:
    import nkeys

    public: bytes = nkeys.from_seed(bytearray(seed.strip().encode())).public_key
    return public.decode()


def _text(form: dict[str, object], key: str, most: int) -> str:
    value = form.get(key, "")
    if not isinstance(value, str) or len(value) > most:
        raise Refused(400, f"{key} must be a string of at most {most} characters")
    return value.strip()
