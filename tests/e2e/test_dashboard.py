"""The dashboard in a real browser: Debian's headless Chromium (/usr/bin/chromium, installed by
`.ci/run`; never a downloaded browser) driven by Playwright, against a `stepline serve` process
and a worker process (tests/e2e/apps/dashboard_app.py) with real runs.

SQLite only: the pages read through the same engine calls on both backends, and
tests/integration/test_http.py checks those on SQLite and PostgreSQL; a second browser pass
would double the time without covering more. Screenshots go to .artifacts/screenshots/; the
README's docs/dashboard-run.png is written when missing or when STEPLINE_UPDATE_DOCS=1.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.procs import REPO, free_port, start_server, start_worker, stop, wait_for

CHROMIUM = Path("/usr/bin/chromium")
# As the machine notes ask: a closed network, no first-run or background work.
CHROMIUM_ARGS = ["--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SCREENSHOTS = REPO / ".artifacts" / "screenshots"
DOCS_SCREENSHOT = REPO / "docs" / "dashboard-run.png"
DASHBOARD_LINE = re.compile(r"stepline: dashboard on (http://\S+)")
RUN_TIMEOUT = 20.0
UI_TIMEOUT_MS = 15_000
APP = "tests.e2e.apps.dashboard_app:app"


@dataclass
class Dashboard:
    url: str
    api: httpx.Client

    def send(self, name: str, data: dict[str, Any]) -> str:
        response = self.api.post("/api/events", json={"name": name, "data": data})
        assert response.status_code == 201, response.text
        (run_id,) = response.json()["run_ids"]
        return str(run_id)

    def wait(self, run_id: str, *statuses: str) -> dict[str, Any]:
        wanted = set(statuses) or {"completed", "failed", "cancelled"}

        def reached() -> dict[str, Any] | None:
            run: dict[str, Any] = self.api.get(f"/api/runs/{run_id}").json()["run"]
            return run if run["status"] in wanted else None

        found: dict[str, Any] = wait_for(reached, RUN_TIMEOUT, f"run {run_id} {wanted}")
        return found


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """`stepline serve` on SQLite with the dashboard on a free port, and one worker."""
    workdir = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    log = workdir / "server.log"
    server = start_server(f"sqlite:///{workdir / 'dashboard.db'}", port, log,
                          env={"STEPLINE_RETRY_BASE_SECONDS": "0.2"})
    worker: subprocess.Popen[bytes] | None = None
    try:
        match = wait_for(lambda: DASHBOARD_LINE.search(log.read_text()), 10,
                         "the dashboard line on the server's output")
        worker = start_worker(APP, port, workdir / "worker.log")
        with httpx.Client(base_url=match.group(1), timeout=10) as api:
            wait_for(lambda: api.get("/api/workers").json()["workers"], 20, "a worker")
            yield Dashboard(match.group(1), api)
    finally:
        if worker is not None:
            stop(worker)
        stop(server)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests use Debian's Chromium; install "
                    "it with `apt-get install -y chromium` (.ci/run does this)", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS, timeout=30_000)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    expect.set_options(timeout=UI_TIMEOUT_MS)
    page = context.new_page()
    blocked = csp_violations(page)
    yield page
    context.close()
    assert not blocked, f"the Content-Security-Policy blocked: {blocked}"


def csp_violations(page: Page) -> list[str]:
    """What the browser reports blocking under the pages' Content-Security-Policy."""
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text)
            if "Content Security Policy" in message.text else None)
    return blocked


@pytest.fixture(scope="module")
def runs(dashboard: Dashboard) -> dict[str, str]:
    """One run of each kind, in the state the tests expect: completed after a retry, asleep
    for an hour, waiting for an event, failed."""
    made = {
        "signup": dashboard.send("demo/user.signup", {"userId": "usr_123"}),
        "nap": dashboard.send("demo/nap", {}),
        "approval": dashboard.send("demo/approval.requested", {"orderId": 7}),
        "order": dashboard.send("demo/order.placed", {"amount": 42}),
    }
    dashboard.wait(made["signup"])
    dashboard.wait(made["nap"], "sleeping")
    dashboard.wait(made["approval"], "waiting")
    dashboard.wait(made["order"])
    return made


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def row(page: Page, run_id: str) -> Any:
    return page.locator(f'tr[data-run-id="{run_id}"]')


