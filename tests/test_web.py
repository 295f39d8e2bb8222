"""The market's web page over a real market (TLS, SQLite, real learnwares), through
Starlette's test client: what it shows, what it escapes, who gets into the admin area, and
that nothing but a POST with its CSRF token changes anything."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from builders import (
    build_learnware,
    random_rkme_spec,
    rkme_schema,
    train_lora_adapter,
    write_specs,
)
from market_fixtures import market_server
from starlette.testclient import TestClient
from typer.testing import CliRunner
from web_fixtures import admin_token, publish_catalogue

from server.auth import Caller
from server.records import Role, Status
from server.web import WebLimits, build_web_app, start_web
from server.web.security import SESSION_COOKIE
from shared import signing
from shared.errors import InvalidInput, Unauthenticated
from shared.market_identity import server_market_id
from shared.models import model_ref
from shared.web_token import WebToken, mint_web_token

EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def world(tmp_path_factory, lwm_home):
    tmp = tmp_path_factory.mktemp("web")
    adapter = train_lora_adapter(lwm_home, tmp / "adapter")
    with market_server(tmp, lwm_home, run_smoke=False) as market:
        published = publish_catalogue(market, lwm_home, tmp, adapter)
        inner = market.running.market
        admin = Caller(market.layout.admin_key_id, Role.ADMIN, "admin")
        mallory = market.new_key("mallory", Role.CONTRIBUTOR)
        inner.revoke_key(admin, signing.key_id(mallory.public_key()), "stolen laptop")
        market.new_key("uma", Role.USER)
        # Names a submission could never carry (the manifest's are slugs), written straight
        # into the store: the page must escape whatever the store holds.
        good = inner.store.get(published["cardiology-notes"].learnware_id, with_specs=False)
        evil = inner.store.add_learnware(
            replace(good, id="evil", name=EVIL, description=EVIL, package_sha256="e" * 64)
        )
        rejected = inner.store.add_learnware(
            replace(good, id="bad", name="bad-one", package_sha256="b" * 64, status=Status.PENDING)
        )
        inner.store.set_status(rejected.id, Status.REJECTED, f"smoke run failed: {EVIL}")
        yield {"market": market, "published": published, "evil": evil}


def web(world, tls: bool = False, **limits) -> TestClient:
    market = world["market"]
    app = build_web_app(
        market.running.market,
        server_market_id(market.layout),
        tls=tls,
        limits=WebLimits(**limits),
    )
    return TestClient(app, base_url="https://testserver" if tls else "http://testserver")


def logged_in(world, client: TestClient) -> TestClient:
    form = login_form(client)
    form["token"] = admin_token(world["market"], time.time()).text()
    reply = client.post("/admin/login", data=form, follow_redirects=False)
    assert reply.status_code == 303, reply.text
    return client


def login_form(client: TestClient) -> dict[str, str]:
    page = client.get("/admin/login")
    return {"csrf": re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)}


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


# ---------------------------------------------------------------- what the page shows


def test_catalogue_shows_every_field_and_the_composed_budget(world):
    page = web(world).get("/")

    assert page.status_code == 200
    for name, pub in world["published"].items():
        row = page.text.split(f'data-id="{pub.learnware_id}"')[1].split("</tr>")[0]
        manifest = pub.manifest
        assert name in row and manifest.domain in row and manifest.task in row
        assert manifest.base_model.model_id in row and manifest.license in row
        assert "St Mary&#39;s Hospital" in row and manifest.contributor.key_id in row
        assert "rkme" in row and "KiB" in row
        total = re.search(r'class="total" data-epsilon="([^"]+)"', row).group(1)
        assert float(total) == manifest.dp.total.epsilon
        assert row.count('class="release"') == 2  # the spec and the adapter


def test_learnware_page_shows_checks_ledger_and_its_one_version(world):
    pub = world["published"]["loan-memos"]

    page = web(world).get(f"/learnware/{pub.learnware_id}")

    assert page.status_code == 200
    assert "USABLE" in page.text and "version 1 (this page)" in page.text
    shown = re.search(r'id="total-budget"><span class="total" data-epsilon="([^"]+)"', page.text)
    assert float(shown.group(1)) == pub.manifest.dp.total.epsilon
    assert "dp-sgd" in page.text and pub.manifest.base_model.sha256 in page.text


def test_domain_filter_and_page_tokens(world):
    client = web(world, page_size=1)

    law = client.get("/", params={"domain": "law"})
    first = client.get("/")
    token = re.search(r'id="next-page" href="[^"]*page=([^"]+)"', first.text).group(1)
    second = client.get(f"/?domain=&page={token}")

    assert "contract-clauses" in law.text and "loan-memos" not in law.text
    ids = [re.findall(r'tr class="learnware" data-id="([^"]+)"', p.text) for p in (first, second)]
    assert len(ids[0]) == len(ids[1]) == 1 and ids[0] != ids[1]
    assert client.get("/?page=not-a-token").status_code == 400


def test_markup_in_names_reasons_and_descriptions_is_escaped(world):
    client = logged_in(world, web(world))

    pages = [client.get("/"), client.get("/learnware/evil"), client.get("/admin/submissions")]

    for page in pages:
        assert EVIL not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


def test_a_rejected_or_unknown_learnware_is_not_found_for_the_public(world):
    client = web(world)

    assert client.get("/learnware/bad").status_code == 404
    assert client.get("/learnware/nope").status_code == 404
    assert "bad-one" not in client.get("/").text


@pytest.mark.parametrize("path", ["/", "/learnware/evil", "/admin/login", "/admin/keys", "/x"])
def test_every_answer_carries_the_security_headers(world, path):
    reply = web(world).get(path, follow_redirects=False)

    csp = reply.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["referrer-policy"] == "no-referrer"
    assert "server" not in reply.headers
    assert "<script" not in reply.text  # no inline script anywhere: the CSP would block it


def test_session_cookie_is_httponly_strict_and_secure_under_tls(world):
    client = web(world, tls=True)
    form = login_form(client)
    form["token"] = admin_token(world["market"], time.time()).text()

    reply = client.post("/admin/login", data=form, follow_redirects=False)

    cookie = reply.headers["set-cookie"].lower()
    assert SESSION_COOKIE in cookie
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" in cookie
    assert "strict-transport-security" in reply.headers


# ---------------------------------------------------------------- the admin area


@pytest.mark.parametrize("path", ["/admin", "/admin/keys", "/admin/submissions", "/admin/stats"])
def test_admin_pages_send_a_stranger_to_the_login(world, path):
    client = web(world)
    client.cookies.set(SESSION_COOKIE, "forged-session-id")

    reply = client.get(path)

    assert [r.status_code for r in reply.history][-1] == 303
    assert reply.url.path == "/admin/login" and 'name="token"' in reply.text
    assert "stolen laptop" not in reply.text


def test_admin_sees_keys_revocations_submissions_and_stats(world):
    client = logged_in(world, web(world))

    keys = client.get("/admin/keys")
    submissions = client.get("/admin/submissions")
    stats = client.get("/admin/stats")

    assert keys.status_code == submissions.status_code == stats.status_code == 200
    assert world["market"].layout.admin_key_id in keys.text and "stolen laptop" in keys.text
    assert "bad-one" in submissions.text and "smoke run failed" in submissions.text
    assert "USABLE" in stats.text and keys.headers["cache-control"] == "no-store"


def test_logout_is_a_post_with_the_session_csrf_token(world):
    client = logged_in(world, web(world))
    csrf = csrf_of(client.get("/admin/keys").text)

    by_get = client.get("/admin/logout")
    forged = client.post("/admin/logout", data={"csrf": "x" * 43}, follow_redirects=False)
    still_in = client.get("/admin/keys", follow_redirects=False)
    out = client.post("/admin/logout", data={"csrf": csrf}, follow_redirects=False)
    after = client.get("/admin/keys", follow_redirects=False)

    assert by_get.status_code == 405 and forged.status_code == 403
    assert still_in.status_code == 200
    assert out.status_code == 303 and after.status_code == 303


def test_login_without_the_form_csrf_token_is_refused_and_burns_no_token(world):
    client = web(world)
    token = admin_token(world["market"], time.time()).text()

    no_cookie = client.post("/admin/login", data={"token": token, "csrf": "0" * 64})
    client.get("/admin/login")  # has the login cookie now, but not the form's token
    wrong = client.post("/admin/login", data={"token": token, "csrf": "0" * 64})
    form = login_form(client)
    right = client.post("/admin/login", data={**form, "token": token}, follow_redirects=False)

    assert no_cookie.status_code == wrong.status_code == 403
    assert right.status_code == 303


def test_expired_replayed_foreign_and_non_admin_tokens_are_refused(world):
    market = world["market"]
    now = time.time()
    uma = signing.load_private_key(market.keys_dir / "uma.key")
    mallory = signing.load_private_key(market.keys_dir / "mallory.key")
    admin = signing.load_private_key(market.layout.admin_key)
    market_id = server_market_id(market.layout)
    app = web(world).app  # one page, one memory of used tokens, as in the server
    used = admin_token(market, now).text()
    logged_in_with(TestClient(app), used)
    tokens = {
        "expired": admin_token(market, now - 700).text(),
        "replayed": used,
        "other market": mint_web_token(admin, "tls-cert-sha256:" + "0" * 64, 600, now).text(),
        "non-admin": mint_web_token(uma, market_id, 600, now).text(),
        "revoked": mint_web_token(mallory, market_id, 600, now).text(),
        "tampered": used[:-2] + ("00" if not used.endswith("00") else "11"),
        "garbage": "<b>hello</b>",
    }

    for why, token in tokens.items():
        client = TestClient(app)
        form = login_form(client)
        reply = client.post("/admin/login", data={**form, "token": token}, follow_redirects=False)
        assert reply.status_code in (401, 403), why
        assert SESSION_COOKIE not in reply.cookies, why
        assert client.get("/admin/keys", follow_redirects=False).status_code == 303, why


def logged_in_with(client: TestClient, token: str) -> None:
    form = login_form(client)
    reply = client.post("/admin/login", data={**form, "token": token}, follow_redirects=False)
    assert reply.status_code == 303


def test_a_revoked_admin_key_loses_its_session(world):
    market = world["market"]
    second = market.new_key("second-admin", Role.ADMIN)
    client = web(world)
    form = login_form(client)
    token = mint_web_token(second, server_market_id(market.layout), 600, time.time()).text()
    client.post("/admin/login", data={**form, "token": token})
    assert client.get("/admin/keys", follow_redirects=False).status_code == 200
    admin = Caller(market.layout.admin_key_id, Role.ADMIN, "admin")

    market.running.market.revoke_key(admin, signing.key_id(second.public_key()), "left")

    assert client.get("/admin/keys", follow_redirects=False).status_code == 303


def test_no_get_changes_the_market(world):
    inner = world["market"].running.market
    client = logged_in(world, web(world))
    before = (inner.store.stats(), inner.list_keys(include_revoked=True))
    paths = ["/", "/?domain=law", "/learnware/evil", "/admin", "/admin/keys", "/admin/stats"]
    paths += ["/admin/submissions", "/admin/login", "/admin/logout", "/?page=x", "/static/x"]

    for path in paths:
        client.get(path)
        client.head(path)

    assert (inner.store.stats(), inner.list_keys(include_revoked=True)) == before
    assert client.get("/admin/keys", follow_redirects=False).status_code == 200  # not logged out


# ---------------------------------------------------------------- tokens, CLI, serving


def test_token_text_round_trips_and_binds_market_and_key():
    private, public = signing.generate_keypair()
    other, _ = signing.generate_keypair()
    now = time.time()
    token = mint_web_token(private, "market-a", 600, now)

    parsed = WebToken.parse(token.text())

    assert parsed == token
    parsed.verify(public, "market-a", now)
    with pytest.raises(Unauthenticated):
        parsed.verify(public, "market-b", now)
    with pytest.raises(Unauthenticated):
        parsed.verify(other.public_key(), "market-a", now)
    with pytest.raises(Unauthenticated):
        parsed.verify(public, "market-a", now + 601)
    with pytest.raises(InvalidInput):
        mint_web_token(private, "market-a", 3601, now)


def test_lwm_admin_web_token_mints_a_token_that_logs_in(world):
    from client.cli import app

    market = world["market"]
    args = ["admin", "web-token", "--server", market.address, "--key", str(market.layout.admin_key)]
    args += ["--ca", str(market.layout.ca_cert), "--ttl", "120"]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.output
    token = WebToken.parse(result.output.strip())
    assert token.expires_at - token.issued_at == 120
    logged_in_with(web(world), result.output.strip())


def test_plain_http_only_on_loopback(world):
    app = build_web_app(world["market"].running.market, "m", tls=False)

    with pytest.raises(InvalidInput, match="loopback only"):
        asyncio.run(start_web(app, "0.0.0.0:0", None))


def test_lwm_server_start_web_serves_https_and_stops_on_sigterm(tmp_path, lwm_home):
    import httpx
    from test_server_process import free_port, start_server

    from server.pki import init_server_dir

    layout = init_server_dir(tmp_path / "srv")
    web_port = free_port()
    extra = ("--web", f"127.0.0.1:{web_port}")
    proc = start_server(layout.dir, free_port(), lwm_home.root, extra=extra)
    try:
        page = httpx.get(f"https://localhost:{web_port}/", verify=str(layout.ca_cert))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)

    assert page.status_code == 200 and "Catalogue" in page.text
    assert code == 0


def test_lwm_server_start_refuses_plain_web_off_loopback(tmp_path, lwm_home):
    from server.pki import init_server_dir

    layout = init_server_dir(tmp_path / "srv")
    command = [sys.executable, "-m", "client.cli", "server", "start", "--dir", str(layout.dir)]
    command += ["--address", "127.0.0.1:0", "--insecure", "--no-smoke", "--web", "0.0.0.0:0"]
    env = {**os.environ, "LWM_HOME": str(lwm_home.root)}

    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)

    assert done.returncode == 2
    assert "loopback only" in done.stderr.splitlines()[-1]


def test_a_new_version_replaces_the_old_in_the_catalogue_and_downloads_count(tmp_path, lwm_home):
    """Issue 14, item 3 on the page: a second submission of a name is its version 2, the
    catalogue lists only that one, its page links version 1, and a fetch counts."""
    adapter = train_lora_adapter(lwm_home, tmp_path / "adapter", steps=0)
    with market_server(tmp_path, lwm_home, run_smoke=False) as market:
        first = publish_catalogue(market, lwm_home, tmp_path, adapter)["loan-memos"]
        key = signing.load_private_key(market.keys_dir / "st-marys.key")
        spec = random_rkme_spec(rkme_schema(lwm_home), seed=99)
        package = build_learnware(
            tmp_path / "v2",
            adapter=adapter,
            spec_file=write_specs(tmp_path / "v2.safetensors", [spec]),
            base=model_ref("tiny", lwm_home),
            private_key=key,
            name="loan-memos",
            domain="finance",
        )
        with market.client("st-marys") as client:
            second = client.submit(package).id
        market.new_key("uma", Role.USER)
        with market.client("uma") as uma:
            uma.fetch(second, tmp_path / "fetched.tar")
        client = web({"market": market})

        catalogue = client.get("/").text
        page = client.get(f"/learnware/{second}").text

    assert second in catalogue and first.learnware_id not in catalogue
    assert 'id="version">2<' in page and 'id="downloads">1<' in page
    assert "version 2 (this page)" in page
    assert f'<a href="/learnware/{first.learnware_id}">version 1</a>' in page
