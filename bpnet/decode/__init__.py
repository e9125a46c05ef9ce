"""Heatmaps + part-affinity fields -> people. Pure numpy / OpenCV, no TensorFlow.

Steps (OpenPose-style bottom-up decoding):
1. `find_peaks`: per part, local maxima of the heatmap (3x3 non-maximum suppression) above
   `heatmap_threshold`, each refined either by a Gaussian (log-quadratic) fit on the stride-8
   cells or on the map upsampled by `output_upsampling_factor` (bicubic, the same weights as
   cv2.resize INTER_CUBIC), and placed in input pixels by bpnet.geometry. The Gaussian mode also
   fits crowded peaks from the side no neighbouring blob raises and recovers blobs hidden by the
   3x3 NMS (`uncrowded_offsets`, `shadowed_peaks`).
2. `score_limbs`: for every candidate pair of a limb, the line integral of the PAF along the
   segment: `paf_num_samples` samples, dot product with the segment's unit vector, a pair is valid
   when at least `paf_min_positive_fraction` of the samples exceed `paf_threshold` and the mean
   score, with a prior against limbs longer than half the input height, is positive.
3. `match_limb`: greedy bipartite matching per limb, best score first, each peak used once.
4. `assemble_people`: connections grow people across limbs; two people sharing a part with no
   conflicting part are merged. Pieces of one person that share no limb (no neck, a hidden
   elbow) are joined by body proportions (`bpnet.decode.fragments.join_fragments`). People with
   < `min_parts` parts or a mean score below `min_person_score` are dropped.
5. `person_to_coco`: 18 parts -> COCO's 17 keypoints in original image coordinates.

Modules: `peaks` (1), `limbs` (2-3), `assembly` + `fragments` (4), `coco_output` (5); `decode`
here runs them in order with explicit options (`decode_options(infer_spec)` gives them from a spec).
"""

import numpy as np

from bpnet.decode.assembly import (JOIN_NOISE_PX, Person, assemble_people, merge_hubless_fragments,
                                   people_from_members)
from bpnet.decode.coco_output import person_to_coco
from bpnet.decode.fragments import join_fragments, reach_bounds
from bpnet.decode.limbs import match_limb, score_limbs
from bpnet.decode.peaks import find_peaks
from bpnet.limits import STRIDE

# The InferSpec fields `decode` takes (same names), so no option has a second default here.
DECODE_OPTIONS = ("heatmap_threshold", "output_upsampling_factor", "peak_refinement", "paf_num_samples",
                  "paf_threshold", "paf_min_positive_fraction", "fragment_merge_reach",
                  "fragment_join_slack", "min_parts", "min_person_score")

__all__ = ["DECODE_OPTIONS", "Person", "decode", "decode_options", "find_peaks", "person_to_coco"]


def decode_options(infer_spec):
    """The keyword arguments of `decode` from a bpnet.specs.InferSpec."""
    return {name: getattr(infer_spec, name) for name in DECODE_OPTIONS}


def decode(heatmaps, pafs, skeleton, *, heatmap_threshold, output_upsampling_factor, peak_refinement,
           paf_num_samples, paf_threshold, paf_min_positive_fraction, fragment_merge_reach,
           fragment_join_slack, min_parts, min_person_score, stride=STRIDE):
    """One image's maps -> list of Person in network-input pixels.

    heatmaps (h, w, P+1) and pafs (h, w, 2L) at `stride` (a batch axis of 1 is accepted).
    """
    heatmaps, pafs = _single(heatmaps, "heatmaps"), _single(pafs, "pafs")
    _check_channels(heatmaps, pafs, skeleton)
    input_h = heatmaps.shape[0] * stride
    peaks = find_peaks(heatmaps, skeleton.num_parts, heatmap_threshold, tuple(output_upsampling_factor),
                       stride, refinement=peak_refinement)
    scores = score_limbs(peaks, np.asarray(pafs, dtype=np.float32), skeleton.limbs, input_h,
                         paf_num_samples, paf_threshold, paf_min_positive_fraction, stride)
    connections = [match_limb(limb_scores) for limb_scores in scores]
    members, totals = assemble_people(peaks, connections, skeleton.limbs, skeleton.num_parts)
    members, totals = merge_hubless_fragments(members, totals, peaks, skeleton.limbs,
                                              fragment_merge_reach)
    members, totals = join_fragments(members, totals, peaks, skeleton.limbs, scores,
                                     reach_bounds(skeleton.parts, skeleton.limbs),
                                     fragment_join_slack, JOIN_NOISE_PX, input_h)
    return people_from_members(members, totals, peaks, len(skeleton.limbs), min_parts, min_person_score)


def _single(maps, what):
    maps = np.asarray(maps)
    if maps.ndim == 4 and maps.shape[0] == 1:
        maps = maps[0]
    if maps.ndim != 3:
        raise ValueError(f"{what}: expected (h, w, channels) for one image, got shape {maps.shape}")
    return maps


def _check_channels(heatmaps, pafs, skeleton):
    if heatmaps.shape[-1] < skeleton.num_parts or pafs.shape[-1] != skeleton.num_pafs:
        raise ValueError(f"maps have {heatmaps.shape[-1]} heatmap and {pafs.shape[-1]} PAF channels; "
                         f"skeleton {skeleton.name} needs {skeleton.num_heatmaps} and {skeleton.num_pafs}")
    if heatmaps.shape[:2] != pafs.shape[:2]:
        raise ValueError(f"heatmaps {heatmaps.shape[:2]} and pafs {pafs.shape[:2]} differ in size")
