"""Synthetic job-store content for the dashboard's tests and its page-load benchmark.

Runs are created through the job system's own API (`worker.runs.expand_run`, `Store.create_run`)
and their stages finished the way a worker finishes them (artifact directory + manifest, stage
row, events, metrics), but nothing is trained: the metrics are made up from the stage parameters
(so every result differs and the Pareto front is known) and the "model" files are placeholders.
Detections are the dataset's own ground truth, so the skeleton overlays have something to draw.
Run names start with "synthetic" so such a store is never mistaken for measured results.
"""

import json
import time
import traceback
from pathlib import Path

from bpnet.fileio import write_json_atomic
from worker import artifacts
from worker.runs import dataset_label, expand_run, parse_run_spec
from worker.store import open_store

ROOT = Path(__file__).resolve().parent.parent
COCO_MINI = ROOT / "data" / "coco-mini"
ANNOTATIONS = COCO_MINI / "annotations" / "person_keypoints_train2017.json"
IMAGES = COCO_MINI / "train2017"
PRECISION_SPEED = {"fp32": 1.0, "fp16": 0.7, "int8": 0.4}
PRECISION_AP_LOSS = {"fp32": 0.0, "fp16": 0.002, "int8": 0.015}


def tiny_run_spec(name, thresholds=(0.1, 0.5), precisions=("fp32", "int8"), resolutions=((64, 64),)):
    return {"name": name, "dataset": {"annotations": str(ANNOTATIONS), "images": str(IMAGES)},
            "train": {"num_epoch": 1, "steps_per_epoch": 3,
                      "model": {"backbone_width": 0.125, "stages": 2},
                      "dataloader": {"batch_size": 2, "image_shape": [64, 64],
                                     "dataset": {"annotations": "x", "images": "x",
                                                 "include_images_without_people": False}}},
            "resolutions": [list(r) for r in resolutions], "prune_thresholds": list(thresholds),
            "retrain_epochs": 1, "precisions": list(precisions),
            "calibration": {"batch_size": 2, "batches": 2}}


def create_run(config, spec_dict):
    """A queued run with all its stages pending (nothing sent to a broker); returns its id."""
    spec = parse_run_spec(spec_dict, "synthetic run spec", ROOT)
    store = open_store(config.database_url)
    return store.create_run(spec.name, dataset_label(spec), spec.model_dump(mode="json"), expand_run(spec))


def synthetic_result(params, num_stages=2, untrained=False):
    """A made-up Compare row: pruning and lower precision make it faster and a little less
    accurate; `untrained`: every AP is 0 (a base model that never learned)."""
    pth = params.get("prune_threshold")
    precision = params["precision"]
    h, w = params["input_hw"]
    shrink = 1.0 if pth is None else max(0.2, 1.0 - pth)
    ap = 0.0 if untrained else round(0.6 - 0.1 * (1 - shrink) - PRECISION_AP_LOSS[precision], 4)
    latency = round(h * w / 1000 * shrink * PRECISION_SPEED[precision], 3)
    metrics = {"AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.05, "APm": ap - 0.1, "APl": ap + 0.05,
               "AR": ap + 0.05, "AR50": ap + 0.25, "AR75": ap, "ARm": ap - 0.05, "ARl": ap + 0.1}
    if untrained:
        metrics = dict.fromkeys(metrics, 0.0)
    return {**metrics, "precision": precision, "input_hw": [h, w], "resolution": f"{h}x{w}", "pth": pth,
            "stages": num_stages, "latency_ms": latency, "latency_p5_ms": latency * 0.9,
            "latency_p95_ms": latency * 1.2, "latency_runs": 20,
            "throughput": round(1000 / latency, 2), "params": int(2e6 * shrink), "gflops": 3.0 * shrink,
            "size_bytes": int(8e6 * shrink), "backend": "onnxruntime", "device": "cpu (synthetic)",
            "num_images": 80}


