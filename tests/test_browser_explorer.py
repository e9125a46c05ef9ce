"""Issue 18 in a real browser (headless Debian Chromium on `bpnet-studio up`, fixtures of
tests/browser.py): a tiny explorer run (an untrained 2-stage model, 64x64 and 64x96, FP32 and
INT8, 8 images) runs on the worker; Run detail draws its charts and tables, flags that the
model finds nobody, and an "Export" button opens New run with that point's export run
pre-filled. Its points are Compare rows carrying the stage exit and resolution.
Screenshots go to test-artifacts/browser/."""

import pytest

from tests.conftest import COCO_ANNOTATIONS, COCO_IMAGES
from tests.browser import RUN_TIMEOUT_S, shot
from worker import client
from worker.config import load_config

pytestmark = [pytest.mark.browser, pytest.mark.slow]
def test_explorer_charts_render_for_a_finished_explorer_run(studio, browser_page, tmp_path):
    from playwright.sync_api import expect

    from tests.tiny_models import save_tiny_model

    config = load_config({"BPNET_STUDIO_HOME": str(tmp_path / "studio")})
    model = save_tiny_model(tmp_path / "tiny2.hdf5", stages=2)
    spec = {"name": "browser explorer", "kind": "explore", "model": str(model),
            "dataset": {"annotations": str(COCO_ANNOTATIONS), "images": str(COCO_IMAGES)},
            "resolutions": [[64, 64], [64, 96]], "precisions": ["fp32", "int8"],
            "calibration": {"batch_size": 2, "batches": 2}, "eval_max_images": 8}
    run_id = client.submit_run(spec, config=config)

    page = browser_page(height=3600)
    page.goto(f"{studio}/run?run={run_id}")
    expect(page.get_by_test_id("stMetricValue").first).to_have_text("completed",
                                                                   timeout=RUN_TIMEOUT_S * 1000)
    expect(page.get_by_role("heading", name="Resolution and stages explorer")).to_be_visible()
    # the three charts: AP vs latency with the oracle lines, AP by resolution, latency by people
    expect(page.locator(".js-plotly-plot", has_text="oracle 64×96").first).to_be_visible()
    expect(page.locator(".js-plotly-plot", has_text="AP medium · stage 2").first).to_be_visible()
    expect(page.locator(".js-plotly-plot", has_text="decoding").first).to_be_visible()
    shot(page, "explorer-1-run-detail")
    expect(page.get_by_text("the model finds nobody here")).to_be_visible()
    expect(page.get_by_text("AP-medium gain per resolution step")).to_be_visible()

    page.get_by_role("button", name="Export 64×96 · stage 1 · INT8").click()
    expect(page.get_by_role("heading", name="Export run from the explorer")).to_be_visible()
    expect(page.get_by_text("output_stage: 1").first).to_be_visible()
    shot(page, "explorer-2-new-run-prefilled")

    rows = [r for r in client.list_results([run_id], config=config)]
    assert {(r["resolution"], r["stage_exit"], r["precision"]) for r in rows} == \
        {(res, s, p) for res in ("64x64", "64x96") for s in (1, 2) for p in ("fp32", "int8")}
    assert all(r["model_artifact_id"] for r in rows)   # each point's model file is downloadable