def test_runs_page_lists_runs_and_shows_new_ones_live(
        page: Page, dashboard: Dashboard, runs: dict[str, str]) -> None:
    page.goto(f"{dashboard.url}/")
    expect(page).to_have_url(f"{dashboard.url}/runs")
    for key, status in [("signup", "completed"), ("nap", "sleeping"),
                        ("approval", "waiting"), ("order", "failed")]:
        expect(row(page, runs[key]).locator(".pill")).to_have_text(status)
    expect(row(page, runs["signup"])).to_contain_text("welcome-email")
    shot(page, "runs")

    # A run started elsewhere appears, then finishes, without a reload.
    new = dashboard.send("demo/user.signup", {"userId": "usr_live"})
    expect(row(page, new).locator(".pill")).to_have_text("completed")

    page.select_option("select[name=status]", "failed")
    page.click("form.filters button[type=submit]")
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(row(page, runs["order"])).to_be_visible()


def test_run_page_shows_the_timeline(page: Page, dashboard: Dashboard,
                                     runs: dict[str, str]) -> None:
    page.goto(f"{dashboard.url}/runs/{runs['signup']}")
    timeline = page.locator(".waterfall")
    labels = timeline.locator(".wf-row:not(.wf-axis) .wf-label")
    expect(labels).to_have_text(["run", "fetch-user", "send-email \u00d7 2", "cool-down",
                                 "mark-sent"])
    email = timeline.locator('.wf-row[data-step-id="send-email"]')
    expect(email.locator(".bar-attempt-failed")).to_have_count(1)
    expect(email.locator(".bar-completed")).to_have_count(1)
    expect(page.locator(".step", has_text="send-email")).to_contain_text(
        "ConnectionError: smtp: connection reset by peer")
    expect(page.locator("#run-output")).to_contain_text('"messageId": "msg_usr_123"')
    expect(page.locator("#event-data")).to_contain_text('"userId": "usr_123"')
    shot(page, "run")
    if not DOCS_SCREENSHOT.exists() or os.environ.get("STEPLINE_UPDATE_DOCS") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS_SCREENSHOT))


def test_sleep_and_wait_are_shown_as_such_and_cancel(
        page: Page, dashboard: Dashboard, runs: dict[str, str]) -> None:
    page.goto(f"{dashboard.url}/runs/{runs['approval']}")
    approved = page.locator('.wf-row[data-step-id="approved"]')
    expect(approved.locator(".bar-waiting")).to_have_count(1)
    expect(approved.locator(".wf-took")).to_contain_text("waiting for an event until")
    shot(page, "run-waiting")

    page.goto(f"{dashboard.url}/runs/{runs['nap']}")
    nap = page.locator('.wf-row[data-step-id="nap"]')
    expect(nap.locator(".bar-sleeping.open")).to_have_count(1)
    expect(nap.locator(".wf-took")).to_contain_text("sleeping until")
    shot(page, "run-sleeping")
    page.click("text=Cancel")
    expect(page.locator("h1 .pill")).to_have_text("cancelled")
    expect(page.locator(".actions")).not_to_contain_text("Cancel")
    assert dashboard.wait(runs["nap"])["status"] == "cancelled"


def test_failed_run_replay_follows_the_new_run_live(
        page: Page, dashboard: Dashboard, runs: dict[str, str]) -> None:
    page.goto(f"{dashboard.url}/runs/{runs['order']}")
    expect(page.locator("h1 .pill")).to_have_text("failed")
    expect(page.locator(".side")).to_contain_text("card declined for 42 EUR")
    charge = page.locator('.wf-row[data-step-id="charge"]')
    expect(charge.locator(".bar-attempt-failed")).to_have_count(1)
    expect(charge.locator(".bar-failed")).to_have_count(1)
    shot(page, "run-failed")

    page.click("button:has-text('Replay')")
    expect(page).not_to_have_url(f"{dashboard.url}/runs/{runs['order']}")
    expect(page.locator("dl.meta.card")).to_contain_text(runs["order"])  # "Made from"
    # The replay retries with backoff for a moment; the page follows it to its end.
    expect(page.locator("#run-region[data-ended=true] h1 .pill")).to_have_text("failed")
    replay_id = page.url.rsplit("/", 1)[1]
    assert dashboard.wait(replay_id)["source_run_id"] == runs["order"]


