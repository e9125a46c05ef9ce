"""`bpnet import`: pretrained pose networks from other tools, into our model contract.

    .tflite / .pb  -> rebuilt as our Keras model (bpnet.imports.tflite / .graphdef -> .keras_build)
    .onnx          -> stays ONNX, wrapped so it takes our input and gives our outputs (.onnx_source)
    .hdf5 (TAO)    -> TAO BodyPoseNet Keras model renamed to our contract (.tao)

Every import reads a model card (bpnet.imports.card), folds its channel map into the model,
checks parity with the source runtime and the network's response at annotated keypoints on
real images (bpnet.imports.parity), and writes MODEL, MODEL.card.yaml and MODEL.import.json
atomically: a failed check leaves nothing behind.
"""

from pathlib import Path

from bpnet.errors import BpnetError
from bpnet.imports.card import (ModelCard, card_path_for, card_to_yaml, load_card, sha256_of)

SOURCE_KINDS = {".tflite": "tflite", ".pb": "graphdef", ".onnx": "onnx", ".hdf5": "tao", ".h5": "tao"}


def find_card(source, card_path=None):
    """The card given, or SOURCE.card.yaml beside the source; a clear error when there is none."""
    source = Path(source)
    path = Path(card_path) if card_path else card_path_for(source)
    if not path.is_file():
        if card_path:
            raise BpnetError(f"model card not found: {path}")
        raise BpnetError(f"{source}: a model card is needed (input normalisation, channel map...): "
                         f"give --card CARD.yaml or put it at {path} (see docs/pretrained.md)")
    return load_card(path)


def checked_card(card, source):
    """The card with the source's SHA-256 filled in; an error when the card names another file."""
    digest = sha256_of(source)
    if card.source_sha256 and card.source_sha256 != digest:
        raise BpnetError(f"model card source_sha256 {card.source_sha256} does not match {source} "
                         f"(sha256 {digest}): the card describes another file")
    return card.model_copy(update={"source_sha256": digest})


def import_model(source, output, card_path=None, log=print):
    """Import `source` into `output`; returns the import report (also written as JSON)."""
    source, output = Path(source), Path(output)
    if not source.is_file():
        raise BpnetError(f"source model not found: {source}")
    kind = SOURCE_KINDS.get(source.suffix.lower())
    if kind is None:
        raise BpnetError(f"{source}: unknown source type {source.suffix!r}; expected one of "
                         f"{sorted(SOURCE_KINDS)} (TFLite, frozen GraphDef, ONNX, TAO Keras HDF5)")
    want = ".onnx" if kind == "onnx" else ".hdf5"
    if output.suffix.lower() not in ((".onnx",) if kind == "onnx" else (".hdf5", ".h5")):
        raise BpnetError(f"-o {output}: a {kind} import writes {want} "
                         + ("(an ONNX import stays ONNX: no trainable graph)" if kind == "onnx" else ""))
    card = checked_card(find_card(source, card_path), source)
    if kind == "onnx":
        from bpnet.imports.onnx_source import import_onnx
        return import_onnx(source, output, card, log)
    if kind == "tao":
        from bpnet.imports.tao import import_tao
        return import_tao(source, output, card, log)
    from bpnet.imports.rebuild import import_rebuilt
    return import_rebuilt(source, output, card, kind, log)


__all__ = ["ModelCard", "import_model", "load_card", "card_to_yaml", "find_card"]
