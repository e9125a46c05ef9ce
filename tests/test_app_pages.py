"""Every dashboard page driven by Streamlit's AppTest against a temporary job store seeded through
the job system's own API (bench/seed_store.py): form validation, submitting, live tables, the
run detail, charts built from stored results, workers, and a store that cannot be reached."""

import json
import sys
from pathlib import Path

import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import seed_store  # noqa: E402
from tests.html_tables import html_tables, table_with_column, tables_with_column  # noqa: E402
from worker.config import load_config  # noqa: E402
from worker.store import open_store  # noqa: E402

MAIN = str(ROOT / "app" / "main.py")
TIMEOUT_S = 60


@pytest.fixture
def config(tmp_path, monkeypatch):
    """A fresh data dir (SQLite store, embedded broker, artifacts) for one test."""
    monkeypatch.setenv("BPNET_STUDIO_HOME", str(tmp_path / "studio"))
    for var in ("DATABASE_URL", "REDIS_URL", "BPNET_STUDIO_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    return load_config()


def open_page(page, query=None):
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT_S)
    if query:
        at.query_params.update(query)
    at.run()
    if page != "views/runs.py":
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements):
    return " | ".join(str(e.value) for e in elements)


def figures(at):
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def vega_points(at):
    """The data records of the page's first Vega-Lite chart (Streamlit sends them as Arrow)."""
    return convert_arrow_bytes_to_pandas_df(at.get("vega_lite_chart")[0].proto.data.data).to_dict("records")


# ---------------------------------------------------------------- New run

def test_new_run_shows_every_bad_input_and_blocks_submit(config, tmp_path):
    at = open_page("views/new_run.py")
    assert not at.button(key="submit").disabled   # the defaults are a valid tiny run
    at.radio(key="dataset").set_value("path").run()
    at.text_input(key="annotations").set_value(str(tmp_path / "nowhere.json")).run()
    at.checkbox(key="use_custom").check().run()
    at.number_input(key="custom_h").set_value(290).run()
    at.text_input(key="thresholds").set_value(" , ").run()
    assert not at.exception
    shown = texts(at.error)
    assert "nowhere.json does not exist" in shown
    assert "got 290x320 (e.g. 288x320)" in shown and "multiples of 8" in shown   # the run spec's rule
    assert "the list is empty" in shown
    assert at.button(key="submit").disabled
    assert "Fix the 3 problem(s)" in texts(at.info)


def test_new_run_rejects_a_file_that_is_not_coco(config, tmp_path):
    bad = tmp_path / "person_keypoints_x.json"
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 5, "height": 5}],
                               "annotations": [], "categories": [{"name": "cat"}]}))
    at = open_page("views/new_run.py")
    at.radio(key="dataset").set_value("path").run()
    at.text_input(key="annotations").set_value(str(bad)).run()
    assert "no category with keypoints" in texts(at.error)


def test_new_run_previews_and_submits_a_sweep(config):
    seed_store.register_worker(config)
    at = open_page("views/new_run.py")
    at.radio(key="base").set_value("train").run()   # train from scratch (the default is pretrained)
    at.text_input(key="thresholds").set_value("0.1, 0.3").run()
    at.number_input(key="train_epochs").set_value(1).run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["results"] == "6"          # unpruned + 2 thresholds, 1 resolution, FP32 + INT8 (default)
    assert metrics["stages cached"] == "0"
    assert "no TensorRT worker" in texts(at.warning)
    assert "cpu-worker@test" in texts(at.success)
    at.button(key="submit").click().run()
    assert not at.exception
    runs = open_store(config.database_url).list_runs()
    assert len(runs) == 1 and runs[0]["status"] == "queued"
    assert runs[0]["id"] in texts(at.success)


def test_new_run_preview_counts_cached_stages_and_past_time(config):
    seed_store.seed_finished_run(config, thresholds=(0.1,), precisions=("fp32",), resolutions=((64, 64),))
    at = open_page("views/new_run.py")
    # the same base training as the seeded run: train_small template differs, so nothing is
    # reused; but the time estimate now has history
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["time estimate"] != "unknown"


