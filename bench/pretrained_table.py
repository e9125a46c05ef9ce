"""The measured tables of docs/pretrained.md: the bundled pretrained network on the bundled images.

For prune thresholds 0 / 0.1 / 0.3 / 0.5, without and with the short retrain of
specs/retrain_pretrained.yaml (as the default run retrains): parameters, FP32 AP at the strict
288x384 and at the card's training resolution (the Keras model), INT8 AP at 288x384 (ONNX Runtime U8S8, min-max
calibration on 16 bundled images, as the default run), the INT8 AP drop, and FP32 / INT8 latency
(ONNX Runtime, batch 1; every model measured in interleaved rounds, so ratios within the table are
fair even on a loaded machine). Then the dashboard's default run (New run as it opens, built by
`app.forms.default_new_run_form`) submitted to a fresh embedded studio with one worker: its wall
time and stage durations. Every model is evaluated on all 80 bundled COCO train2017 images (which
may have been in the network's training data).

    PYTHONPATH=. python bench/pretrained_table.py --work /tmp/pretrained_table [--write-docs]
        [--skip-table] [--skip-default-run] [--rounds 5]

`--write-docs` replaces the generated section of docs/pretrained.md (between its
`<!-- pretrained_table:begin -->` / `end` markers) with the tables; nothing there is typed by hand.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bpnet  # noqa: E402,F401  (tf-keras before TensorFlow)

SOURCE = ROOT / "data" / "models" / "mobilenet_v2_pose_dm14_368_432_weight_quant.tflite"
ANNOTATIONS = ROOT / "data" / "coco-mini" / "annotations" / "person_keypoints_train2017.json"
IMAGES = ROOT / "data" / "coco-mini" / "train2017"
RETRAIN_SPEC = ROOT / "specs" / "retrain_pretrained.yaml"
INFER_SPEC = ROOT / "specs" / "infer_strict_288x384.yaml"
DOC = ROOT / "docs" / "pretrained.md"
BEGIN, END = "<!-- pretrained_table:begin -->", "<!-- pretrained_table:end -->"
THRESHOLDS = (0.0, 0.1, 0.3, 0.5)
STRICT = (288, 384)
CALIBRATION = {"calibrator": "minmax", "batch_size": 8, "batches": 2}   # the default run's
RUN_TIMEOUT_S = 3600


# ---------------------------------------------------------------- models

def base_model(work):
    from bpnet.imports import import_model

    base = work / "base.hdf5"
    if not base.is_file():
        import_model(SOURCE, base)
    return base


def variant(base, work, pth, retrained):
    """The model file of one row: `base` pruned at `pth` (0 = unpruned), then retrained or not."""
    from bpnet.prune import prune_model_file
    from bpnet.specs import load_train_spec
    from bpnet.train import train

    model = base
    if pth:
        model = work / f"pruned_{pth:g}.hdf5"
        if not model.is_file():
            prune_model_file(base, model, threshold=pth, granularity=8, min_filters=8)
    if retrained:
        out = work / f"retrain_{pth:g}"
        if not (out / "bpnet_model.hdf5").is_file():
            spec = load_train_spec(RETRAIN_SPEC).model_copy(update={"pretrained_weights": model})
            train(spec, out)
        model = out / "bpnet_model.hdf5"
    return model


def retrain_steps():
    from bpnet.specs import load_train_spec

    spec = load_train_spec(RETRAIN_SPEC)
    return spec.num_epoch * spec.steps_per_epoch


# ---------------------------------------------------------------- measurements

def infer_spec(hw):
    from bpnet.specs import load_infer_spec

    return load_infer_spec(INFER_SPEC).model_copy(update={"input_shape": tuple(hw)})


def exported(model, out, int8):
    """(FP32 ONNX, INT8 ONNX or None) of `model` at 288x384; INT8 calibrated as the default run."""
    from bpnet.export import export_model

    fp32, target = out / "model.onnx", out / "model.int8.onnx"
    if not (target if int8 else fp32).is_file():
        options = dict(data_type="int8", cal_image_dir=IMAGES, cal_data_file=out / "cal.tensor", **CALIBRATION) \
            if int8 else {}
        export_model(model, fp32, STRICT, **options)
    return fp32, target if int8 else None


def average_precision(model, hw, out):
    from bpnet.evaluate import evaluate_model

    metrics_file = out / "metrics.json"
    if metrics_file.is_file():
        return json.loads(metrics_file.read_text())["AP"]
    return evaluate_model(model, ANNOTATIONS, IMAGES, infer_spec(hw), out)["AP"]


def measure_row(model, card_hw, work, tag):
    """FP32 AP with the Keras model (fully convolutional: any input size), INT8 AP with ONNX
    Runtime - only when the FP32 model finds people: an INT8 drop from AP ~0 means nothing."""
    from bpnet.guide.gate import is_meaningful
    from bpnet.model import count_params, load_model

    folder = work / tag
    row = {"params": count_params(load_model(model)),
           "ap_fp32_strict": average_precision(model, STRICT, folder / "eval_fp32_strict"),
           "ap_fp32_card": average_precision(model, card_hw, folder / "eval_fp32_card")}
    meaningful = is_meaningful({"AP": row["ap_fp32_strict"]})
    fp32, int8 = exported(model, folder / "export", int8=meaningful)
    row.update(onnx_fp32=str(fp32), onnx_int8=str(int8) if int8 else None,
               ap_int8_strict=average_precision(int8, STRICT, folder / "eval_int8_strict") if int8 else None)
    row["int8_drop_points"] = round(100 * (row["ap_fp32_strict"] - row["ap_int8_strict"]), 2) if int8 else None
    return row


def interleaved_latency(paths, rounds, runs=5):
    """{path: median ms}: each round times every model once (batch 1, 288x384), so load changes
    hit all of them alike; the figure is the median over rounds of each round's median."""
    from bpnet.benchmark import benchmark_model

    samples = {p: [] for p in paths}
    for _ in range(rounds):
        for path in paths:
            samples[path].append(benchmark_model(path, STRICT, 1, runs, 1)["median_ms"])
    return {p: statistics.median(v) for p, v in samples.items()}


