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


def prune_model_file(model_path, output_path, threshold=0.1, equalization="union", granularity=8,
                     min_filters=16, normalizer="max", excluded_layers=(), progress=None):
    """Prune the BodyPoseNet at `model_path`, save it to `output_path` (atomically) and return
    the report, also written to `output_path + '.prune.json'`."""
    check_options(threshold, equalization, granularity, min_filters, normalizer)
    check_paths(model_path, output_path)
    from bpnet.model import OUTPUT_NAME, count_params, load_model, num_stages
    from bpnet.imports.card import copy_card_into_hdf5
    from bpnet.prune.surgery import prune_keras_model

    emit(progress, "prune", "start", message=f"loading {model_path}", fraction=0.0)
    model = load_model(model_path)
    outputs = [layer.name for layer in model.layers if OUTPUT_NAME.match(layer.name)]
    excluded = list(dict.fromkeys(list(excluded_layers) + outputs))
    pruned, per_layer = prune_keras_model(
        model, threshold=threshold, equalization=equalization, granularity=granularity,
        min_filters=min_filters, normalizer=normalizer, excluded_layers=excluded)
    emit(progress, "prune", "pruned", message="saving the pruned model", fraction=0.8)

    with atomic_path(output_path) as tmp, warnings.catch_warnings():
        # HDF5 is the project's model format (ARCHITECTURE.md); Keras' "legacy format" notice
        # would only confuse the user.
        warnings.simplefilter("ignore", UserWarning)
        pruned.save(tmp, save_format="h5", include_optimizer=False)
        copy_card_into_hdf5(model_path, tmp)   # an imported network keeps its model card
    before, after = count_params(model), count_params(pruned)
    report = {
        "input_model": str(model_path),
        "output_model": str(output_path),
        "stages": num_stages(model),
        "params_before": before,
        "params_after": after,
        "param_ratio": after / before,
        "layers": [{"name": name, "kept": kept, "total": total}
                   for name, (kept, total) in per_layer.items()],
        "options": {"threshold": threshold, "equalization": equalization,
                    "granularity": granularity, "min_filters": min_filters,
                    "normalizer": normalizer, "excluded_layers": list(excluded_layers)},
        "never_pruned": outputs,
    }
    write_json_atomic(report_path(output_path), report)
    emit(progress, "prune", "done", fraction=1.0, params_before=before, params_after=after,
         message=f"kept {after / before:.1%} of the parameters")
    return report


def format_summary(report):
    """A few lines for the terminal: the parameter counts and the layers that shrank."""
    lines = [
        f"pruned {report['input_model']} -> {report['output_model']}",
        f"parameters: {report['params_before']:,} -> {report['params_after']:,} "
        f"(ratio {report['param_ratio']:.3f})",
    ]
    shrunk = [row for row in report["layers"] if row["kept"] < row["total"]]
    lines.append(f"{len(shrunk)} of {len(report['layers'])} conv layers pruned:")
    width = max((len(row["name"]) for row in shrunk), default=0)
    lines += [f"  {row['name']:<{width}}  {row['kept']:>5} / {row['total']}" for row in shrunk]
    lines.append(f"report: {report_path(report['output_model'])}")
    return "\n".join(lines)