def test_rerun_from_a_step(page: Page, dashboard: Dashboard, runs: dict[str, str]) -> None:
    page.goto(f"{dashboard.url}/runs/{runs['signup']}")
    page.locator("details.step", has_text="mark-sent").locator("summary").click()
    page.locator("details.step", has_text="mark-sent").locator(
        "button:has-text('Rerun from this step')").click()
    expect(page).not_to_have_url(f"{dashboard.url}/runs/{runs['signup']}")
    expect(page.locator("#run-region[data-ended=true] h1 .pill")).to_have_text("completed")
    rerun = dashboard.wait(page.url.rsplit("/", 1)[1])
    # The steps before mark-sent were kept, not executed again (send-email would fail once).
    email = next(s for s in rerun["steps"] if s["step_id"] == "send-email")
    assert email["output"] == "msg_usr_123" and rerun["source_run_id"] == runs["signup"]


def test_send_a_test_event_from_the_form(page: Page, dashboard: Dashboard,
                                         runs: dict[str, str]) -> None:
    runs_page = page.context.new_page()
    runs_page.goto(f"{dashboard.url}/runs")
    page.goto(f"{dashboard.url}/events")
    expect(page.locator(f'tr[data-event-id] a[href="/runs/{runs["order"]}"]')).to_be_visible()

    page.fill("#event-name", "demo/user.signup")
    page.fill("#event-data", '{"userId": ')
    page.click("#send-event button[type=submit]")
    expect(page.locator(".form-error")).to_contain_text("data: malformed JSON")
    expect(page.locator("#event-data")).to_have_attribute("aria-invalid", "true")

    page.fill("#event-data", '{"userId": "usr_form"}')
    page.click("#send-event button[type=submit]")
    expect(page.locator("#sent-notice")).to_be_visible()
    shot(page, "events")
    run_link = page.locator("tr.highlight a.run-link")
    expect(run_link).to_have_count(1)
    run_id = run_link.inner_text()

    # The runs page, open all along, shows the new run and sees it finish.
    expect(row(runs_page, run_id).locator(".pill")).to_have_text("completed")
    runs_page.close()
    run_link.click()
    expect(page.locator("h1 .pill")).to_have_text("completed")
    expect(page.locator("#event-data")).to_contain_text("usr_form")


def test_functions_and_workers_pages(page: Page, dashboard: Dashboard,
                                     runs: dict[str, str]) -> None:
    page.goto(f"{dashboard.url}/functions")
    # Functions by full name, <app_id>:<function_id>, in rows, links and headings.
    for function_id in ("welcome-email", "hourly-nap", "approval", "charge-card"):
        expect(page.locator(f'tr[data-function-id="dashboard-e2e:{function_id}"]')
               ).to_be_visible()
    expect(page.locator('tr[data-function-id="dashboard-e2e:charge-card"] .rate')
           ).to_have_text("0 %")
    expect(page.locator('tr[data-function-id="dashboard-e2e:welcome-email"]')).to_contain_text(
        "demo/user.signup")
    shot(page, "functions")
    page.click("a:has-text('dashboard-e2e:welcome-email')")
    expect(page).to_have_url(f"{dashboard.url}/functions/dashboard-e2e:welcome-email")
    expect(page.locator("h1")).to_have_text("dashboard-e2e:welcome-email")
    expect(page.locator(".stat").first).to_contain_text("100 %")
    expect(row(page, runs["signup"])).to_be_visible()
    shot(page, "function")

    page.goto(f"{dashboard.url}/workers")
    worker = page.locator("tr[data-connection-id]")
    expect(worker).to_have_count(1)
    expect(worker).to_contain_text("dashboard-e2e")
    expect(worker).to_contain_text("/ 4")  # the worker's slots (start_worker's default)
    expect(worker.locator("a.trigger")).to_have_count(4)
    shot(page, "workers")