# ---------------------------------------------------------------- the dashboard's default run

def default_run_spec():
    """The run spec New run submits as it opens (pretrained base, bundled data)."""
    import yaml

    from app import forms, jobs

    template = yaml.safe_load((ROOT / "specs" / "train_small.yaml").read_text())
    spec, errors = jobs.new_run_spec(forms.default_new_run_form(), None, template)
    if errors:
        raise SystemExit(f"the New-run defaults do not validate: {errors}")
    return spec


def time_default_run(work):
    """Submit the default run to a fresh studio (embedded broker, one worker) and wait for it."""
    from worker import client
    from worker.config import load_config

    home = work / "studio"
    if home.exists():
        import shutil
        shutil.rmtree(home)
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "BPNET_STUDIO_ARTIFACTS")}
    env.update(BPNET_STUDIO_HOME=str(home), PYTHONPATH=str(ROOT))
    config = load_config(env)
    with (home / "worker.log").open("w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker", "--loglevel", "warning"],
                                  env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            spec = default_run_spec()
            started = time.time()
            run_id = client.submit_run(spec, config=config)
            store = client.get_store(config)
            while store.run_status(run_id) not in ("completed", "failed", "cancelled"):
                if time.time() - started > RUN_TIMEOUT_S:
                    raise SystemExit(f"the default run did not finish within {RUN_TIMEOUT_S} s")
                time.sleep(2)
            wall = time.time() - started
            run = client.get_run(run_id, config=config)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
    return run_summary(config, run, spec, wall)


