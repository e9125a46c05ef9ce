"""Run specs, DAG expansion, cache keys and the scheduler, without Celery or TensorFlow: stages are
"computed" by writing a file and recording completion, as a worker would."""

import time

import pytest

from bpnet.errors import BpnetError
from tests.conftest import COCO_ANNOTATIONS, COCO_IMAGES, ROOT
from worker import artifacts, scheduler
from worker.config import load_config
from worker.execution import event_fraction
from worker.runs import cache_key, expand_run, load_run_spec, parse_run_spec
from worker.store import Store


def run_spec_dict(**overrides):
    spec = {
        "name": "t",
        "dataset": {"annotations": str(COCO_ANNOTATIONS), "images": str(COCO_IMAGES)},
        "train_spec": str(ROOT / "specs" / "train_small.yaml"),
        "resolutions": [[64, 64]],
        "prune_thresholds": [0.1, 0.5],
        "precisions": ["fp32"],
        "calibration": {"batch_size": 2, "batches": 2},
    }
    spec.update(overrides)
    return spec


def kinds(nodes):
    return [n["kind"] for n in nodes]


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("overrides, needle", [
    ({"resolutions": [[60, 64]]}, "multiples of 8"),
    ({"resolutions": []}, "at least one resolution"),
    ({"prune_thresholds": [-0.1]}, "prune_thresholds"),
    ({"precisions": ["int4"]}, "precisions"),
    ({"precisions": []}, "at least one precision"),
    ({"stages": [1]}, "between 2 and 7"),
    ({"retrain_epoch": 3}, "retrain_epoch: unknown field"),
    ({"train_spec": None}, "give the base model"),
    ({"dataset": {"annotations": "/nope.json", "images": str(COCO_IMAGES)}}, "/nope.json"),
    ({"precisions": ["int8"], "calibration": {"batch_size": 16, "batches": 10}}, "fewer than batch_size"),
    ({"train": {"num_epoch": 0}, "train_spec": None}, "num_epoch"),
])
def test_bad_run_specs_are_rejected_with_the_field_named(overrides, needle):
    with pytest.raises(BpnetError) as err:
        parse_run_spec(run_spec_dict(**overrides))
    assert needle in str(err.value)


def test_the_pretrained_demo_spec_imports_instead_of_training():
    spec = load_run_spec(ROOT / "specs" / "run_demo.yaml")
    nodes = expand_run(spec)
    # import the bundled network; prune, retrain (the pretrained retraining recipe); 2 models x 2 precisions
    assert kinds(nodes).count("train") == 0 and kinds(nodes).count("import") == 1
    assert kinds(nodes).count("retrain") == 1 and kinds(nodes).count("evaluate") == 4
    assert spec.calibration.calibrator == "minmax"
    retrain = next(n for n in nodes if n["kind"] == "retrain")
    assert retrain["params"]["train_spec"]["dataloader"]["image_shape"] == [288, 384]


def test_the_demo_spec_is_valid_and_expands_to_a_sweep():
    spec = load_run_spec(ROOT / "specs" / "run_demo_scratch.yaml")
    nodes = expand_run(spec)
    # train; 2 x (prune, retrain); 3 models x 2 precisions x (export, evaluate)
    assert kinds(nodes).count("train") == 1
    assert kinds(nodes).count("retrain") == 2
    assert kinds(nodes).count("evaluate") == 6
    assert len({n["key"] for n in nodes}) == len(nodes)


def test_dag_parents_come_before_children_and_match_the_chain():
    nodes = expand_run(parse_run_spec(run_spec_dict(stages=[2, 3], precisions=["fp32", "int8"])))
    chain = {"prune": {"train"}, "retrain": {"prune"}, "export": {"train", "retrain"}, "evaluate": {"export"},
             "gate": {"evaluate"}}
    for i, n in enumerate(nodes):
        if n["parent"] is None:
            assert n["kind"] == "train"
        else:
            assert n["parent"] < i
            assert nodes[n["parent"]]["kind"] in chain[n["kind"]]
    # 2 stage counts x (unpruned + 2 thresholds) x 1 resolution x 2 precisions
    assert kinds(nodes).count("evaluate") == 12


