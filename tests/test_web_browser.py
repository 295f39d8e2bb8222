"""The web page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by selenium) against a real market serving ``--web`` over HTTPS
with real learnwares. ``.ci/run`` installs the browser; without it these tests skip.

Set ``LWM_WEB_SCREENSHOTS=docs/img`` to save the screenshots README shows.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import train_lora_adapter
from market_fixtures import market_server
from web_fixtures import admin_token, publish_catalogue

try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait
except ImportError:  # pragma: no cover - the dev extras install it
    webdriver = None

MISSING = [
    what
    for what, present in (
        ("chromium", shutil.which("chromium")),
        ("chromedriver", shutil.which("chromedriver")),
        ("selenium", webdriver),
    )
    if not present
]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"needs {', '.join(MISSING)} (apt-get install chromium chromium-driver; "
    "pip install selenium): .ci/run installs them",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory, lwm_home):
    tmp = tmp_path_factory.mktemp("web-browser")
    adapter = train_lora_adapter(lwm_home, tmp / "adapter")
    with market_server(tmp, lwm_home, run_smoke=False, web_address="127.0.0.1:0") as market:
        published = publish_catalogue(market, lwm_home, tmp, adapter)
        assert market.running.web is not None
        yield {"market": market, "published": published, "url": market.running.web.url}


def chromium() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,900")
    options.accept_insecure_certs = True  # the market's own CA signed its certificate
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    yield from chromium()


def arrive(driver: webdriver.Chrome, url: str) -> None:
    """Wait until a click's navigation has landed on ``url``."""
    WebDriverWait(driver, 15).until(expected_conditions.url_to_be(url))


def screenshot(driver: webdriver.Chrome, name: str) -> None:
    folder = os.environ.get("LWM_WEB_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def test_catalogue_link_budget_and_admin_login(world, browser):
    pub = world["published"]["cardiology-notes"]
    base = world["url"]

    browser.get(base + "/")
    screenshot(browser, "catalogue")
    browser.find_element(By.LINK_TEXT, "cardiology-notes").click()
    arrive(browser, f"{base}/learnware/{pub.learnware_id}")
    screenshot(browser, "learnware")
    total = browser.find_element(By.CSS_SELECTOR, "#total-budget .total")
    name = browser.find_element(By.ID, "learnware-name").text

    assert name == "cardiology-notes"
    assert float(total.get_attribute("data-epsilon")) == pub.manifest.dp.total.epsilon
    assert total.text.startswith(f"ε = {pub.manifest.dp.total.epsilon:.3g}")

    browser.get(base + "/admin/keys")
    browser.find_element(By.ID, "token").send_keys(admin_token(world["market"], time.time()).text())
    browser.find_element(By.ID, "login").click()
    arrive(browser, f"{base}/admin/keys")
    keys = browser.find_element(By.CSS_SELECTOR, "table.keys").text

    assert world["market"].layout.admin_key_id in keys and "St Mary's Hospital" in keys
    session = browser.get_cookie("lwm_session")
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"

    browser.find_element(By.ID, "logout").click()
    arrive(browser, f"{base}/")
    browser.get(base + "/admin/keys")
    assert browser.current_url == f"{base}/admin/login"


def test_a_stranger_cannot_reach_the_admin_view_or_log_in(world, browser):
    base = world["url"]
    inner = world["market"].running.market
    before = (inner.store.stats(), inner.list_keys(include_revoked=True))

    for page in ("/admin", "/admin/keys", "/admin/submissions", "/admin/stats"):
        browser.get(base + page)
        assert browser.current_url == f"{base}/admin/login", page
        assert not browser.find_elements(By.CSS_SELECTOR, "table.keys"), page
    browser.find_element(By.ID, "token").send_keys("lwmweb1.made.up.token.for.fun")
    browser.find_element(By.ID, "login").click()
    error = WebDriverWait(browser, 15).until(
        expected_conditions.presence_of_element_located((By.ID, "login-error"))
    ).text
    browser.get(base + "/admin/keys")

    assert "login token" in error
    assert browser.get_cookie("lwm_session") is None
    assert browser.current_url == f"{base}/admin/login"
    assert (inner.store.stats(), inner.list_keys(include_revoked=True)) == before
