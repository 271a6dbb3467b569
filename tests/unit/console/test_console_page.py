"""The web console's files (app/console/): served publicly by the gateway, self-contained
(no hosted assets), with the hooks the browser test relies on. The browser test itself
(tests/integration/test_console.py) runs the page in real Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from app.serving.http import CONSOLE_DIR
from tests.unit.cli.test_cli import ADMIN_KEY, World, make_api
from tests.unit.serving.test_http import request

FILES = ("index.html", "console.js", "console.css")


def test_the_page_and_its_assets_are_public_while_the_data_is_not() -> None:
    api = make_api(World())
    for name in FILES:
        answer = request(api, "GET", f"/console/{name}")
        assert answer.status_code == 200, name
    assert request(api, "GET", "/console/").text == (CONSOLE_DIR / "index.html").read_text()
    assert request(api, "GET", "/admin/models/iris").status_code == 401
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert request(api, "GET", "/admin/models/iris", headers=headers).status_code == 200


def test_no_hosted_assets() -> None:
    for name in FILES:
        text = (CONSOLE_DIR / name).read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), name
        assert "@import" not in text and "cdn" not in text.lower(), name
    script = (CONSOLE_DIR / "console.js").read_text()
    assert not re.search(r"fetch\(\s*[\"'`]https?:", script)


def test_the_page_uses_the_admin_api_with_the_key_from_session_storage() -> None:
    script = (CONSOLE_DIR / "console.js").read_text()
    assert "sessionStorage" in script and "localStorage" not in script
    assert "Authorization: `Bearer ${key}`" in script
    for path in ("/v1/models", "/admin/models/", "/drift", "/quality", "/admin/events",
                 "/rollback", "/rollout/pause", "/rollout/resume", "/rollout/abort"):  # fmt: skip
        assert path in script, path
    assert "innerHTML" not in script  # text only: no markup from the server


def test_stable_test_ids() -> None:
    page = (CONSOLE_DIR / "index.html").read_text()
    script = (CONSOLE_DIR / "console.js").read_text()
    for testid in ("key-form", "key-input", "key-submit", "key-message", "models", "events",
                   "updated", "error", "notice"):  # fmt: skip
        assert f'data-testid="{testid}"' in page, testid
    for testid in ("model-", "serving-", "traffic-", "versions-", "rollout-", "drift-",
                   "rollback-", "pause-", "resume-", "abort-", "quality-", "quality-empty-",
                   "quality-chart-", "share-chart-", "quality-legend-", "quality-table-",
                   "quality-row-", "quality-value-"):  # fmt: skip
        assert f"`{testid}${{" in script, testid


def test_the_quality_charts_are_plain_svg_without_a_library() -> None:
    script = (CONSOLE_DIR / "console.js").read_text()
    assert "createElementNS" in script and '"http://www.w3.org/2000/svg"' in script
    # 404 (no figures for the model) and 503 (no quality store) read as "nothing yet".
    assert "no quality figures yet" in script
    assert "err.status === 404 || err.status === 503" in script


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_script_parses() -> None:
    done = subprocess.run(
        ["node", "--check", str(CONSOLE_DIR / "console.js")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
