"""ONNX Runtime (CPU) backend for the files `bpnet export` writes (FP32, FP16 or INT8 Q/DQ).

An exported file holds one stage with outputs `heatmaps` and `pafs`; a graph that keeps every
stage's outputs (`stage{k}_heatmaps`, `stage{k}_pafs`) also works and any of its stages can be
chosen. Later stages cannot be removed from an ONNX file here, so asking for a stage the file
does not expose is an error that says how to export it.
"""

import re

import numpy as np

from bpnet.backends.base import Backend
from bpnet.errors import BpnetError

STAGE_OUTPUT = re.compile(r"^stage(\d+)_(heatmaps|pafs)$")
STAGE_METADATA_KEY = "bpnet_stage"   # optional: the stage an exported file holds


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model_path, stage=None, threads=None):
        import onnx

        from bpnet.onnx_graph import onnx_precision, onnx_session

        try:
            proto = onnx.load(str(model_path), load_external_data=False)
            self.session = onnx_session(str(model_path), threads)
        except Exception as err:  # onnx/onnxruntime raise their own types for foreign files
            raise BpnetError(f"model {model_path} could not be loaded as an ONNX model: "
                             f"{type(err).__name__}: {err}") from None
        self.path = model_path
        self.precision = onnx_precision(proto)
        metadata = {p.key: p.value for p in proto.metadata_props}
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise BpnetError(f"model {model_path}: expected one NHWC image input, got "
                             f"{[(i.name, i.shape) for i in inputs]}")
        self.input_name = inputs[0].name
        height, width = inputs[0].shape[1:3]
        self.input_hw = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_names, self.stage, self.num_stages = choose_outputs(
            outputs, stage, metadata.get(STAGE_METADATA_KEY), model_path)

    def predict(self, batch):
        heatmaps, pafs = self.session.run(list(self.output_names),
                                          {self.input_name: np.asarray(batch, np.float32)})
        return np.asarray(heatmaps, np.float32), np.asarray(pafs, np.float32)

    def close(self):
        self.session = None


def choose_outputs(outputs, stage, exported_stage, model_path):
    """(output names (heatmaps, pafs), stage, number of stages the file exposes)."""
    if "heatmaps" in outputs and "pafs" in outputs:
        held = int(exported_stage) if exported_stage else None
        if stage is not None and held != int(stage):
            holds = f"stage {held}" if held else "one exported stage"
            raise BpnetError(f"model {model_path} holds {holds} (outputs heatmaps, pafs); "
                             f"output_stage_to_use {stage} is not in it: set output_stage_to_use "
                             f"to null, or export that stage (bpnet export --stage {stage})")
        return ("heatmaps", "pafs"), held, 1
    stages = sorted({int(m.group(1)) for m in map(STAGE_OUTPUT.match, outputs) if m})
    complete = [k for k in stages if f"stage{k}_heatmaps" in outputs and f"stage{k}_pafs" in outputs]
    if not complete:
        raise BpnetError(f"model {model_path}: outputs {outputs} are not a BodyPoseNet's; expected "
                         "heatmaps and pafs (or stage{k}_heatmaps and stage{k}_pafs)")
    chosen = complete[-1] if stage is None else int(stage)
    if chosen not in complete:
        raise BpnetError(f"model {model_path}: output_stage_to_use {stage} is not among the "
                         f"stages this file exposes {complete}")
    return (f"stage{chosen}_heatmaps", f"stage{chosen}_pafs"), chosen, len(complete)
