"""The market's web page: a read-only catalogue for everyone, an admin area behind a login.

A Starlette app with Jinja2 templates (autoescaped) and one stylesheet: no JavaScript at
all, so the CSP forbids every script. Every read goes through the ``Market`` methods the
gRPC service uses (``list_page``, ``get``, ``list_keys``, ``stats``, ``key_of``), with the
visibility of an anonymous user (``PUBLIC``) or of the logged-in admin. Page handlers are
plain functions, which Starlette runs in its thread pool, off the server's event loop.

Only POST changes anything (login, logout), and every POST form carries a CSRF token
(``server.web.security``). Forms are read with the standard library's URL decoding, bounded
in size: Starlette's own form parser needs an extra package for nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from server.auth import Caller
from server.market import Market
from server.records import LearnwareFilter, Role, Status
from server.web.security import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    AdminLogin,
    LoginForms,
    SecurityHeaders,
    Sessions,
    WebLimits,
    same_token,
)
from server.web.views import human_size, learnware_view
from shared.errors import InvalidInput, LwmError, PermissionDenied

PUBLIC = Caller(key_id="", role=Role.USER, name="web visitor")
"""Whom the catalogue reads as: it sees what any user sees (USABLE learnwares only)."""

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
}
"""The HTTP answer to a project error, by its gRPC status name (500 for any other)."""

_PACKAGE_DIR = __file__.rsplit("/", 1)[0]


def build_web_app(
    market: Market,
    market_id: str,
    *,
    tls: bool,
    limits: WebLimits | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The web app over ``market`` (whose clients sign for ``market_id``); ``tls`` marks
    cookies Secure and adds HSTS."""
    return WebPage(market, market_id, tls, limits or WebLimits(), clock).app


