"""Kind `import`: an existing trained Keras BodyPoseNet becomes the run's base model (copied into
the stage folder, checked to be a BodyPoseNet)."""

import shutil
from pathlib import Path

from worker.kinds.base import ModelOutputs, StageParams, StageResult

KIND = "import"
MODEL_FILE = "bpnet_model.hdf5"


class Params(StageParams):
    model: str                 # path of the user's .hdf5 (its bytes are in the cache key)


Outputs = ModelOutputs


def run(params, parent, out_dir, progress, inputs=None):
    from bpnet.model import count_params, load_model, num_stages

    src = Path(params.model)
    model = load_model(src)   # a clear error when the file is not a BodyPoseNet
    shutil.copyfile(src, out_dir / MODEL_FILE)
    stages, params_count = num_stages(model), count_params(model)
    progress({"stage": "import", "event": "done", "fraction": 1.0,
              "message": f"{src.name}: {stages} stages, {params_count} parameters"})
    return StageResult(ModelOutputs(model=MODEL_FILE, num_stages=stages), None, {"params": params_count})

