"""The web console (/console) in real headless Chromium (Debian's ``chromium``), driven by
Playwright against the real stack: it asks for the key, shows every served model, and a
click on "Roll back" performs a rollback that the page then shows without a reload.

Screenshots land in tests/artifacts/ (console.png, and console-full.png of the whole page);
with MODELLANE_UPDATE_SCREENSHOT=1, console.png is also copied to docs/console.png, the one
the README shows.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from tests.helpers import ADMIN_KEY, REPO
from tests.integration.roles import Roles

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
ARTIFACTS = REPO / "tests" / "artifacts"
SCREENSHOT = ARTIFACTS / "console.png"
README_SCREENSHOT = REPO / "docs" / "console.png"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"the page raised: {errors}"


def _serving(client: httpx.Client, model: str) -> str | None:
    answer = client.get(f"/admin/models/{model}")
    assert answer.status_code == 200, answer.text
    return answer.json()["serving_version"]


def test_console_shows_every_model_and_rolls_back(
    page: Any, client: httpx.Client, gateway: str, registry: str, roles: Roles
) -> None:
    from playwright.sync_api import expect

    # swapper gets a previous champion: promote its other version through MLflow (conftest
    # puts the champion back after the test).
    serving = _serving(client, "swapper")
    assert serving is not None
    other = "2" if serving == "1" else "1"
    roles.set("swapper", champion=other)
    names = [m["name"] for m in client.get("/v1/models").json()["models"]]

    page.goto(f"{gateway}/console")
    expect(page.get_by_test_id("key-form")).to_be_visible()
    page.get_by_test_id("key-input").fill("ml_not_a_key")
    page.get_by_test_id("key-submit").click()
    expect(page.get_by_test_id("key-message")).to_contain_text("401", timeout=15_000)
    page.get_by_test_id("key-input").fill(ADMIN_KEY)
    page.get_by_test_id("key-submit").click()
    expect(page.get_by_test_id("key-form")).to_be_hidden()

    for name in names:
        expect(page.get_by_test_id(f"model-{name}")).to_be_visible(timeout=30_000)
        expect(page.get_by_test_id(f"serving-{name}")).to_have_text(f"v{_serving(client, name)}")
    expect(page.locator("[data-testid^='model-']")).to_have_count(len(names))
    expect(page.get_by_test_id("events").locator("[data-testid='event']").first).to_be_visible()
    swapper = page.get_by_test_id("model-swapper")
    expect(swapper.get_by_test_id("serving-swapper")).to_have_text(f"v{other}")
    expect(swapper.get_by_test_id("rollback-swapper")).to_be_enabled()
    expect(swapper.get_by_test_id("rollback-swapper")).to_have_text(f"Roll back to v{serving}")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("rollback-swapper").click()
    expect(page.get_by_test_id("notice")).to_contain_text(f"v{other} → v{serving}", timeout=150_000)
    # The page follows by itself (no reload): the new serving version and the event.
    expect(page.get_by_test_id("serving-swapper")).to_have_text(f"v{serving}", timeout=30_000)
    expect(page.get_by_test_id("events")).to_contain_text("rollback", timeout=30_000)
    assert _serving(client, "swapper") == serving
    champion = MlflowClient(registry).get_model_version_by_alias("swapper", "champion")
    assert str(champion.version) == serving

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-full.png"), full_page=True)
    # The filter narrows the page to one model: the README's picture.
    page.get_by_test_id("filter").fill("swapper")
    expect(page.get_by_test_id("model-iris")).to_be_hidden()
    expect(page.get_by_test_id("count")).to_have_text(f"1 of {len(names)} models")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SCREENSHOT))
    if os.environ.get("MODELLANE_UPDATE_SCREENSHOT") == "1":
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SCREENSHOT, README_SCREENSHOT)


def test_a_refused_key_asks_for_the_key_again(page: Any, gateway: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{gateway}/console/")
    # Let the first load settle (it asks for a key) before planting one: a start-up still
    # under way would otherwise try the planted key, and forget it, before the reload.
    expect(page.get_by_test_id("key-form")).to_be_visible(timeout=30_000)
    page.evaluate("sessionStorage.setItem('modellane.adminKey', 'ml_stale_key')")
    page.reload()
    expect(page.get_by_test_id("key-message")).to_contain_text("refused the key", timeout=30_000)
    expect(page.get_by_test_id("key-form")).to_be_visible()
