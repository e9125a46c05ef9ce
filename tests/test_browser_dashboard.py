"""Issue 12 in a real browser (headless Debian Chromium on `bpnet-studio up`, fixtures of
tests/browser.py): `/runs` opens Runs and a click on a row opens its run; a tiny real run (64x64, a few training steps: AP 0) shows
the "untrained" guard instead of a Pareto front and, on its result, ground truth and prediction
drawn in two colours on an image with annotated people; on synthetic results (bench/seed_store.py)
a click on a Compare point opens that result and the config diff lists only what differs.
Screenshots go to test-artifacts/browser/."""

import pytest

from bench import seed_store
from tests.conftest import COCO_ANNOTATIONS, COCO_IMAGES, TINY_RUN_TRAIN
from tests.browser import RUN_TIMEOUT_S, SHOTS, shot
from worker import client
from worker.config import load_config

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def tiny_run_spec():
    return {"name": "browser untrained", "dataset": {"annotations": str(COCO_ANNOTATIONS), "images": str(COCO_IMAGES)},
            "train": TINY_RUN_TRAIN, "resolutions": [[64, 64]], "prune_thresholds": [], "retrain_epochs": 0,
            "evaluate_unpruned": True, "precisions": ["fp32"], "benchmark": {"runs": 3, "warmup": 1},
            "eval_max_images": 12}


def test_runs_path_guard_and_ground_truth_pictures(studio, browser_page, tmp_path):
    from playwright.sync_api import expect

    config = load_config({"BPNET_STUDIO_HOME": str(tmp_path / "studio")})
    run_id = client.submit_run(tiny_run_spec(), config=config)
    page = browser_page()
    page.goto(f"{studio}/runs")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    expect(page.get_by_text("Page not found")).to_have_count(0)
    shot(page, "dash-1-runs-path")

    page.goto(f"{studio}/run?run={run_id}")
    expect(page.get_by_test_id("stMetricValue").first).to_have_text("completed",
                                                                   timeout=RUN_TIMEOUT_S * 1000)
    expect(page.get_by_text("all results have AP 0 — the base model is untrained")).to_be_visible()
    legend = page.get_by_text("green: ground truth · magenta: prediction", exact=False)
    expect(legend.first).to_be_visible()
    pictures = page.locator('[data-testid="stImage"] img')
    expect(pictures.first).to_be_visible()
    expect(page.get_by_text("annotated · mean OKS").first).to_be_visible()
    shot(page, "dash-2-untrained-guard-and-pictures")

    page.goto(f"{studio}/compare")
    expect(page.get_by_text("all results have AP 0 — the base model is untrained")).to_be_visible()
    expect(page.get_by_test_id("stVegaLiteChart").filter(has_text="Pareto front")).to_have_count(0)
    shot(page, "dash-3-compare-guard")

    # a click on the finished run's name in the Runs table opens it
    page.goto(f"{studio}/runs")
    page.get_by_role("link", name="browser untrained").click()
    page.wait_for_url(f"**/run?run={run_id}")
    expect(page.get_by_test_id("stMetricValue").first).to_have_text("completed")


def test_compare_point_and_row_open_their_result_and_diff_lists_only_differences(studio, browser_page, tmp_path):
    from playwright.sync_api import expect

    config = load_config({"BPNET_STUDIO_HOME": str(tmp_path / "studio")})
    run_id = seed_store.seed_finished_run(config, name="synthetic compare", thresholds=(0.5,),
                                          precisions=("fp32", "int8"))
    results = client.list_results([run_id], config=config)
    unpruned = {r["precision"]: r["stage_id"] for r in results if r["pth"] is None}
    page = browser_page()

    # the permalink of a diff of two results that differ in precision only
    page.goto(f"{studio}/compare?a={unpruned['fp32']}&b={unpruned['int8']}")
    expect(page.get_by_text("1 field(s) differ")).to_be_visible()
    diff = page.locator("table.bp-table").filter(has_text="result.precision")
    expect(diff.get_by_role("cell", name="result.precision", exact=True)).to_be_visible()
    expect(diff.locator("td", has_text="spec.")).to_have_count(0)
    shot(page, "dash-4-config-diff")

    # a click on a chart point opens its result on Run detail
    chart = page.get_by_test_id("stVegaLiteChart").filter(has_text="Pareto front").first
    expect(chart).to_be_visible()
    point = chart.locator("g.results_marks path").first
    expect(point).to_be_visible()
    chart.screenshot(path=str(SHOTS / "dash-4b-pareto-chart.png"))
    point.click(force=True)
    page.wait_for_url("**/run?**")
    expect(page.get_by_role("heading", name="Run detail")).to_be_visible()
    assert f"run={run_id}" in page.url and "result=" in page.url
    opened = page.url.split("result=")[1].split("&")[0]
    assert opened in {r["stage_id"] for r in results}
    expect(page.get_by_text("One result: deployables and pictures")).to_be_visible()
    shot(page, "dash-5-point-opened-result")

    # and a run's name in the results table opens that row's result
    page.goto(f"{studio}/compare")
    table = page.locator("table.bp-table").filter(has_text="latency (median)")
    table.get_by_role("link", name="synthetic compare").nth(1).click()
    page.wait_for_url("**/run?**")
    expect(page.get_by_text("One result: deployables and pictures")).to_be_visible()
    assert f"run={run_id}" in page.url and page.url.split("result=")[1] in {r["stage_id"] for r in results}