class WebPage:
    """The pages and the state they share (sessions, login checks), for one market."""

    def __init__(
        self,
        market: Market,
        market_id: str,
        tls: bool,
        limits: WebLimits,
        clock: Callable[[], float],
    ) -> None:
        self.market, self.tls, self.limits = market, tls, limits
        self.login = AdminLogin(market, market_id, clock)
        self.sessions = Sessions(limits, clock)
        self.login_forms = LoginForms()
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("server.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        env.filters["size"] = human_size
        self.templates = Jinja2Templates(env=env)
        self.app = Starlette(
            routes=[
                Route("/", self.catalogue, name="catalogue"),
                Route("/learnware/{learnware_id}", self.learnware, name="learnware"),
                Route("/admin", self.admin_home),
                Route("/admin/login", self.login_page, methods=["GET"]),
                Route("/admin/login", self.login_post, methods=["POST"]),
                Route("/admin/logout", self.logout, methods=["POST"]),
                Route("/admin/keys", self.admin_keys, name="admin_keys"),
                Route("/admin/submissions", self.admin_submissions, name="admin_submissions"),
                Route("/admin/stats", self.admin_stats, name="admin_stats"),
                Mount("/static", StaticFiles(directory=f"{_PACKAGE_DIR}/static"), name="static"),
            ],
            middleware=[Middleware(SecurityHeaders, tls=tls)],
            exception_handlers={LwmError: self.error},
        )

    # ------------------------------------------------------------------ public pages
    def catalogue(self, request: Request) -> Response:
        domain = request.query_params.get("domain", "").strip()
        token = request.query_params.get("page", "")
        flt = LearnwareFilter(status=Status.USABLE, domain=domain or None)
        page = self.market.list_page(PUBLIC, flt, self.limits.page_size, token)
        views = [learnware_view(r, self.market.key_of(r.contributor_key_id)) for r in page.items]
        context = {"learnwares": views, "domain": domain, "next_page": page.next_page_token}
        return self._render(request, "catalogue.html", context)

    def learnware(self, request: Request) -> Response:
        record = self.market.get(PUBLIC, request.path_params["learnware_id"])
        history = self.market.history(PUBLIC, record.id)
        view = learnware_view(record, self.market.key_of(record.contributor_key_id), history)
        return self._render(request, "learnware.html", {"lw": view})

    # ------------------------------------------------------------------ login
    def login_page(self, request: Request) -> Response:
        cookie = request.cookies.get(LOGIN_COOKIE) or self.login_forms.new_cookie()
        response = self._login_form(request, cookie, "", 200)
        self._set_cookie(response, LOGIN_COOKIE, cookie, "/admin/login")
        return response

    async def login_post(self, request: Request) -> Response:
        form = await self._form(request)
        cookie = request.cookies.get(LOGIN_COOKIE)
        self.login_forms.check(cookie, form.get("csrf"))
        try:
            key = await run_in_threadpool(self.login.check, form.get("token", ""))
        except LwmError as error:
            status = HTTP_STATUS.get(error.status, 500)
            return self._login_form(request, cookie or "", str(error), status)
        session = self.sessions.open(key.key_id)
        response = RedirectResponse("/admin/keys", status_code=303)
        self._set_cookie(response, SESSION_COOKIE, session.sid, "/")
        response.delete_cookie(LOGIN_COOKIE, path="/admin/login")
        return response

    async def logout(self, request: Request) -> Response:
        form = await self._form(request)
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None or not same_token(session.csrf, form.get("csrf")):
            raise PermissionDenied("logout refused: no session, or the form came from elsewhere")
        self.sessions.close(session.sid)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ admin pages
    def admin_home(self, request: Request) -> Response:
        return RedirectResponse("/admin/keys", status_code=303)

    def admin_keys(self, request: Request) -> Response:
        return self._admin(
            request,
            "admin_keys.html",
            lambda _: {"keys": self.market.list_keys(include_revoked=True)},
        )

    def admin_submissions(self, request: Request) -> Response:
        def lists(caller: Caller) -> dict[str, Any]:
            found = {}
            for status in (Status.PENDING, Status.REJECTED):
                name = status.value.lower()
                token = request.query_params.get(name, "")
                found[name] = self.market.list_page(
                    caller, LearnwareFilter(status=status), self.limits.page_size, token
                )
            return found

        return self._admin(request, "admin_submissions.html", lists)

    def admin_stats(self, request: Request) -> Response:
        return self._admin(request, "admin_stats.html", lambda _: {"stats": self.market.stats()})

    def _admin(
        self, request: Request, template: str, read: Callable[[Caller], dict[str, Any]]
    ) -> Response:
        """An admin page: to the login form without a live session of a live admin key."""
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None or not self.login.still_admin(session.key_id):
            return RedirectResponse("/admin/login", status_code=303)
        caller = Caller(key_id=session.key_id, role=Role.ADMIN, name="web admin")
        response = self._render(request, template, {**read(caller), "session": session})
        response.headers["cache-control"] = "no-store"
        return response

    # ------------------------------------------------------------------ helpers
    def _render(
        self, request: Request, template: str, context: dict[str, Any], status: int = 200
    ) -> Response:
        context.setdefault("session", None)
        return self.templates.TemplateResponse(request, template, context, status_code=status)

    def _login_form(self, request: Request, cookie: str, error: str, status: int) -> Response:
        context = {"csrf": self.login_forms.token(cookie) if cookie else "", "error": error}
        response = self._render(request, "login.html", context, status)
        response.headers["cache-control"] = "no-store"
        return response

    def _set_cookie(self, response: Response, name: str, value: str, path: str) -> None:
        response.set_cookie(
            name,
            value,
            max_age=int(self.limits.session_s),
            path=path,
            httponly=True,
            samesite="strict",
            secure=self.tls,
        )

    async def _form(self, request: Request) -> dict[str, str]:
        """A URL-encoded form body of at most ``WebLimits.max_form_bytes``."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise InvalidInput(f"expected a form, got content type {kind or 'none'!r}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.limits.max_form_bytes:
                raise InvalidInput(f"a form may be at most {self.limits.max_form_bytes} bytes")
        return dict(parse_qsl(body.decode("utf-8", "replace"), max_num_fields=8))

    def error(self, request: Request, exc: Exception) -> Response:
        status = HTTP_STATUS.get(getattr(exc, "status", ""), 500)
        return self._render(request, "error.html", {"message": str(exc)}, status)
