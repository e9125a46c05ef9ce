"""The dashboard in a real browser: headless Debian Chromium drives `bpnet-studio up` (the README's
run command: store, embedded broker, a worker and the dashboard) on a temporary data dir and a
free port. It shows a bad input being refused, submits a tiny run from New run, finds it in Runs,
waits on Run detail until the worker has finished it, sees Compare's untrained guard, and sees a
model file that is not HDF5 refused on New run before anything is queued.
Screenshots of every step go to test-artifacts/browser/."""

from pathlib import Path

import pytest

from tests.browser import ROOT, RUN_TIMEOUT_S, set_number, shot, wait_for_app_run

RUN_NAME = "browser tiny run"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_submit_a_tiny_run_and_compare_it(studio, browser_page, tmp_path):
    from playwright.sync_api import expect

    page = browser_page()

    # New run: a bad input is refused in plain words, then a tiny valid run is submitted.
    page.goto(f"{studio}/new")
    expect(page.get_by_role("heading", name="New run")).to_be_visible()
    thresholds = page.get_by_label("Prune thresholds (several → a sweep)", exact=True)
    thresholds.fill("")
    thresholds.press("Enter")
    expect(page.get_by_text("the list is empty")).to_be_visible()
    expect(page.get_by_role("button", name="Submit run")).to_be_disabled()
    shot(page, "1-new-run-invalid")
    thresholds.fill("0.1")
    thresholds.press("Enter")
    wait_for_app_run(page)
    page.get_by_text("train from scratch").click()   # the default base is the pretrained network
    wait_for_app_run(page)
    page.get_by_role("button", name="INT8", exact=True).click()   # the pretrained default's INT8: off
    wait_for_app_run(page)
    set_number(page, "Training epochs", 1)
    stages = page.get_by_role("slider", name="Stages")   # the recommended 3 -> 2: a faster tiny run
    stages.focus()
    stages.press("ArrowLeft")
    wait_for_app_run(page)
    page.get_by_text("add a custom resolution").click()
    wait_for_app_run(page)
    set_number(page, "H (multiple of 8)", 64)
    set_number(page, "W (multiple of 8)", 64)
    page.get_by_role("button", name="288×384").click()       # deselect the preset
    wait_for_app_run(page)
    set_number(page, "Retrain epochs (after pruning; 0 = evaluate pruned models as they are)", 0)
    name = page.get_by_label("Run name (optional)", exact=True)
    name.fill(RUN_NAME)
    name.press("Enter")
    expect(page.get_by_text("stages to compute")).to_be_visible()
    shot(page, "2-new-run-preview")
    page.get_by_role("button", name="Submit run").click()
    expect(page.get_by_text("submitted.")).to_be_visible()
    shot(page, "3-submitted")

    # Runs: the new run is listed.
    page.goto(f"{studio}/")   # Runs is the default page
    expect(page.get_by_role("link", name=RUN_NAME)).to_be_visible()
    shot(page, "4-runs")

    # Run detail (its name in the table is the link): wait for the worker to finish it (the page
    # refreshes itself).
    page.get_by_role("link", name=RUN_NAME).click()
    status = page.get_by_test_id("stMetricValue").first
    expect(status).to_have_text("completed", timeout=RUN_TIMEOUT_S * 1000)
    expect(page.get_by_role("heading", name="Results")).to_be_visible()
    shot(page, "5-run-detail-completed")

    # Compare: a 1-epoch model scores AP 0, so instead of a Pareto front of noise the page
    # says why there is nothing to trade off (the chart itself: test_browser_dashboard.py).
    page.goto(f"{studio}/compare")
    expect(page.get_by_text("all results have AP 0 — the base model is untrained")).to_be_visible()
    expect(page.get_by_text("optimistic (overfit)")).to_be_visible()
    shot(page, "6-compare")

    # A "model" that is not a Keras file is refused before anything is queued (the run
    # spec's model check), in plain words, and Submit stays disabled.
    broken = tmp_path / "not_a_model.hdf5"
    broken.write_bytes(b"these bytes are not an HDF5 file")
    page.goto(f"{studio}/new")
    page.get_by_text("an existing trained model").click()
    page.get_by_label("Trained model", exact=True).click()
    page.get_by_role("option", name="(a path)").click()
    path = page.get_by_label("Path of a Keras model (.hdf5)", exact=True)
    path.fill(str(broken))
    path.press("Enter")
    expect(page.get_by_text("is not a readable HDF5 file").first).to_be_visible()
    expect(page.get_by_role("button", name="Submit run")).to_be_disabled()
    shot(page, "7-broken-model-refused")


PRETRAINED_RUN_TIMEOUT_S = 1500   # the default run from the bundled network, on 2 shared cores


def detections_in_annotated_boxes(results_file, annotations, min_keypoints=3):
    """Detected people with >= min_keypoints keypoints inside one annotated person's box."""
    import json

    truth = json.loads(Path(annotations).read_text())
    boxes = {}
    for ann in truth["annotations"]:
        if ann.get("num_keypoints", 0) > 0:
            boxes.setdefault(ann["image_id"], []).append(ann["bbox"])
    found = 0
    for det in json.loads(Path(results_file).read_text()):
        kps = det["keypoints"]
        points = [(kps[i], kps[i + 1]) for i in range(0, len(kps), 3) if kps[i + 2] > 0]
        for x0, y0, w, h in boxes.get(det["image_id"], []):
            inside = sum(x0 <= x <= x0 + w and y0 <= y <= y0 + h for x, y in points)
            if inside >= min_keypoints:
                found += 1
                break
    return found


def test_the_default_run_starts_from_the_pretrained_network_and_finds_people(studio, browser_page, tmp_path):
    """New run as it opens (pretrained base, FP32 + INT8): submitted, finished by the worker, and
    Run detail shows pictures of annotated people with the network's skeletons on them. The
    longest test (13 stages: import, prune, retrain, 4 exports, 4 evaluations, 2 gates; 5 min 45 s
    at load 3-4 on 2 cores), and the one that proves the product's first run means something."""
    from playwright.sync_api import expect

    page = browser_page()
    page.goto(f"{studio}/new")
    expect(page.get_by_role("heading", name="New run")).to_be_visible()
    expect(page.get_by_label("start from a pretrained model")).to_be_checked()
    expect(page.get_by_text("train from scratch")).to_be_visible()
    expect(page.get_by_text("may have been in its training data")).to_be_visible()
    expect(page.get_by_text("stages to compute")).to_be_visible()
    shot(page, "p1-new-run-pretrained-default")
    page.get_by_role("button", name="Submit run").click()
    page.get_by_role("link", name="Open the run").click()
    status = page.get_by_test_id("stMetricValue").first
    expect(status).to_have_text("completed", timeout=PRETRAINED_RUN_TIMEOUT_S * 1000)
    expect(page.get_by_text("mean OKS").first).to_be_visible()
    shot(page, "p2-run-detail-pretrained")
    results = sorted((tmp_path / "studio").rglob("evaluate-*/results.json"))
    assert results, "no evaluation results in the run's artifacts"
    annotations = ROOT / "data" / "coco-mini" / "annotations" / "person_keypoints_train2017.json"
    assert max(detections_in_annotated_boxes(r, annotations) for r in results) >= 1
