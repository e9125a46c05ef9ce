"""TAO BodyPoseNet Keras models (.hdf5): loaded as data, renamed and remapped into our contract.

TAO's BodyPoseNet (NVIDIA/tao_tensorflow1_backend, cv/bpnet/models) is a Keras functional model
with input `input_1`, per-stage output convs `stage{k}/heat_branch/out` and
`stage{k}/paf_branch/out` (the last stage's named `heatmap_out` and `paf_out`), and outputs
ordered all heatmaps first, then all PAFs. The import reads the model's layer list from the
HDF5 file, refuses any layer class outside a small allowlist before Keras builds anything (so
no Lambda or custom code from the file runs), turns the layers into a SourceGraph and goes
through the same channel-map folding and Keras rebuild as the TFLite import. The card's
`output.heatmaps.first_channel` / `pafs.first_channel` refer to the last stage's heatmaps and
PAFs side by side (0 and 19 for TAO's 19 + 38 channels).

Encrypted `.tlt` files are not readable here (export them to .hdf5 with TAO first).
"""

import time
from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.imports import parity
from bpnet.imports.card import bgr_normalization, map_source_output, skeleton_map
from bpnet.imports.graph import Heads, Node, SourceGraph, apply_channel_map, infer_channels, keras_name
from bpnet.model_safety import check_model_file
from bpnet.skeleton import load_skeleton

ALLOWED_LAYERS = ("InputLayer", "Conv2D", "DepthwiseConv2D", "BatchNormalization", "Activation",
                  "ReLU", "Add", "Concatenate", "MaxPooling2D", "ZeroPadding2D", "UpSampling2D")


def check_layer_classes(path):
    """Every layer class in the HDF5's model config must be an allowed one (read as JSON)."""
    import h5py

    path = Path(path)
    if not h5py.is_hdf5(path):
        raise BpnetError(f"{path} is not an HDF5 file (a TAO .tlt is encrypted: export it to .hdf5 with TAO)")
    # The one reader of a Keras file's architecture, which also refuses code-carrying layers.
    config = check_model_file(path, "TAO model")
    layers = config.get("config", {}).get("layers", [])
    bad = [(layer.get("class_name"), layer.get("name") or layer.get("config", {}).get("name")) for layer in layers
           if layer.get("class_name") not in ALLOWED_LAYERS]
    if bad:
        cls, name = bad[0]
        raise BpnetError(f"{path}: layer {name!r} of class {cls} is not supported; supported: "
                         f"{', '.join(ALLOWED_LAYERS)}")


def keras_to_graph(model, path):
    """A functional Keras model -> SourceGraph (every layer used once, channels-last)."""
    names, nodes, taken = {}, [], set()
    image = model.inputs[0]
    names[image.ref()] = "input"
    for layer in model.layers:
        cls = type(layer).__name__
        if cls == "InputLayer":
            continue
        ins = layer.input if isinstance(layer.input, list) else [layer.input]
        inputs = [names[t.ref()] for t in ins]
        name = keras_name(layer.name, taken)
        names[layer.output.ref()] = layer.name
        where = f"Keras {cls} {layer.name!r}"
        node = _layer_node(layer, cls, name, inputs, where, path)
        if node is None:                  # a linear Activation: an alias
            names[layer.output.ref()] = inputs[0]
            continue
        node.output = layer.name
        nodes.append(node)
    graph = SourceGraph("input", None, nodes, [names[t.ref()] for t in model.outputs], {"input": 3})
    return infer_channels(graph)


def _activation_name(fn):
    return getattr(fn, "__name__", str(fn))


def _layer_node(layer, cls, name, inputs, where, path):
    cfg = layer.get_config()
    if cls in ("Conv2D", "DepthwiseConv2D"):
        act = _activation_name(layer.activation)
        if act not in ("linear", "relu"):
            raise BpnetError(f"{path}: {where}: activation {act} is not supported (linear, relu)")
        if cfg.get("data_format", "channels_last") != "channels_last" or cfg.get("groups", 1) != 1:
            raise BpnetError(f"{path}: {where}: only channels_last, ungrouped convs are supported")
        weights = layer.get_weights()
        params = dict(kernel=weights[0].astype(np.float32),
                      bias=weights[1].astype(np.float32) if len(weights) > 1 else None,
                      strides=tuple(cfg["strides"]), padding=cfg["padding"], dilation=tuple(cfg["dilation_rate"]),
                      activation="relu" if act == "relu" else "none")
        return Node(name, "conv" if cls == "Conv2D" else "depthwise", inputs, "", params, where)
    if cls == "BatchNormalization":
        if cfg["axis"] not in (-1, 3, [3], [-1]) or not cfg["center"] or not cfg["scale"]:
            raise BpnetError(f"{path}: {where}: only channels-last batch norm with centre and scale")
        gamma, beta, mean, var = (w.astype(np.float32) for w in layer.get_weights())
        return Node(name, "batch_norm", inputs, "", dict(gamma=gamma, beta=beta, mean=mean, variance=var,
                                                         epsilon=cfg["epsilon"]), where)
    if cls == "Activation":
        act = cfg["activation"]
        if act == "linear":
            return None
        if act != "relu":
            raise BpnetError(f"{path}: {where}: activation {act} is not supported (relu, linear)")
        return Node(name, "relu", inputs, "", dict(max_value=None), where)
    if cls == "ReLU":
        if cfg.get("negative_slope") or cfg.get("threshold"):
            raise BpnetError(f"{path}: {where}: leaky or thresholded ReLU is not supported")
        mv = cfg.get("max_value")
        return Node(name, "relu", inputs, "", dict(max_value=None if mv is None else float(mv)), where)
    if cls == "Add":
        return Node(name, "add", inputs, "", dict(activation="none"), where)
    if cls == "Concatenate":
        if cfg["axis"] not in (-1, 3):
            raise BpnetError(f"{path}: {where}: concatenation on axis {cfg['axis']}; only channels")
        return Node(name, "concat", inputs, "", {}, where)
    if cls == "MaxPooling2D":
        return Node(name, "max_pool", inputs, "", dict(pool=tuple(cfg["pool_size"]), strides=tuple(cfg["strides"]),
                                                       padding=cfg["padding"]), where)
    if cls == "ZeroPadding2D":
        return Node(name, "pad", inputs, "", dict(pads=tuple(tuple(p) for p in cfg["padding"])), where)
    if cls == "UpSampling2D":
        mode = "nearest" if cfg["interpolation"] == "nearest" else "half_pixel_bilinear"
        return Node(name, "resize", inputs, "", dict(factor=tuple(cfg["size"]), mode=mode), where)
    raise BpnetError(f"{path}: {where}: layer class {cls} is not supported")


