"""Issue 8 in a real browser (headless Debian Chromium on `bpnet-studio up`, fixtures of
tests/browser.py): New run shows the dataset's statistics and the search fields; a tiny AP-budget
search run (64x64, 2 iterations) whose INT8 result was calibrated on blank images completes on the
worker; Run detail charts its iterations; its float model scores AP 0 (a minute of training), so
the gate says "not meaningful" and offers no remedy (issue 12; the remedy buttons of a failed gate
are tested in tests/test_app_guided.py), and Compare shows the untrained guard. Screenshots go to test-artifacts/browser/."""

import pytest

from tests.browser import RUN_TIMEOUT_S, shot
from tests.conftest import TINY_RUN_TRAIN as TINY_TRAIN
from tests.test_guided_worker import blank_images, search_run_spec
from worker import client
from worker.config import load_config

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_search_chart_and_untrained_gate_in_the_browser(studio, browser_page, tmp_path):
    from playwright.sync_api import expect

    config = load_config({"BPNET_STUDIO_HOME": str(tmp_path / "studio")})
    spec = search_run_spec(blank_images(tmp_path / "blank"))
    spec.update(name="browser guided search", search={"budget_ap": 2.0, "max_iters": 2},
                train={**TINY_TRAIN, "steps_per_epoch": 3})
    run_id = client.submit_run(spec, config=config)

    page = browser_page(height=3200)

    # New run: the bundled data's statistics and advice; the search kind's fields.
    page.goto(f"{studio}/new")
    expect(page.get_by_text("Recommended input resolution")).to_be_visible()
    page.get_by_text("AP-budget search: the smallest model within my AP budget").click()
    expect(page.get_by_label("AP budget (largest AP drop, points)", exact=True)).to_be_visible()
    shot(page, "guided-1-new-run-search")

    # Run detail: wait for the worker; the iteration chart and the failed gate appear.
    page.goto(f"{studio}/run?run={run_id}")
    expect(page.get_by_test_id("stMetricValue").first).to_have_text("completed",
                                                                   timeout=RUN_TIMEOUT_S * 1000)
    chart = page.locator(".js-plotly-plot", has_text="AP per iteration").first
    expect(chart).to_be_visible()
    expect(page.get_by_text("Chosen:")).to_be_visible()
    expect(page.get_by_text("not meaningful: the float model finds nobody").first).to_be_visible()
    expect(page.get_by_role("button", name="Calibrate on more or different images")).to_have_count(0)
    shot(page, "guided-2-run-detail-search-and-gate")

    # Compare: no Pareto front of AP-0 results, the guard instead.
    page.goto(f"{studio}/compare")
    expect(page.get_by_text("all results have AP 0 — the base model is untrained")).to_be_visible()
    shot(page, "guided-3-compare-gate-failed")