# ---------------------------------------------------------------- Runs

def test_runs_table_filters_cancels_and_reruns(config):
    done = seed_store.seed_finished_run(config, name="synthetic done", with_files=False)
    failed = seed_store.seed_finished_run(config, name="synthetic broken", fail_kind="export", with_files=False)
    queued = seed_store.create_run(config, seed_store.tiny_run_spec("synthetic waiting"))
    at = open_page("views/runs.py")
    table, links = html_tables(at)[0]
    assert set(table["id"]) == {done, failed, queued}
    assert "calibration needs more images" in table.set_index("id").loc[failed, "error"]
    # every run's name opens its Run detail
    assert dict(zip(table["id"], links["name"])) == {i: f"run?run={i}" for i in (done, failed, queued)}
    assert table.set_index("id").loc[done, "progress"] == "100%"
    at.multiselect(key="status_filter").set_value(["failed"]).run()
    assert list(html_tables(at)[0][0]["id"]) == [failed]
    at.multiselect(key="status_filter").set_value([]).run()
    at.selectbox(key="selected_run").set_value(queued).run()
    at.button(key="cancel-runs").click().run()
    assert open_store(config.database_url).run_status(queued) == "cancelled"
    at.selectbox(key="selected_run").set_value(done).run()
    at.button(key="rerun-runs").click().run()
    assert not at.exception
    assert open_store(config.database_url).count_runs() == 4
    assert "Re-run submitted" in texts(at.success)


def test_a_click_whose_page_switch_a_refresh_replaced_opens_the_run_on_the_next_run(config):
    """Streamlit keeps the newest of two pending reruns' pages: a rerun asked for at the same
    moment (here the Runs page's refresh timer) can replace a click's switch to Run detail (a
    Compare point's). The click is remembered, so the next run of any page opens it."""
    run_id = seed_store.seed_finished_run(config, name="synthetic clicked", with_files=False)
    at = open_page("views/runs.py")
    at.session_state["navigate_to"] = {"run": run_id}   # the click was seen, its switch replaced
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Run detail"] and run_id in texts(at.selectbox)
    assert "navigate_to" not in at.session_state   # arrived: forgotten
    at.run()
    assert [t.value for t in at.title] == ["Run detail"]


def test_runs_page_when_empty_points_to_new_run(config):
    at = open_page("views/runs.py")
    assert "No runs match" in texts(at.info)


# ---------------------------------------------------------------- Run detail

def test_run_detail_of_a_finished_run(config):
    run_id = seed_store.seed_finished_run(config, thresholds=(0.1,), precisions=("fp32",))
    at = open_page("views/run_detail.py", {"run": run_id})
    metrics = {m.label: m.value for m in at.metric}
    assert "completed" in metrics["status"] and metrics["stages done"] == "7/7"   # train, prune, retrain, 2 x (export, evaluate)
    dag = at.get("graphviz_chart")[0].proto.spec
    assert "prune s2 pth=0.1" in dag and "->" in dag
    loss = [f for f in figures(at) if f["layout"]["title"]["text"] == "training loss"]
    assert loss and loss[0]["data"][0]["y"] == [2.0, 1.0, 2.0 / 3]
    results = table_with_column(at, "latency (median)")
    assert len(results) == 2 and set(results["precision"]) == {"FP32"}
    assert "bundled 80 coco-mini images" in texts(at.info)
    assert len(at.get("image")) >= 1   # skeleton overlays drawn
    downloads = [b for b in at.get("download_button")]
    assert len(downloads) >= 8        # every artifact of 7 stages one by one
    zip_label = "Download the deployables for this result"
    assert not [b for b in downloads if b.proto.label.startswith(zip_label)]   # a closed tab is not drawn
    at.session_state["result_tab"] = "deployables"
    at.run()
    assert [b for b in at.get("download_button") if b.proto.label.startswith(zip_label)]
    at.button(key="bundle").click().run()
    assert not at.exception
    bundle = Path(at.session_state[f"bundle-{run_id}"])
    import zipfile
    with zipfile.ZipFile(bundle) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["spec_sha256"] and manifest["files"]