def tao_heads(graph, model, skeleton, path):
    """Stage outputs from the model's outputs: TAO orders them heatmaps first, then PAFs."""
    by_output = {n.output: n for n in graph.nodes}
    outs = [by_output.get(t) for t in graph.outputs]
    heat = [n.name for n in outs if n is not None and n.out_channels == skeleton.num_heatmaps]
    paf = [n.name for n in outs if n is not None and n.out_channels == skeleton.num_pafs]
    if not heat or len(heat) != len(paf) or len(heat) + len(paf) != len(outs):
        raise BpnetError(f"{path}: outputs {[o.name for o in model.outputs]} are not a BodyPoseNet's: "
                         f"expected pairs of conv outputs with {skeleton.num_heatmaps} heatmap and "
                         f"{skeleton.num_pafs} PAF channels")
    return Heads(tuple(heat), tuple(paf))


def import_tao(source, output, card, log=print):
    from bpnet.imports.keras_build import build_keras_model
    from bpnet.imports.rebuild import save_imported, _model_name
    from bpnet.model import count_params, load_keras_model, stage_model

    start = time.perf_counter()
    skeleton = load_skeleton(card.skeleton)
    check_layer_classes(source)
    source_model = load_keras_model(source, "TAO model")
    graph = keras_to_graph(source_model, source)
    heads = tao_heads(graph, source_model, skeleton, source)
    heat_src, heat_sign, paf_src, paf_sign = skeleton_map(card, skeleton)
    by_name = {n.name: n for n in graph.nodes}
    for heat, paf in zip(heads.heatmaps, heads.pafs):
        apply_channel_map(graph, by_name[heat].output, heat_src - card.output.heatmaps.first_channel, heat_sign)
        apply_channel_map(graph, by_name[paf].output, paf_src - card.output.pafs.first_channel, paf_sign)
    if card.input.colour_order == "RGB":
        apply_channel_map(graph, graph.input, (2, 1, 0), np.ones(3, np.float32))
    model = build_keras_model(graph, heads, name=_model_name(output))
    log(f"read {source}: TAO BodyPoseNet, {len(heads.heatmaps)} stages, {count_params(model):,} parameters")

    hw = tuple(card.input.training_hw)
    check = parity.bundled_check_images(skeleton)
    batch, boxes = parity.prepare(check.images, hw, bgr_normalization(card))
    source_batch = batch[..., [2, 1, 0]] if card.input.colour_order == "RGB" else batch
    outs = source_model(source_batch, training=False)
    outs = outs if isinstance(outs, list) else [outs]
    n_stages = len(heads.heatmaps)
    last = np.concatenate([np.asarray(outs[n_stages - 1]), np.asarray(outs[-1])], axis=-1)
    theirs = map_source_output(last, card, skeleton)
    ours = [np.asarray(t) for t in stage_model(model)(batch, training=False)]
    diff = parity.check_parity(ours, theirs, f"Keras on {source}")
    log(f"parity with the TAO model in Keras on {len(batch)} real images at {hw[0]}x{hw[1]}: "
        f"max |diff| = {diff:.2e}")
    response = parity.check_response(
        parity.keypoint_response(theirs[0], boxes, check.parts, card.input.stride), "the model card")
    log(f"keypoint response with the card's preprocessing: {response:.3f} on {check.source}")
    report = {"source": str(source), "source_kind": "tao", "source_sha256": card.source_sha256,
              "output": str(output), "stages": n_stages, "parameters": count_params(model),
              "parity": {"max_abs_diff": diff, "tolerance": parity.PARITY_TOLERANCE, "input_hw": list(hw),
                         "images": check.source, "runtime": "keras"},
              "keypoint_response": response, "seconds": round(time.perf_counter() - start, 1)}
    save_imported(model, output, card, report)
    log(f"wrote {output}")
    return report
