"""BodyPoseNet loss: masked L2 on heatmaps and PAFs, summed over every stage.

For one stage and one kind of map (TLT's definition, so learning rates transfer):
    0.5 * sum over batch, cells, channels of  mask * (prediction - target)^2
The mask (N, h, w, 1) is 1 where the loss counts and 0 on crowds and unannotated people; it
broadcasts over channels. The total is the sum over all stages of the heatmap and PAF terms,
divided by the batch size, so the value does not depend on how many images a batch holds.

`*_np` functions are the numpy reference; the TensorFlow functions below follow them exactly
(tests check the parity).
"""

import numpy as np

import bpnet  # noqa: F401  (selects tf-keras before TensorFlow is imported)
import tensorflow as tf


def masked_l2_np(prediction, target, mask):
    """0.5 * sum(mask * (prediction - target)^2); mask broadcasts over the channel axis."""
    diff = np.asarray(prediction, np.float64) - np.asarray(target, np.float64)
    return 0.5 * float(np.sum(np.asarray(mask, np.float64) * diff * diff))


def bpnet_loss_np(outputs, heatmaps, pafs, mask):
    """Total loss of `outputs` = [stage1_heatmaps, stage1_pafs, stage2_heatmaps, ...]."""
    _check_outputs(outputs)
    batch = np.asarray(heatmaps).shape[0]
    total = 0.0
    for k in range(0, len(outputs), 2):
        total += masked_l2_np(outputs[k], heatmaps, mask) + masked_l2_np(outputs[k + 1], pafs, mask)
    return total / batch


def masked_l2(prediction, target, mask):
    diff = prediction - target
    return 0.5 * tf.reduce_sum(mask * diff * diff)


def bpnet_loss(outputs, heatmaps, pafs, mask):
    """(total, per-stage terms) for a batch; total = sum of all terms / batch size.

    The per-stage dict maps `stage{k}_heatmaps` / `stage{k}_pafs` to that term divided by the
    batch size, so the terms add up to the total.
    """
    _check_outputs(outputs)
    batch = tf.cast(tf.shape(heatmaps)[0], tf.float32)
    terms = {}
    for k in range(0, len(outputs), 2):
        stage = k // 2 + 1
        terms[f"stage{stage}_heatmaps"] = masked_l2(outputs[k], heatmaps, mask) / batch
        terms[f"stage{stage}_pafs"] = masked_l2(outputs[k + 1], pafs, mask) / batch
    return tf.add_n(list(terms.values())), terms


def _check_outputs(outputs):
    if len(outputs) == 0 or len(outputs) % 2:
        raise ValueError(f"expected [heatmaps, pafs] per stage, got {len(outputs)} output(s)")