def test_run_detail_explains_a_failure_with_the_traceback_folded(config):
    run_id = seed_store.seed_finished_run(config, fail_kind="export", with_files=False)
    at = open_page("views/run_detail.py", {"run": run_id})
    shown = texts(at.error)
    assert "This run failed" in shown and "fewer than batch_size x batches" in shown
    expanders = [e.label for e in at.expander]
    assert any(label.startswith("technical details (traceback)") for label in expanders)
    assert "RuntimeError" in texts(at.code)


def test_run_detail_of_an_unknown_run_says_so(config):
    at = open_page("views/run_detail.py", {"run": "doesnotexist"})
    assert "not found" in texts(at.error)


# ---------------------------------------------------------------- Compare

def test_compare_builds_every_chart_from_stored_results(config):
    seed_store.seed_finished_run(config, name="synthetic a", thresholds=(0.1, 0.5), precisions=("fp32", "int8"))
    at = open_page("views/compare.py")
    figs = {}
    for name in ("AP vs latency", "all settings (parallel coordinates)", "AP by person size", "size vs AP",
                 "latency by precision"):   # one chart at a time (a segmented control)
        at.session_state["compare_chart"] = name
        at.run()
        figs.update({f["layout"]["title"]["text"] if "title" in f["layout"] else "size": f for f in figures(at)})
    at.session_state["compare_chart"] = "AP vs latency"
    at.run()
    chart = at.get("vega_lite_chart")[0].proto   # the first chart is Vega-Lite; Streamlit sends its data as Arrow
    assert json.loads(chart.spec)["title"]["text"].startswith("AP vs latency")
    points = vega_points(at)
    assert sorted({p["precision"] for p in points}) == ["FP32", "INT8"] and len(points) == 6
    front = sorted((p["x"], p["AP"]) for p in points if p["front"])
    assert front and [ap for _, ap in front] == sorted(ap for _, ap in front)
    assert {"pth", "resolution", "stages", "latency"} <= set(points[0])
    assert any(t.startswith("AP by person size") for t in figs)
    assert any(t.startswith("latency by precision") for t in figs)
    assert any(t.startswith("every result across its settings") for t in figs)   # parallel coordinates
    assert len(figs) == 4   # and the Vega-Lite one
    table, links = html_tables(at)[0]
    assert len(table) == 6 and "latency (median)" in table.columns
    results = {p["stage_id"]: p["run_id"] for p in points}
    # each row's run name opens that very result on Run detail
    assert sorted(links["run"]) == sorted(f"run?run={run}&result={stage}" for stage, run in results.items())
    assert "optimistic" in texts(at.info)
    assert len(at.get("image")) >= 2   # side-by-side overlays


def test_compare_without_results_says_so(config):
    seed_store.seed_finished_run(config, fail_kind="train", with_files=False)
    at = open_page("views/compare.py")
    assert "no evaluated results yet" in texts(at.info)


# ---------------------------------------------------------------- Workers

def test_workers_page_shows_capabilities_and_heartbeat(config):
    seed_store.register_worker(config, "cpu-1@host")
    seed_store.register_worker(config, "gone@host", heartbeat_age_s=600)
    at = open_page("views/workers.py")
    table = html_tables(at)[0][0].set_index("worker")
    assert table.loc["cpu-1@host", "alive"].endswith("online")
    assert table.loc["gone@host", "alive"].endswith("offline")
    assert "TensorRT ✘" in table.loc["cpu-1@host", "capabilities"]
    assert "No online worker has TensorRT" in texts(at.info)


