"""Kind `import`: an existing trained Keras BodyPoseNet becomes the run's base model (copied into
the stage folder, checked to be a BodyPoseNet); a pretrained .tflite/.pb network (its model card
beside it) is rebuilt by `bpnet import`, parity-checked, on the run's first use."""

import shutil
from pathlib import Path

from worker.kinds.base import ModelOutputs, StageParams, StageResult

KIND = "import"
MODEL_FILE = "bpnet_model.hdf5"
IMPORTED_SUFFIXES = (".tflite", ".pb")   # rebuilt by bpnet import (worker.runs accepts them)


class Params(StageParams):
    model: str                 # path of the user's .hdf5 (its bytes are in the cache key)


Outputs = ModelOutputs


def run(params, parent, out_dir, progress, inputs=None):
    from bpnet.model import count_params, load_model, num_stages

    src = Path(params.model)
    if src.suffix.lower() in IMPORTED_SUFFIXES:
        from bpnet.imports import import_model
        import_model(src, out_dir / MODEL_FILE, log=lambda message: progress(
            {"stage": "import", "event": "phase", "message": message}))
        model = load_model(out_dir / MODEL_FILE)
    else:
        model = load_model(src)   # a clear error when the file is not a BodyPoseNet
        shutil.copyfile(src, out_dir / MODEL_FILE)
    stages, params_count = num_stages(model), count_params(model)
    progress({"stage": "import", "event": "done", "fraction": 1.0,
              "message": f"{src.name}: {stages} stages, {params_count} parameters"})
    return StageResult(ModelOutputs(model=MODEL_FILE, num_stages=stages), None, {"params": params_count})

