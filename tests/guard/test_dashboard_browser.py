"""The dashboard in headless Chromium (Debian's /usr/bin/chromium through Playwright): sign in,
start the demo run, watch it reach 100 %, and check the numbers shown against `guard export`.

Saves `reports/dashboard-midrun.png` and `reports/dashboard.png`.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest

if TYPE_CHECKING:
    from conftest_web import Dashboard

pytest_plugins = ["conftest_web"]
pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
REPORTS = Path(__file__).resolve().parents[2] / "reports"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's Chromium at /usr/bin/chromium "
                    "(apt-get install -y chromium); Playwright never downloads one here")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                             headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_dashboard_follows_the_demo_run_live_and_shows_the_exported_numbers(
    dashboard: Dashboard, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    outside: list[str] = []
    problems: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(dashboard.url) else outside.append(
        r.url))
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

    page.goto(f"{dashboard.url}/")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", "not-a-token")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("not valid")
    problems.clear()  # the refused sign-in logs a 401 in the console, as it should
    page.fill("#token", dashboard.tokens["all"])
    page.click("#login-form button[type=submit]")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#who")).to_have_text("tenants: hr, it")
    cookie = next(c for c in page.context.cookies() if c["name"] == "tg_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert dashboard.tokens["all"] not in cookie["value"]

    # The button is enabled once the experiments list has arrived (it names the demo spec).
    expect(page.locator("#start-demo")).to_be_enabled()
    page.click("#start-demo")
    try:
        page.wait_for_function(
            "() => { const p = +document.querySelector('#progress').dataset.percent;"
            " return p >= 10 && p <= 90; }", polling=50, timeout=60_000)
    except Exception as exc:
        state = page.eval_on_selector("#run", "e => e.innerText.slice(0, 600)")
        with dashboard.client() as client:
            runs = client.get("/api/runs").json()["runs"][:3]
        raise AssertionError(f"never saw the run mid-way: {state!r} {runs!r} {problems!r}") \
            from exc
    expect(page.locator("#run-status")).to_have_text("running")
    with contextlib.suppress(Exception):  # for the picture only: let the first numbers arrive
        page.wait_for_function(
            "() => document.querySelectorAll('#chart svg rect').length > 6"
            " && document.querySelectorAll('#cases tr.case').length > 6"
            " && +document.querySelector('#progress').dataset.percent < 100",
            polling=50, timeout=5_000)
    REPORTS.mkdir(exist_ok=True)
    page.screenshot(path=str(REPORTS / "dashboard-midrun.png"))

    page.wait_for_function(
        "() => document.querySelector('#progress').dataset.percent === '100'"
        " && document.querySelector('#run-status').textContent === 'finished'",
        polling=100, timeout=90_000)
    run_id = page.locator("#run-title").text_content().split(" · ")[-1]
    summary = dashboard.wait(run_id)
    total = summary["run"]["total"]
    assert total == 132
    expect(page.locator("#bar-label")).to_have_text(f"{total} / {total} cases (100 %)")
    progress = summary["progress"]
    expect(page.locator("#stat-errors")).to_have_text(str(progress["errors"]))
    expect(page.locator("#stat-retries")).to_have_text(str(progress["retries"]))
    expect(page.locator("#stat-eta")).to_have_text("done")
    expect(page.locator("#cancel")).to_be_hidden()

    # Every mean shown equals the mean over the scored cases of `guard export`.
    out = tmp_path / "export.csv"
    subprocess.run([str(dashboard.guard_cli), "--data-dir", str(dashboard.data_dir), "export",
                    run_id, "--out", str(out)], check=True, cwd=tmp_path, capture_output=True)
    frame = pd.read_csv(out)
    scored = frame[frame["status"] == "scored"]
    cells = page.eval_on_selector_all(
        "#metrics td.mean[data-metric]",
        "els => els.map(e => [e.dataset.variant, e.dataset.metric, e.dataset.mean,"
        " e.firstChild.textContent])")
    assert {c[0] for c in cells} == {"hybrid", "dense", "lexical"} and len(cells) >= 24
    for variant, metric, mean, shown in cells:
        expected = scored.loc[scored["variant"] == variant, metric].dropna().mean()
        assert math.isclose(float(mean), expected, rel_tol=1e-9, abs_tol=1e-12), (variant,
                                                                                 metric)
        assert shown == f"{expected:.3f}", (variant, metric, shown)
    assert page.locator("#chart svg rect").count() > 20

    # The case table: every case, failures first; a row expands to the case's details.
    expect(page.locator("#case-count")).to_have_text(f"{total} of {total}, failures first")
    page.select_option("#case-filter select[name=variant]", "hybrid")
    expect(page.locator("#case-count")).to_have_text("44 of 44, failures first")
    tool_case = page.locator("#cases tr.case", has_text="hr-tool-book-annual")
    tool_case.click()
    detail = page.locator("#cases tr.detail:visible")
    expect(detail).to_have_count(1)
    for label in ("question", "answer", "contexts", "tool calls", "scores"):
        expect(detail.locator("dt", has_text=label).first).to_be_visible()
    expect(detail).to_contain_text("tools.selection_f1")
    page.screenshot(path=str(REPORTS / "dashboard.png"), full_page=True)

    assert outside == [], outside
    assert problems == [], problems
    page.close()