def test_adding_a_precision_keeps_every_existing_key():
    fp32 = expand_run(parse_run_spec(run_spec_dict()))
    both = expand_run(parse_run_spec(run_spec_dict(precisions=["fp32", "int8"])))
    old, new = {n["key"] for n in fp32}, {n["key"] for n in both}
    assert old < new
    assert {n["kind"] for n in both if n["key"] not in old} == {"export", "evaluate", "gate"}


def test_keys_change_with_what_matters_and_only_that():
    base = expand_run(parse_run_spec(run_spec_dict()))
    renamed = expand_run(parse_run_spec(run_spec_dict(name="other name")))
    assert [n["key"] for n in base] == [n["key"] for n in renamed]
    other_lr = expand_run(parse_run_spec(run_spec_dict(
        train_spec=None, train={"optimizer": {"learning_rate_schedule": {"base_learning_rate": 0.5}}})))
    assert other_lr[0]["key"] != base[0]["key"]
    assert cache_key("prune", {"threshold": 0.1}, "p") != cache_key("prune", {"threshold": 0.2}, "p")
    assert cache_key("prune", {"threshold": 0.1}, "p") != cache_key("prune", {"threshold": 0.1}, "q")


def test_dataset_change_changes_the_training_key(copy_of_coco_mini):
    ann = copy_of_coco_mini / "annotations" / "person_keypoints_train2017.json"
    spec = run_spec_dict(dataset={"annotations": str(ann), "images": str(copy_of_coco_mini / "train2017")})
    before = expand_run(parse_run_spec(spec))[0]["key"]
    ann.write_text(ann.read_text().replace('"iscrowd": 0', '"iscrowd":0', 1))
    assert expand_run(parse_run_spec(spec))[0]["key"] != before


def test_event_fraction_from_counters():
    assert event_fraction({"fraction": 1.5}) == 1.0
    assert event_fraction({"epoch": 2, "num_epochs": 4, "step": 5, "num_steps": 10}) == pytest.approx(0.375)
    assert event_fraction({"step": 3, "num_steps": 12}) == 0.25
    assert event_fraction({"event": "start"}) is None


# ------------------------------------------------------------------ scheduler

@pytest.fixture
def env(tmp_path):
    config = load_config({"BPNET_STUDIO_HOME": str(tmp_path)})
    store = Store(config.database_url)
    sent = []
    yield store, config, sent
    store.close()


def submit(store, config, sent, spec_dict):
    spec = parse_run_spec(spec_dict)
    run_id = store.create_run(spec.name, "d", spec.model_dump(mode="json"), expand_run(spec))
    scheduler.advance(store, run_id, sent.append, config.artifact_root)
    return run_id


def fake_compute(store, config, stage, sent, ok=True):
    """Do what a worker does for `stage`, with a one-file artifact instead of the engine."""
    assert store.claim_stage(stage["id"], stage["attempts"], "test-worker")
    if ok:
        out = artifacts.prepare_stage_dir(config.artifact_root, stage["kind"], stage["key"])
        (out / "model.onnx").write_bytes(stage["key"].encode())
        entries = artifacts.write_manifest(config.artifact_root, out)
        store.add_artifacts(stage["id"], stage["key"], entries)
        store.update_stage(stage["id"], status="completed", outputs={"model": "model.onnx"},
                           result={"AP": 0.5} if stage["kind"] == "evaluate" else None,
                           artifact_dir=out.name, finished_at=time.time(), duration_s=2.0)
    else:
        store.update_stage(stage["id"], status="failed", error="boom", finished_at=time.time())
    from worker.execution import advance_after
    advance_after(store, config, stage, sent.append)


def drain(store, config, sent, fail_kind=None):
    while sent:
        stage = sent.pop(0)
        fake_compute(store, config, store.stage(stage["id"]), sent, ok=stage["kind"] != fail_kind)


