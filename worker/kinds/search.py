"""Kind `search`: the AP-budget search for the prune threshold from the parent's model
(bpnet.guide.search_run); the chosen model, its evaluation and pruning report are copied into
this stage's folder for its children and the downloads. Trials are cached in one folder beside
the stage folders, so another search (budget, iterations) reuses earlier trials."""

import shutil
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from bpnet.specs import InferSpec, Strict, TrainSpec
from worker.kinds.base import ModelOutputs, StageParams, StageResult, training_work
from worker.kinds.prune import PruneOptions

KIND = "search"
MODEL_FILE = "chosen_model.hdf5"
SEARCH_TRIALS_DIR = "search-trials"


class LatencyOptions(Strict):
    input_hw: tuple[int, int]
    batch_size: int = Field(ge=1)
    runs: int = Field(ge=1)
    warmup: int = Field(ge=0)


class Params(StageParams):
    retrain_spec: TrainSpec            # each trial sets pretrained_weights to its pruned model
    prune: PruneOptions
    budget_ap: float
    objective: Literal["params", "latency"]
    max_iters: int
    threshold_range: tuple[float, float]
    input_hw: tuple[int, int]
    infer_spec: InferSpec
    annotations: str
    images: str
    max_images: Optional[int] = None
    latency: Optional[LatencyOptions] = None


class Outputs(ModelOutputs):
    search: str = "search.json"                       # the search report (live while it runs)
    chosen_metrics: Optional[str] = None              # the chosen trial's metrics.json
    chosen_prune_report: Optional[str] = None


def link_shared_trial_cache(out_dir):
    """The engine caches trials under out_dir/cache/; point that at one folder beside the stage
    folders (the manifest does not descend into the link)."""
    shared = out_dir.parent / SEARCH_TRIALS_DIR
    shared.mkdir(exist_ok=True)
    link = out_dir / "cache"
    if not link.exists():
        link.symlink_to(shared.resolve(), target_is_directory=True)


def work(params, result=None):
    """Its iteration limit x one trial's retraining (an upper bound: it may stop early)."""
    return "search", params.max_iters * training_work(params.retrain_spec)


def run(params, parent, out_dir, progress, inputs=None):
    from bpnet.guide.search_run import search_prune_threshold

    retrain = params.retrain_spec.model_copy(update={"load_graph": False})
    link_shared_trial_cache(out_dir)
    latency = params.latency.model_dump() if params.latency else None
    report = search_prune_threshold(
        parent.model(), retrain, params.annotations, params.images, params.infer_spec, out_dir,
        budget_ap=params.budget_ap, objective=params.objective, max_iters=params.max_iters,
        threshold_range=tuple(params.threshold_range), prune_options=params.prune.model_dump(),
        latency_options=latency, max_images=params.max_images, progress=progress)
    chosen = report["chosen"]
    shutil.copyfile(report["chosen_model"], out_dir / MODEL_FILE)
    files = {}
    if chosen is not None:
        shutil.copyfile(chosen["artifacts"]["metrics"], out_dir / "chosen_metrics.json")
        files["chosen_metrics"] = "chosen_metrics.json"
        prune_report = Path(f"{chosen['artifacts']['pruned_model']}.prune.json")
        if prune_report.is_file():
            shutil.copyfile(prune_report, out_dir / "chosen_prune_report.json")
            files["chosen_prune_report"] = "chosen_prune_report.json"
    metrics = {"iterations": len(report["trials"]), "base_ap": report["base"]["ap"],
               "base_size": report["base"]["size"]}
    if chosen is not None:
        metrics.update(chosen_threshold=chosen["threshold"], chosen_ap=chosen["ap"], chosen_size=chosen["size"])
    outputs = Outputs(model=MODEL_FILE, num_stages=parent.outputs.num_stages,
                      prune_threshold=chosen["threshold"] if chosen else None, **files)
    return StageResult(outputs, None, metrics)