def test_unreachable_store_is_a_message_not_a_crash(config, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nothing")
    for page in ("views/runs.py", "views/workers.py", "views/compare.py"):
        at = open_page(page)
        assert "cannot be read" in texts(at.error), page


def test_new_run_offers_models_trained_by_earlier_runs(config):
    seed_store.seed_finished_run(config, name="synthetic base", thresholds=(0.1,), precisions=("fp32",))
    at = open_page("views/new_run.py")
    at.radio(key="base").set_value("existing").run()
    choice = at.selectbox(key="existing_choice")
    trained = [o for o in choice.options if "train s2" in o]
    assert trained and "synthetic base" in trained[0]
    assert "(a path)" in choice.options
    at.button(key="submit").click().run()
    assert not at.exception
    runs = open_store(config.database_url).list_runs()
    newest = open_store(config.database_url).get_run(runs[0]["id"])
    assert newest["spec"]["model"].endswith("bpnet_model.hdf5")
    assert not newest["spec"].get("stages")   # an existing model keeps its own stages


def test_the_dashboard_never_imports_tensorflow(config, tmp_path):
    """Every page rendered in a fresh interpreter; TensorFlow (and the engine modules that load
    it) must not be among the imported modules, so the dashboard starts fast."""
    import subprocess

    script = tmp_path / "render_all.py"
    script.write_text(
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({MAIN!r}, default_timeout={TIMEOUT_S})\n"
        "at.run()\n"
        "for page in ('views/new_run.py', 'views/run_detail.py', 'views/compare.py', 'views/workers.py'):\n"
        "    at.switch_page(page)\n"
        "    at.run()\n"
        "    assert not at.exception, (page, [e.value for e in at.exception])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras', 'tf2onnx'))\n"
        "print('HEAVY', heavy)\n")
    seed_store.seed_finished_run(config, thresholds=(0.1,), precisions=("fp32",))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY []" in out.stdout


# ---------------------------------------------------------------- guards, links, diff

def test_an_all_ap_zero_run_shows_the_guard_instead_of_a_pareto_front(config):
    run_id = seed_store.seed_finished_run(config, name="synthetic untrained", untrained=True,
                                          thresholds=(0.005,), precisions=("fp32",))
    at = open_page("views/run_detail.py", {"run": run_id})
    shown = texts(at.warning)
    assert "all results have AP 0 — the base model is untrained" in shown
    assert "prune s2 pth=0.005: pruned nothing" in shown           # kept 99.5% of the parameters
    at = open_page("views/compare.py")
    assert "all results have AP 0 — the base model is untrained" in texts(at.warning)
    assert not [f for f in figures(at) if f["layout"].get("title", {}).get("text", "").startswith("AP vs latency")]


def diff_table(at):
    return table_with_column(at, "field")


def test_compare_diff_lists_only_differing_fields_and_keeps_them_in_the_address(config):
    seed_store.seed_finished_run(config, name="synthetic a", thresholds=(0.1,), precisions=("fp32", "int8"))
    at = open_page("views/compare.py")
    ids = at.multiselect(key="compare_results").value
    at.selectbox(key="left_result").set_value(ids[0]).run()
    at.selectbox(key="right_result").set_value(ids[1]).run()   # unpruned FP32 vs unpruned INT8
    diff = diff_table(at)
    assert list(diff["field"]) == ["result.precision"]
    assert at.query_params["a"] == ids[0] and at.query_params["b"] == ids[1]
    # the same comparison opened from its link
    linked = open_page("views/compare.py", {"a": ids[0], "b": ids[2]})
    assert linked.selectbox(key="right_result").value == ids[2]
    assert "result.pth" in set(diff_table(linked)["field"])


def test_run_detail_opens_the_result_named_in_the_address(config):
    run_id = seed_store.seed_finished_run(config, thresholds=(0.1,), precisions=("fp32",))
    results = open_store(config.database_url).result_rows([run_id])
    wanted = results[-1]["stage_id"]
    at = open_page("views/run_detail.py", {"run": run_id, "result": wanted})
    assert at.selectbox(key="sample_result").value == wanted
    assert "ground truth" in texts(at.caption)      # GT vs prediction legend under the pictures
    assert len(at.get("image")) >= 2


def test_workers_name_the_running_stage_not_its_hash(config):
    run_id = seed_store.seed_finished_run(config, name="synthetic busy", thresholds=(0.1,), precisions=("fp32",))
    store = open_store(config.database_url)
    stage = next(s for s in store.stages(run_id) if s["kind"] == "retrain")
    seed_store.register_worker(config, "cpu-1@host")
    store.heartbeat("cpu-1@host", current_stage_id=stage["id"])
    at = open_page("views/workers.py")
    table, links = html_tables(at)[0]
    row = list(table["worker"]).index("cpu-1@host")
    assert table.loc[row, "running stage"] == "retrain s2 pth=0.1 · run synthetic busy"
    assert links.loc[row, "running stage"] == f"run?run={run_id}"   # opens its run
    assert stage["id"] not in table.loc[row, "running stage"]


@pytest.mark.slow
def test_new_run_shows_what_each_threshold_keeps_on_an_existing_model(config, tmp_path):
    from tests.tiny_models import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny.hdf5")
    at = open_page("views/new_run.py")
    at.radio(key="base").set_value("existing").run()
    at.selectbox(key="existing_choice").set_value("(a path)").run()
    at.text_input(key="existing_path").set_value(str(model)).run()
    at.text_input(key="thresholds").set_value("0.05").run()
    assert not at.exception
    table = table_with_column(at, "parameters kept")
    assert "0.05" in list(table["threshold"]) and "3" in list(table["threshold"])
    mine = table.set_index("threshold").loc["0.05"]
    assert "yours" in mine["note"] and mine["kept"].endswith("%")


def finish_import_stage(config, stage, model_file):
    """What the worker's import stage leaves: the rebuilt Keras model in its folder, registered."""
    import shutil

    from worker import artifacts

    store = open_store(config.database_url)
    out_dir = artifacts.prepare_stage_dir(config.artifact_root, stage["kind"], stage["key"])
    shutil.copyfile(model_file, out_dir / "bpnet_model.hdf5")
    store.add_artifacts(stage["id"], stage["key"], artifacts.write_manifest(config.artifact_root, out_dir))
    rel = str(out_dir.resolve().relative_to(Path(config.artifact_root).resolve()))
    store.update_stage(stage["id"], status="completed", artifact_dir=rel, fraction=1.0,
                       outputs={"model": "bpnet_model.hdf5", "num_stages": 2})


@pytest.mark.slow
def test_new_run_imports_the_pretrained_network_to_show_what_each_threshold_keeps(config, tmp_path):
    import streamlit as st

    from tests.tiny_models import save_tiny_model

    at = open_page("views/new_run.py")   # the default: the bundled pretrained .tflite network
    assert not tables_with_column(at, "parameters kept")
    at.button(key="import_for_preview").click().run()
    assert not at.exception
    store = open_store(config.database_url)
    (run,) = store.list_runs()
    (stage,) = store.stages(run["id"])   # only the run's first stage is queued
    assert stage["kind"] == "import" and stage["status"] == "queued"
    assert "Importing" in texts(at.info) and "for the pruning preview" in texts(at.info)
    assert not [b for b in at.button if b.key == "import_for_preview"]   # under way: followed, not offered

    finish_import_stage(config, stage, save_tiny_model(tmp_path / "rebuilt.hdf5"))
    st.cache_data.clear()   # what the page's poll does once the import is done
    at.run()
    assert not at.exception
    table = table_with_column(at, "parameters kept")
    assert "0.1" in list(table["threshold"])
    assert any("as imported by the run's first stage" in e.label for e in at.expander)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["stages cached"] == "1"   # the sweep starts from that very import