def test_a_run_completes_and_a_second_run_adding_int8_retrains_nothing(env):
    store, config, sent = env
    first = submit(store, config, sent, run_spec_dict())
    assert [s["kind"] for s in sent] == ["train"]      # only the root is ready
    drain(store, config, sent)
    assert store.run_status(first) == "completed"

    second = submit(store, config, sent, run_spec_dict(precisions=["fp32", "int8"]))
    drain(store, config, sent)
    assert store.run_status(second) == "completed"
    by_kind = {}
    for st in store.stages(second):
        by_kind.setdefault(st["kind"], set()).add(st["status"])
    assert by_kind["train"] == by_kind["prune"] == by_kind["retrain"] == {"cached"}
    computed = [st for st in store.stages(second) if st["status"] == "completed"]
    assert {st["kind"] for st in computed} == {"export", "evaluate", "gate"}
    assert all("int8" in st["label"] for st in computed)
    cached_eval = [st for st in store.stages(second) if st["kind"] == "evaluate" and st["status"] == "cached"]
    assert cached_eval and all(st["result"] == {"AP": 0.5} for st in cached_eval)


def test_concurrent_runs_compute_a_shared_stage_once(env):
    store, config, sent = env
    a = submit(store, config, sent, run_spec_dict())
    b = submit(store, config, sent, run_spec_dict(name="b"))
    assert [s["run_id"] for s in sent] == [a]     # b's train waits for a's
    drain(store, config, sent)
    assert store.run_status(a) == store.run_status(b) == "completed"
    assert all(st["status"] == "cached" for st in store.stages(b))


def test_deleted_artifacts_are_computed_again(env):
    import shutil
    store, config, sent = env
    submit(store, config, sent, run_spec_dict())
    drain(store, config, sent)
    shutil.rmtree(config.artifact_root)
    second = submit(store, config, sent, run_spec_dict())
    assert [s["kind"] for s in sent] == ["train"]
    drain(store, config, sent)
    assert all(st["status"] == "completed" for st in store.stages(second))


def test_a_failure_skips_descendants_and_fails_the_run(env):
    store, config, sent = env
    run = submit(store, config, sent, run_spec_dict())
    drain(store, config, sent, fail_kind="retrain")
    statuses = {st["label"]: st["status"] for st in store.stages(run)}
    assert statuses["retrain s2 pth=0.1"] == "failed"
    assert statuses["export s2 pth=0.1 64x64 fp32"] == "skipped"
    assert statuses["evaluate s2 64x64 fp32"] == "completed"    # the unpruned branch went on
    assert store.run_status(run) == "failed"
    assert "retrain s2 pth=0.1" in store.get_run(run)["error"] and "boom" in store.get_run(run)["error"]


def test_cancel_marks_waiting_stages_and_drops_their_messages(env):
    store, config, sent = env
    run = submit(store, config, sent, run_spec_dict())
    assert scheduler.cancel(store, run)
    assert {st["status"] for st in store.stages(run)} == {"cancelled"}
    assert not store.claim_stage(sent[0]["id"], sent[0]["attempts"], "w")   # message dropped
    assert not scheduler.cancel(store, run)    # already final
    assert store.run_status(run) == "cancelled"


def test_worker_queues_are_parsed_once_into_a_list(capsys):
    from worker.cli import build_parser, main

    assert build_parser().parse_args(["worker", "--queues", "cpu, gpu"]).queues == ["cpu", "gpu"]
    assert main(["worker", "--queues", "cpu,bogus"]) == 2
    assert "--queues: bogus not one of cpu, gpu, tensorrt" in capsys.readouterr().err


def test_training_goes_to_a_live_gpu_worker():
    now = time.time()
    gpu = {"queues": ["cpu", "gpu"], "status": "online", "heartbeat_at": now}
    stale = {**gpu, "heartbeat_at": now - 3600}
    assert scheduler.choose_queue("train", [gpu], now) == "gpu"
    assert scheduler.choose_queue("export", [gpu], now) == "cpu"
    assert scheduler.choose_queue("retrain", [stale], now) == "cpu"


# ------------------------------------------------------------------ CLI

@pytest.mark.parametrize("command", ["worker", "submit", "status", "cancel", "rerun", "up"])
def test_cli_help(command, capsys):
    from worker.cli import main
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert command in capsys.readouterr().out


def test_cli_rejects_a_bad_spec_with_exit_2(tmp_path, capsys, monkeypatch):
    from worker.cli import main
    monkeypatch.setenv("BPNET_STUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    bad = tmp_path / "run.yaml"
    bad.write_text("dataset: {annotations: nope.json, images: .}\nmodel: m.hdf5\nresolutions: [[64, 61]]\n")
    assert main(["submit", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "multiples of 8" in err and "Traceback" not in err
    assert main(["status", "nope"]) == 2
