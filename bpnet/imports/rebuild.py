"""TFLite and frozen-graph imports: parse -> fold the card's channel map -> Keras -> check -> save."""

import time
from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.fileio import atomic_path, write_json_atomic, write_text_atomic
from bpnet.imports import parity
from bpnet.imports.card import (bgr_normalization, card_path_for, card_to_yaml, map_source_output,
                                skeleton_map, write_card_into_hdf5)
from bpnet.imports.graph import apply_channel_map, find_heads, output_offsets
from bpnet.skeleton import load_skeleton

BGR_FROM_RGB = (2, 1, 0)


def read_source_graph(source, kind, card):
    if kind == "tflite":
        from bpnet.imports.tflite import read_tflite
        return read_tflite(source)
    from bpnet.imports.graphdef import read_graphdef
    return read_graphdef(source, card.output.tensor, card.input.training_hw)


def fold_card(graph, card, skeleton, source):
    """Find the stage outputs and fold the card's channel map (and colour order) into the weights."""
    heat_card, paf_card = card.output.heatmaps, card.output.pafs
    num_heat, num_paf = len(heat_card.parts), 2 * len(paf_card.limbs)
    if (num_heat, num_paf) != (skeleton.num_heatmaps, skeleton.num_pafs):
        raise BpnetError(f"model card: {num_heat} heatmap and {num_paf} PAF channels, but skeleton "
                         f"{skeleton.name!r} has {skeleton.num_heatmaps} and {skeleton.num_pafs}; the "
                         "card must list exactly the skeleton's parts (+ background) and limbs")
    output = card.output.tensor or graph.outputs[0]
    heads = find_heads(graph, num_heat, num_paf, output)
    heat_at, paf_at = output_offsets(graph, output, heads)
    if (heat_at, paf_at) != (heat_card.first_channel, paf_card.first_channel):
        raise BpnetError(f"model card: output.heatmaps.first_channel {heat_card.first_channel} and "
                         f"output.pafs.first_channel {paf_card.first_channel}, but in {source}'s output "
                         f"{output!r} the heatmaps start at {heat_at} and the PAFs at {paf_at}")
    heat_src, heat_sign, paf_src, paf_sign = skeleton_map(card, skeleton)
    by_name = {n.name: n for n in graph.nodes}
    for heat, paf in zip(heads.heatmaps, heads.pafs):
        apply_channel_map(graph, by_name[heat].output, heat_src - heat_at, heat_sign)
        apply_channel_map(graph, by_name[paf].output, paf_src - paf_at, paf_sign)
    if card.input.colour_order == "RGB":   # our pipeline feeds BGR: swap the first convs' inputs
        apply_channel_map(graph, graph.input, BGR_FROM_RGB, np.ones(3, np.float32))
    return heads


def source_runner(source, kind, graph, output):
    """A function (N, H, W, 3) source-colour batch -> (N, h, w, C) source output."""
    if kind == "tflite":
        import bpnet  # noqa: F401
        import tensorflow as tf

        from bpnet.imports.tflite import float_reference

        interpreter = tf.lite.Interpreter(
            model_content=float_reference(source), num_threads=1,
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
        interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()
        out_index = next((o["index"] for o in out if o["name"] == output), out[0]["index"])

        def run(batch):
            results = []
            for image in batch:
                interpreter.set_tensor(inp["index"], image[None].astype(np.float32))
                interpreter.invoke()
                results.append(interpreter.get_tensor(out_index)[0].copy())
            return np.stack(results)
        return run

    import bpnet  # noqa: F401
    import tensorflow as tf
    from bpnet.imports.graphdef import parse_graphdef, check_ops

    graph_def = parse_graphdef(source)
    check_ops(source, graph_def)   # only the supported arithmetic ops ever run

    def run(batch):   # one image at a time: frozen graphs often fix the batch to 1
        with tf.Graph().as_default() as g:
            tf.compat.v1.import_graph_def(graph_def, name="")
            with tf.compat.v1.Session(graph=g) as session:
                return np.concatenate([session.run(f"{output}:0", {f"{graph.input}:0": image[None].astype(np.float32)})
                                       for image in batch])
    return run


def import_rebuilt(source, output, card, kind, log=print):
    from bpnet.imports.keras_build import build_keras_model
    from bpnet.model import count_params, stage_model, write_hdf5

    start = time.perf_counter()
    skeleton = load_skeleton(card.skeleton)
    graph = read_source_graph(source, kind, card)
    log(f"read {source}: {len(graph.nodes)} layers ({kind})")
    out_tensor = card.output.tensor or graph.outputs[0]
    heads = fold_card(graph, card, skeleton, source)
    model = build_keras_model(graph, heads, name=_model_name(output))
    log(f"rebuilt as Keras: {len(heads.heatmaps)} stages, {count_params(model):,} parameters")

    hw = tuple(graph.input_hw or card.input.training_hw)
    check = parity.bundled_check_images(skeleton)
    batch, boxes = parity.prepare(check.images, hw, bgr_normalization(card))
    run = source_runner(source, kind, graph, out_tensor)
    source_batch = batch[..., list(BGR_FROM_RGB)] if card.input.colour_order == "RGB" else batch
    n = parity.NUM_PARITY_IMAGES   # the reference runtimes are slow: parity on the first images
    theirs = map_source_output(run(source_batch[:n]), card, skeleton)
    ours = [np.asarray(t) for t in stage_model(model)(batch, training=False)]
    diff = parity.check_parity([t[:n] for t in ours], theirs, f"the {kind} runtime on {source}")
    log(f"parity with the {kind} runtime on {n} real images at {hw[0]}x{hw[1]}: "
        f"max |diff| = {diff:.2e} (allowed {parity.PARITY_TOLERANCE:g})")
    # With parity shown, the rebuilt maps stand for the source's on the remaining images.
    response = parity.check_response(
        parity.keypoint_response(ours[0], boxes, check.parts, card.input.stride), "the model card")
    log(f"keypoint response with the card's preprocessing: {response:.3f} "
        f"(>= {parity.MIN_KEYPOINT_RESPONSE} needed) on {check.source}")

    report = {"source": str(source), "source_kind": kind, "source_sha256": card.source_sha256,
              "output": str(output), "stages": len(heads.heatmaps), "parameters": count_params(model),
              "parity": {"max_abs_diff": diff, "tolerance": parity.PARITY_TOLERANCE,
                         "input_hw": list(hw), "images": check.source, "runtime": kind},
              "keypoint_response": response, "seconds": round(time.perf_counter() - start, 1)}
    save_imported(model, output, card, report)
    log(f"wrote {output} (+ {card_path_for(output).name}, {Path(output).stem}.import.json)")
    return report


def save_imported(model, output, card, report):
    """Report, card, then the model (with the card inside) last: a model present is complete."""
    from bpnet.model import write_hdf5

    output = Path(output)
    write_json_atomic(output.with_name(output.stem + ".import.json"), report)
    write_text_atomic(card_path_for(output), card_to_yaml(card))
    with atomic_path(output) as tmp:
        write_hdf5(model, tmp)
        write_card_into_hdf5(tmp, card)


def _model_name(output):
    stem = "".join(c if c.isalnum() else "_" for c in Path(output).stem)
    return f"imported_{stem}"[:60]
