"""`bpnet prune` as a library call: a BodyPoseNet HDF5 file in, a smaller one and a report out.

The heatmap and PAF output convolutions of every stage are never pruned (their channels are the
skeleton's); in refinement stages they are concatenated with the backbone features, so only the
backbone part of that concatenation shrinks. The input file is only read.
"""

import warnings
from pathlib import Path

from bpnet.errors import BpnetError
from bpnet.events import emit
from bpnet.fileio import atomic_path, write_json_atomic
from bpnet.limits import DEFAULT_PRUNE_GRANULARITY, DEFAULT_PRUNE_MIN_FILTERS, DEFAULT_PRUNE_THRESHOLD
from bpnet.prune.graph import count_params, plan_pruning, pruned_param_count
from bpnet.prune.h5_file import read_model_config_and_weights
from bpnet.prune.ranking import (EQUALIZATIONS, NORMALIZERS, check_choice,
                                 check_pruning_options)

MODEL_SUFFIXES = (".hdf5", ".h5")


def report_path(output_path):
    return Path(str(output_path) + ".prune.json")


def check_options(threshold, equalization, granularity, min_filters, normalizer):
    check_pruning_options(threshold, granularity, min_filters)
    check_choice(equalization, EQUALIZATIONS, "equalization criterion (-eq)")
    check_choice(normalizer, NORMALIZERS, "normalizer (-n)")


def check_paths(model_path, output_path):
    model_path, output_path = Path(model_path), Path(output_path)
    if output_path.suffix.lower() not in MODEL_SUFFIXES:
        raise BpnetError(f"output model (-o): {output_path} must end in .hdf5 or .h5 "
                         "(the pruned model is saved as Keras HDF5)")
    if output_path.resolve() == model_path.resolve():
        raise BpnetError(f"output model (-o): {output_path} is the input model; "
                         "pruning never overwrites its input, choose another path")


def prune_model_file(model_path, output_path, threshold=DEFAULT_PRUNE_THRESHOLD, equalization=EQUALIZATIONS[0],
                     granularity=DEFAULT_PRUNE_GRANULARITY, min_filters=DEFAULT_PRUNE_MIN_FILTERS,
                     normalizer=NORMALIZERS[0], excluded_layers=(), progress=None):
    """Prune the BodyPoseNet at `model_path`, save it to `output_path` (atomically) and return
    the report, also written to `output_path + '.prune.json'`."""
    check_options(threshold, equalization, granularity, min_filters, normalizer)
    check_paths(model_path, output_path)
    from bpnet.model import OUTPUT_NAME, load_model, num_stages
    from bpnet.imports.card import copy_card_into_hdf5
    from bpnet.prune.surgery import prune_keras_model

    emit(progress, "prune", "start", message=f"loading {model_path}", fraction=0.0)
    model = load_model(model_path)
    outputs = [layer.name for layer in model.layers if OUTPUT_NAME.match(layer.name)]
    excluded = list(dict.fromkeys(list(excluded_layers) + outputs))
    pruned, _, plan = prune_keras_model(
        model, threshold=threshold, equalization=equalization, granularity=granularity,
        min_filters=min_filters, normalizer=normalizer, excluded_layers=excluded,
        return_plan=True)
    emit(progress, "prune", "pruned", message="saving the pruned model", fraction=0.8)

    with atomic_path(output_path) as tmp, warnings.catch_warnings():
        # HDF5 is the project's model format (ARCHITECTURE.md); Keras' "legacy format" notice
        # would only confuse the user.
        warnings.simplefilter("ignore", UserWarning)
        pruned.save(tmp, save_format="h5", include_optimizer=False)
        copy_card_into_hdf5(model_path, tmp)   # an imported network keeps its model card
    weights = {layer.name: layer.get_weights() for layer in model.layers}
    report = {
        "input_model": str(model_path),
        "output_model": str(output_path),
        "stages": num_stages(model),
        **plan_report(plan, weights),
        "options": {"threshold": threshold, "equalization": equalization,
                    "granularity": granularity, "min_filters": min_filters,
                    "normalizer": normalizer, "excluded_layers": list(excluded_layers)},
        "never_pruned": outputs,
    }
    write_json_atomic(report_path(output_path), report)
    before, after = report["params_before"], report["params_after"]
    emit(progress, "prune", "done", fraction=1.0, params_before=before, params_after=after,
         message=f"kept {after / before:.1%} of the parameters")
    return report