def ground_truth_detections(annotations=ANNOTATIONS):
    """The annotations' people as COCO keypoint results (score 1)."""
    data = json.loads(Path(annotations).read_text())
    return [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
            for a in data["annotations"] if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd")]


# A Keras HDF5 file with a real (one input layer) architecture and no weights: it passes the
# submit-time model check (bpnet.model_safety) like a trained model would, but is not one.
PLACEHOLDER_HDF5 = object()


def write_placeholder_hdf5(path):
    import h5py

    config = {"class_name": "Functional",
              "config": {"name": "synthetic_placeholder",
                         "layers": [{"class_name": "InputLayer", "config": {"name": "input"}}]}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)


def stage_files(stage, detections):
    """{file name: bytes or JSON-able} a finished stage of this kind leaves in its folder."""
    kind = stage["kind"]
    if kind in ("train", "retrain"):
        return {"bpnet_model.hdf5": PLACEHOLDER_HDF5,
                "train_spec.yaml": "synthetic: true\n"}
    if kind == "prune":
        return {"pruned_model.hdf5": PLACEHOLDER_HDF5}
    if kind == "export":
        return {"model.onnx": b"synthetic placeholder, not a model"}
    return {"results.json": detections, "metrics.json": {"synthetic": True}}


SYNTHETIC_OUTPUTS = {   # the outputs each kind's worker.kinds module records, for the files above
    "train": {"model": "bpnet_model.hdf5", "num_stages": 2}, "retrain": {"model": "bpnet_model.hdf5", "num_stages": 2},
    "prune": {"model": "pruned_model.hdf5", "num_stages": 2},
    "export": {"model": "model.onnx", "onnx": "model.onnx", "precision": "fp32", "num_stages": 2},
    "evaluate": {"model": "model.onnx", "metrics": "metrics.json", "results": "results.json", "num_stages": 2},
}


def finish_stage(store, config, stage, detections, started, with_files=True, untrained=False):
    """Mark a stage completed as a worker would: files + manifest + artifacts + result + events."""
    result = None
    rel = None
    if with_files:
        out_dir = artifacts.prepare_stage_dir(config.artifact_root, stage["kind"], stage["key"])
        for name, content in stage_files(stage, detections).items():
            if content is PLACEHOLDER_HDF5:
                write_placeholder_hdf5(out_dir / name)
            elif isinstance(content, (bytes, str)):
                (out_dir / name).write_bytes(content.encode() if isinstance(content, str) else content)
            else:
                write_json_atomic(out_dir / name, content)
        entries = artifacts.write_manifest(config.artifact_root, out_dir)
        store.add_artifacts(stage["id"], stage["key"], entries)
        rel = str(out_dir.resolve().relative_to(Path(config.artifact_root).resolve()))
    if stage["kind"] == "evaluate":
        result = synthetic_result(stage["params"], untrained=untrained)
        store.add_metrics(stage["run_id"], stage["id"], {k: result[k] for k in ("AP", "latency_ms")})
    if stage["kind"] == "prune":
        store.add_metrics(stage["run_id"], stage["id"], {"param_ratio": max(0.2, 1.0 - stage["params"]["threshold"])})
    if stage["kind"] == "gate":   # a verdict as the gate stage stores it (worker/kinds/gate.py SUMMARY_KEYS)
        result = {"passed": True, "status": "passed", "precision": stage["params"]["precision"],
                  "threshold_ap": stage["params"]["threshold_ap"], "metrics": {"AP": {"drop": None}},
                  "output_error": None, "max_output_error": None, "reasons": [], "remedies": [],
                  "warnings": ["synthetic store (bench/seed_store.py): no model was checked"]}
    if stage["kind"] in ("train", "retrain"):
        for step in range(1, 4):
            store.add_event(stage["run_id"], stage["id"], {"stage": stage["kind"], "event": "step", "epoch": 1,
                                                            "step": step, "loss": 2.0 / step,
                                                            "time": started + step})
    store.update_stage(stage["id"], status="completed", artifact_dir=rel, result=result,
                       outputs=SYNTHETIC_OUTPUTS.get(stage["kind"], {"model": "synthetic"}), fraction=1.0,
                       started_at=started,
                       finished_at=started + 5, duration_s=5.0, message="done", worker_id="synthetic@host")


def fail_stage(store, stage, started):
    try:
        raise RuntimeError("synthetic engine failure for the dashboard test")
    except RuntimeError:
        tb = traceback.format_exc()
    store.update_stage(stage["id"], status="failed", started_at=started, finished_at=started + 1,
                       duration_s=1.0, error="calibration: 3 images is fewer than batch_size x batches = 4",
                       traceback=tb, worker_id="synthetic@host")
    store.add_event(stage["run_id"], stage["id"], {"stage": stage["kind"], "event": "error",
                                                    "message": "calibration needs more images", "time": started})


def seed_finished_run(config, name="synthetic sweep", fail_kind=None, with_files=True, untrained=False,
                      **spec_kwargs):
    """A run whose stages all completed (or, with `fail_kind`, whose first stage of that kind
    failed and its descendants were skipped; with `untrained`, every AP 0); returns the run id."""
    run_id = create_run(config, tiny_run_spec(name, **spec_kwargs))
    store = open_store(config.database_url)
    detections = ground_truth_detections() if with_files else []
    started = time.time() - 60
    failed_ids = set()
    store.set_run_status(run_id, "running")
    for stage in store.stages(run_id):
        if stage["parent_id"] in failed_ids:
            store.update_stage(stage["id"], status="skipped", message="not run: a parent failed")
            failed_ids.add(stage["id"])
        elif fail_kind == stage["kind"] and not failed_ids:
            fail_stage(store, stage, started)
            failed_ids.add(stage["id"])
        else:
            finish_stage(store, config, stage, detections, started, with_files, untrained)
    if failed_ids:
        store.set_run_status(run_id, "failed", error="1 stage(s) failed: calibration needs more images")
    else:
        store.set_run_status(run_id, "completed")
    return run_id


def register_worker(config, worker_id="cpu-worker@test", tensorrt=False, heartbeat_age_s=0.0):
    store = open_store(config.database_url)
    store.register_worker(worker_id, "testhost", 1234, ["cpu"],
                          {"cpu_count": 2, "gpus": [], "tensorrt": tensorrt, "tensorflow_gpu": False,
                           "onnxruntime_providers": ["CPUExecutionProvider"]})
    if heartbeat_age_s:
        from sqlalchemy import update
        from worker.store import Worker
        with store.Session.begin() as s:
            s.execute(update(Worker).where(Worker.id == worker_id)
                      .values(heartbeat_at=time.time() - heartbeat_age_s))
