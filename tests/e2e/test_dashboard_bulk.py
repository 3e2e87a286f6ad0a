"""The dashboard's operator controls in a real browser (see test_dashboard.py for the set-up):
a bulk cancel from a runs-page filter, confirmed with its count, followed on the Bulk page;
pausing and resuming a function from its page."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.e2e import test_dashboard as base
from tests.e2e.procs import wait_for
from tests.e2e.test_dashboard import Dashboard, row, shot

# The browser, the page and the dashboard (server and worker) of test_dashboard.py: this
# module gets its own server, so its runs do not change what those tests count.
browser, page, dashboard = base.browser, base.page, base.dashboard

NAP = "dashboard-e2e:hourly-nap"
ACME = 'event.data.tenant == "acme"'


def test_bulk_cancel_from_a_filter_with_a_confirmation_that_states_the_count(
        page: Page, dashboard: Dashboard) -> None:
    naps = {tenant: [dashboard.send("demo/nap", {"tenant": tenant}) for _ in range(2)]
            for tenant in ("acme", "zeta")}
    for run_id in naps["acme"] + naps["zeta"]:
        dashboard.wait(run_id, "sleeping")

    page.goto(f"{dashboard.url}/runs")
    page.select_option("select[name=function]", NAP)
    page.fill("input[name=if]", ACME)
    page.click("form.filters:not(.bulk-actions) button[type=submit]")
    expect(page.locator("#runs-region tbody tr")).to_have_count(2)
    for run_id in naps["acme"]:
        expect(row(page, run_id)).to_be_visible()

    page.click("text=Cancel unfinished…")
    expect(page.locator("h1")).to_have_text("Cancel 2 runs?")
    expect(page.locator(".confirm-count")).to_contain_text(NAP)
    expect(page.locator(".confirm-count")).to_contain_text(ACME)
    shot(page, "bulk-confirm")
    page.click("#bulk-confirm button[type=submit]")
    expect(page.locator("#operation-region .state")).to_have_text("done")
    expect(page.locator("#operation-region .progress")).to_contain_text("2 / 2 examined, 2 "
                                                                        "cancelled")
    for run_id in naps["acme"]:
        assert dashboard.wait(run_id)["status"] == "cancelled"
    for run_id in naps["zeta"]:
        assert dashboard.api.get(f"/api/runs/{run_id}").json()["run"]["status"] == "sleeping"

    page.click("nav >> text=Bulk")
    expect(page.locator("#bulk-operations tbody tr")).to_have_count(1)
    expect(page.locator("#bulk-operations .progress")).to_contain_text("2 / 2")
    shot(page, "bulk")


def test_pause_and_resume_a_function_from_its_page(page: Page,
                                                   dashboard: Dashboard) -> None:
    page.goto(f"{dashboard.url}/functions/{NAP}")
    page.click("button:text-is('Pause')")
    expect(page.locator("#paused-tag")).to_have_text("paused")
    sent = dashboard.api.post("/api/events", json={"name": "demo/nap", "data": {"n": 1}})
    assert sent.status_code == 201 and sent.json()["run_ids"] == []
    page.reload()
    expect(page.locator("#pause-counts")).to_contain_text("1 held")

    page.click("button:text-is('Resume')")
    expect(page.locator("#paused-tag")).to_have_count(0)

    wait_for(lambda: wait_ids(dashboard, sent.json()["id"]), 20, "the held run to start")


def wait_ids(dashboard: Dashboard, event_id: str) -> bool:
    events = dashboard.api.get("/api/events", params={"limit": 50}).json()["events"]
    return any(e["id"] == event_id and e["run_ids"] for e in events)