def plan_report(plan, weights):
    """The report's numbers: parameters before/after, per-layer kept/total filters and the
    groups of convolutions tied by residual Adds (they keep the same channels)."""
    before, after = count_params(weights), pruned_param_count(plan, weights)
    kinds = {entry["name"]: entry["class_name"] for entry in plan.layers}
    return {
        "params_before": before,
        "params_after": after,
        "param_ratio": after / before,
        "layers": [{"name": name, "kind": kinds[name], "kept": kept, "total": total}
                   for name, (kept, total) in plan.pruned_layers().items()],
        "tied_groups": [{"layers": convs, "kept": plan.filters(convs[0])[0],
                         "total": plan.filters(convs[0])[1]}
                        for convs in plan.groups if len(convs) > 1],
    }


def load_for_preview(model):
    """(config, weights) of a model file, or the pair itself; read once, preview many times."""
    if isinstance(model, (str, Path)):
        return read_model_config_and_weights(model)
    return model


def preview_pruning(model, threshold=DEFAULT_PRUNE_THRESHOLD, equalization=EQUALIZATIONS[0],
                    granularity=DEFAULT_PRUNE_GRANULARITY, min_filters=DEFAULT_PRUNE_MIN_FILTERS,
                    normalizer=NORMALIZERS[0], excluded_layers=()):
    """The pruning decision `bpnet prune` would take, computed from the weights alone (no Keras
    model is built, TensorFlow is not imported): the report's parameter counts, layers and tied
    groups. `model` is a Keras HDF5 path or a `(config, weights)` pair from `load_for_preview`.
    The model's output layers are never pruned, as in `bpnet prune`."""
    check_options(threshold, equalization, granularity, min_filters, normalizer)
    config, weights = load_for_preview(model)
    if "output_layers" not in config:
        raise BpnetError("model is not a functional Keras model; pruning needs the layer graph")
    outputs = [item[0] for item in config["output_layers"]]
    excluded = list(dict.fromkeys(list(excluded_layers) + outputs))
    plan = plan_pruning(config, weights, threshold=threshold, equalization=equalization,
                        granularity=granularity, min_filters=min_filters, normalizer=normalizer,
                        excluded_layers=excluded)
    return {**plan_report(plan, weights),
            "options": {"threshold": threshold, "equalization": equalization,
                        "granularity": granularity, "min_filters": min_filters,
                        "normalizer": normalizer, "excluded_layers": list(excluded_layers)},
            "never_pruned": outputs}


def count_kept_params(model, threshold, **options):
    """Parameters the pruned model would have at `threshold` (a dry run, see `preview_pruning`)."""
    return preview_pruning(model, threshold, **options)["params_after"]


def format_summary(report, dry_run=False):
    """A few lines for the terminal: the parameter counts, the layers that shrank and the groups
    of layers tied by residual Adds."""
    header = ("dry run (nothing written): pruning " + str(report.get("input_model", "the model"))
              if dry_run else f"pruned {report['input_model']} -> {report['output_model']}")
    lines = [
        header,
        f"parameters: {report['params_before']:,} -> {report['params_after']:,} "
        f"(ratio {report['param_ratio']:.3f})",
    ]
    shrunk = [row for row in report["layers"] if row["kept"] < row["total"]]
    lines.append(f"{len(shrunk)} of {len(report['layers'])} conv layers pruned:")
    width = max((len(row["name"]) for row in shrunk), default=0)
    lines += [f"  {row['name']:<{width}}  {row['kept']:>5} / {row['total']}" for row in shrunk]
    groups = report.get("tied_groups", [])
    if groups:
        lines.append(f"{len(groups)} groups of convs tied by element-wise ops (same channels kept):")
        lines += [f"  {g['kept']:>5} / {g['total']}  {', '.join(g['layers'])}" for g in groups]
    if not dry_run:
        lines.append(f"report: {report_path(report['output_model'])}")
    return "\n".join(lines)
