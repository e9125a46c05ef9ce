"""One module per stage kind. Each defines

- `KIND`: its name in stage rows;
- `Params`: a pydantic model of what the stage computes from. `expand_run` builds it, and its
  `key_dict()` is stored in the stage row and hashed into the cache key;
- `Outputs`: a pydantic model naming every file of the stage folder a child reads (plus small
  facts such as `num_stages`); children read these names, never a guessed path;
- `run(params, parent, out_dir, progress, inputs) -> StageResult`: calls one engine verb;
- optionally `work(params, result=None) -> (cost kind, units)`: what its time scales with, for the
  cost preview (worker.costs); without it a stage is one unit per model.
  `parent` is a `base.Parent` (kind, folder, validated Outputs) or None; `inputs` the other
  finished stages of the run it reads (only the gate has any).

Adding a kind: write `worker/kinds/<name>.py` with the four names above, add it to KINDS below,
add its node in `worker.runs.expand_run` (build its Params) and, when it needs another worker
queue, its entry in `worker.scheduler`. docs/ARCHITECTURE.md has the table of kinds.

Modules import only pydantic models at top level; TensorFlow and the engine load inside `run`.
"""

from worker.kinds import (engine, evaluate, explore, explore_point, export, gate, import_model, prune, quantize,
                          retrain, search, train)
from worker.kinds.base import Parent, StageResult

KINDS = {module.KIND: module for module in (import_model, train, retrain, prune, search, export, quantize,
                                            engine, evaluate, gate, explore, explore_point)}

__all__ = ["KINDS", "Parent", "StageResult", "kind_module", "parse_outputs", "parse_params"]


def kind_module(kind):
    from bpnet.errors import BpnetError

    if kind not in KINDS:
        raise BpnetError(f"stage kind {kind!r} is not one of {', '.join(KINDS)}")
    return KINDS[kind]


def parse_params(kind, params, where="stage"):
    """The stored params of a `kind` stage, validated into its Params (once, by the runner)."""
    from bpnet.specs import parse_spec

    return parse_spec(kind_module(kind).Params, params or {}, f"parameters of this {where}")


def parse_outputs(kind, outputs, where="stage"):
    """A finished `kind` stage's stored outputs, validated into its Outputs."""
    from bpnet.specs import parse_spec

    return parse_spec(kind_module(kind).Outputs, outputs or {}, f"outputs of the {kind} {where}")