def run_summary(config, run, spec, wall=None):
    """Stage durations (a stage reused from an earlier run of the same spec counts with the
    duration it took there) and results of a finished run."""
    from worker import client

    store = client.get_store(config)
    stages = []
    for s in run["stages"]:
        source = store.stage(s["source_stage_id"]) if s.get("source_stage_id") else s
        stages.append({"label": s["label"], "status": s["status"], "reused": bool(s.get("source_stage_id")),
                       "seconds": round(source.get("duration_s") or 0.0, 1)})
    results = [{k: r.get(k) for k in ("pth", "precision", "params", "AP", "latency_ms", "num_images", "gate")}
               for r in run["results"]]
    total = round(sum(s["seconds"] for s in stages), 1)
    return {"status": run["status"], "wall_s": round(wall, 1) if wall is not None else None,
            "stage_sum_s": total, "spec": spec, "stages": stages, "results": results}


def summary_of_studio_run(home, run_id):
    """`run_summary` of a run already in a studio (`--default-run-from HOME RUN`)."""
    from worker import client
    from worker.config import load_config

    config = load_config({"BPNET_STUDIO_HOME": str(home)})
    run = client.get_run(run_id, config=config)
    return run_summary(config, run, run["spec"])


# ---------------------------------------------------------------- report

