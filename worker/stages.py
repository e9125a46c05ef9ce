"""Runs one stage inside a worker process: its stored row is validated once into the kind's
Params, its parent's outputs into the parent kind's Outputs, and the kind's `run` is called (this
is where TensorFlow gets imported, lazily, by the engine modules). See worker/kinds/."""

from pathlib import Path

from worker.kinds import Parent, kind_module, parse_outputs, parse_params


def parent_of(kind, folder, outputs):
    """A `Parent` of a finished stage row's kind, folder and stored outputs."""
    return Parent(kind=kind, dir=Path(folder), outputs=parse_outputs(kind, outputs))


def run_stage(stage, parent, out_dir, progress, inputs=None):
    """Run `stage` (a stage row) reading `parent` (a Parent or None) and `inputs` ({name: Parent}
    of other finished stages of the run); returns (outputs dict, result dict or None, metrics)."""
    module = kind_module(stage["kind"])
    params = parse_params(stage["kind"], stage["params"], f"stage {stage.get('label', '')}".strip())
    done = module.run(params, parent, Path(out_dir), progress, inputs or {})
    return done.outputs.dump(), done.result, done.metrics