def markdown(report):
    lines = [f"Measured by `bench/pretrained_table.py` on {report['cpu']} ({report['isa']}, "
             f"{report['threads']} logical cores), load average {report['load_before']} before and "
             f"{report['load_after']} after (the machine is shared: latencies are for ratios within "
             f"a table). {report['when']}.", ""]
    if report.get("rows"):
        hw = report["card_hw"]
        lines += [f"All 80 bundled images, strict letterbox, `specs/infer_strict_288x384.yaml` decoder; FP32 = the "
                  f"Keras model; INT8 = "
                  f"ONNX Runtime U8S8, min-max calibration on 16 bundled images; retrain = "
                  f"`specs/retrain_pretrained.yaml` ({report['retrain_steps']} steps, batch 2, as the default run); "
                  f"INT8 only where the FP32 model finds people (AP >= 0.02: a drop from ~0 means nothing); "
                  f"latency = ONNX Runtime, batch 1, 288x384, median of {report['rounds']} interleaved rounds.", "",
                  f"| threshold | retrain | parameters | AP FP32 288x384 | AP FP32 {hw[0]}x{hw[1]} (card) | "
                  "FP32 ms | AP INT8 288x384 | INT8 drop (points, FP32 − INT8) | INT8 ms |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in report["rows"]:
            if r["ap_int8_strict"] is None:   # the FP32 model finds nobody
                int8 = "not measured: FP32 finds nobody | — | —"
            else:
                int8 = f"{r['ap_int8_strict']:.3f} | {r['int8_drop_points']:+.1f} | {r['int8_ms']:.0f}"
            lines.append(f"| {r['threshold']:g} | {'yes' if r['retrained'] else 'no'} | {r['params']:,} | "
                         f"{r['ap_fp32_strict']:.3f} | {r['ap_fp32_card']:.3f} | {r['fp32_ms']:.0f} | {int8} |")
        lines.append("")
    run = report.get("default_run")
    if run:
        spec = run["spec"]
        took = (f"**{run['status']} in {run['wall_s'] / 60:.1f} min ({run['wall_s']:.0f} s)**"
                if run.get("wall_s") is not None and not any(s["reused"] for s in run["stages"]) else
                f"**{run['status']}; its stages took {run['stage_sum_s'] / 60:.1f} min ({run['stage_sum_s']:.0f} s) "
                "together** (one worker runs them one after another; stages marked reused ran in an earlier "
                "submission of the same spec and count with the time they took there)")
        lines += [f"The dashboard's default run (New run as it opens: prune thresholds "
                  f"{spec['prune_thresholds']}, {spec['retrain_epochs']} retrain epoch(s), "
                  f"{'/'.join(spec['precisions'])} at {spec['resolutions']}, one worker, embedded broker, "
                  f"fresh studio so the import runs too): {took}.", "",
                  "| stage | seconds |", "|---|---|"]
        lines += [f"| {s['label']}{' (reused)' if s['reused'] else ''} | {s['seconds']:.0f} |" for s in run["stages"]]
        lines += ["", "| result | parameters | AP | CNN ms (ORT, its stage's benchmark) | gate |",
                  "|---|---|---|---|---|"]
        for r in run["results"]:
            name = ("unpruned" if r["pth"] is None else f"pth {r['pth']:g}") + f" {r['precision']}"
            ap = "—" if r["AP"] is None else f"{r['AP']:.3f}"
            ms = "—" if r["latency_ms"] is None else f"{r['latency_ms']:.0f}"
            lines.append(f"| {name} | {r['params'] or 0:,} | {ap} | {ms} | {r.get('gate') or '—'} |")
        lines.append("")
    return "\n".join(lines)


def write_docs(text):
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC}: the markers {BEGIN} / {END} are missing")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    tmp = DOC.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    os.replace(tmp, DOC)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-table", action="store_true")
    parser.add_argument("--skip-default-run", action="store_true")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--render-only", action="store_true", help="the table from WORK/rows.json as measured so far")
    parser.add_argument("--default-run-from", nargs=2, metavar=("STUDIO_HOME", "RUN_ID"),
                        help="report this finished run of the default spec instead of submitting one")
    args = parser.parse_args()
    from bpnet.imports.card import load_card
    from bpnet.machine import describe_cpu

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cpu = describe_cpu()
    report = {"cpu": cpu["cpu"], "isa": f"INT8 path {cpu['int8_path']}", "threads": cpu["logical_cores"],
              "load_before": round(os.getloadavg()[0], 1),
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rounds": args.rounds}
    card_hw = tuple(load_card(SOURCE.with_name(SOURCE.stem + ".card.yaml")).input.training_hw)
    report["card_hw"] = list(card_hw)
    if args.render_only:   # the rows measured so far (rows.json), e.g. when a run was cut short
        previous = work / "report.json"
        if previous.is_file():   # the machine and time of the measurement, not of this rendering
            report.update({k: v for k, v in json.loads(previous.read_text()).items()
                           if k in ("cpu", "isa", "threads", "load_before", "when")})
        report["retrain_steps"] = retrain_steps()
        report["rows"] = json.loads((work / "rows.json").read_text())
        missing = [r for r in report["rows"] if "fp32_ms" not in r]
        if missing:
            latency = interleaved_latency([p for r in missing for p in (r["onnx_fp32"], r["onnx_int8"]) if p], args.rounds)
            for r in missing:
                r["fp32_ms"], r["int8_ms"] = latency[r["onnx_fp32"]], latency.get(r["onnx_int8"])
    elif not args.skip_table:
        base = base_model(work)
        report["retrain_steps"] = retrain_steps()
        rows = []
        for pth in THRESHOLDS:
            for retrained in (False, True):
                started = time.time()
                model = variant(base, work, pth, retrained)
                row = {"threshold": pth, "retrained": retrained,
                       **measure_row(model, card_hw, work, f"pth{pth:g}_{'retrained' if retrained else 'pruned'}")}
                row["seconds"] = round(time.time() - started)
                rows.append(row)
                print(json.dumps(row), flush=True)
                (work / "rows.json").write_text(json.dumps(rows, indent=2))
        latency = interleaved_latency([p for r in rows for p in (r["onnx_fp32"], r["onnx_int8"]) if p], args.rounds)
        for r in rows:
            r["fp32_ms"], r["int8_ms"] = latency[r["onnx_fp32"]], latency.get(r["onnx_int8"])
        (work / "rows.json").write_text(json.dumps(rows, indent=2))
        report["rows"] = rows
    if args.default_run_from:
        report["default_run"] = summary_of_studio_run(*args.default_run_from)
    elif not args.skip_default_run:
        report["default_run"] = time_default_run(work)
        print(json.dumps(report["default_run"]["stages"]), flush=True)
    if not args.render_only or "load_after" not in report:
        previous = work / "report.json"
        report["load_after"] = (json.loads(previous.read_text()).get("load_after") if args.render_only and previous.is_file()
                                else None) or round(os.getloadavg()[0], 1)
    (work / "report.json").write_text(json.dumps(report, indent=2, default=str))
    text = markdown(report)
    print(text)
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
