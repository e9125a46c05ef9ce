"""Where the oracle loses AP: per ground-truth person, the OKS of its best detection and the
causes of the missing OKS, plus AP of results sets that remove one cause at a time.

    python bench/oracle_breakdown.py [--spec specs/infer_strict_288x384.yaml] [--train_spec T.yaml]
                                     [--people]

Every number comes from pycocotools (COCOeval 'keypoints'): the OKS matrix of `evaluate()` and
the AP of `summarize()`. Causes of a labelled keypoint's OKS loss (1 - exp(-e_k)) / n_labelled:
- fragment:  the best detection lacks the part, another detection has it at this person's place
- missing:   no detection has the part at this person's place (no peak, or dropped by min_parts /
             min_person_score); split by why the peak is gone
- wrong:     the best detection has the part, but from somewhere else (another person's)
- position:  the best detection has it at the right place, with a sub-pixel/letterbox error
AP rows: the decoder as is; the decoder's grouping with exact positions (position loss removed);
the decoder's peaks with the true grouping (grouping loss removed); the true limb-connected
pieces with exact positions (what no join at all can reach).
"""

import argparse
import contextlib
import io
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bpnet.data.coco import image_sample  # noqa: E402
from bpnet.decode import decode, decode_options, find_peaks, person_to_coco  # noqa: E402
from bpnet.evaluate import load_ground_truth, score_results  # noqa: E402
from bpnet.preprocess import letterbox_image, read_image  # noqa: E402
from bpnet.skeleton import load_skeleton  # noqa: E402
from bpnet.specs import TargetSpec, load_infer_spec, load_train_spec  # noqa: E402
from bpnet.targets import make_targets  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ANNOTATIONS = ROOT / "data" / "coco-mini" / "annotations" / "person_keypoints_train2017.json"
IMAGES = ROOT / "data" / "coco-mini" / "train2017"
# A decoded part within this many input pixels of a true part is "that part" (peaks land within
# ~1 px of an isolated keypoint; 3 px tolerates neighbouring Gaussians pulling the maximum).
SAME_PLACE_PX = 3.0


def decode_all(spec, targets, skeleton):
    """Per image: (sample, letterbox, true parts in input px, decoded people, peaks)."""
    coco, category_id = load_ground_truth(ANNOTATIONS, skeleton)
    out = []
    for image_id in sorted(coco.getImgIds()):
        sample = image_sample(coco, image_id, IMAGES, category_id, skeleton, min_keypoints=1)
        _, box = letterbox_image(read_image(sample.image_path), spec.input_shape, spec.keep_aspect_ratio_mode)
        parts = sample.parts.copy()
        parts[..., :2] = box.to_input(parts[..., :2])
        heatmaps, pafs = make_targets(parts, skeleton, box.input_hw, targets)
        people = decode(heatmaps, pafs, skeleton, **decode_options(spec))
        peaks = find_peaks(heatmaps, skeleton.num_parts, spec.heatmap_threshold,
                           tuple(spec.output_upsampling_factor), refinement=spec.peak_refinement)
        out.append((sample, box, parts, people, peaks))
    return coco, category_id, out


def kept_annotation_ids(coco, image_id, category_id):
    """Annotation ids in the row order of `image_sample(...).parts` (non-crowd, >= 1 keypoint)."""
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], catIds=[category_id], iscrowd=None))
    return [a["id"] for a in anns if not a.get("iscrowd") and any(v > 0 for v in a["keypoints"][2::3])]


def limb_pieces(labelled, limbs):
    """Connected pieces (lists of part indices) of the labelled parts through the skeleton's limbs."""
    parent = {p: p for p in np.nonzero(labelled)[0]}

    def root(p):
        while parent[p] != p:
            p = parent[p]
        return p

    for a, b in limbs:
        if a in parent and b in parent:
            parent[root(a)] = root(b)
    pieces = defaultdict(list)
    for p in parent:
        pieces[root(p)].append(p)
    return list(pieces.values())


def coco_entry(parts_input, box, skeleton, image_id, score):
    keypoints = np.zeros((skeleton.num_parts, 3), np.float32)
    keypoints[:, :2] = box.to_image(parts_input[:, :2])
    keypoints[:, 2] = parts_input[:, 2] > 0
    keypoints[parts_input[:, 2] <= 0] = 0
    kps = skeleton.parts_to_coco(keypoints)
    return {"image_id": int(image_id), "category_id": 1,
            "keypoints": [float(v) for v in kps.reshape(-1)], "score": float(score)}


def results_sets(decoded, skeleton):
    """{name: COCO results list} for the ablation rows."""
    sets = defaultdict(list)
    for sample, box, truth, people, peaks in decoded:
        for person in people:
            sets["decoder as is"].append(person_to_coco(person, box, skeleton, sample.image_id))
            snapped = snap_to_truth(person, truth)
            sets["decoder grouping, exact positions"].append(
                coco_entry(snapped, box, skeleton, sample.image_id, person.score))
        for row in truth:
            found = np.zeros_like(row)
            for p in np.nonzero(row[:, 2] > 0)[0]:
                if len(peaks[p]):
                    d = np.linalg.norm(peaks[p][:, :2] - row[p, :2], axis=1)
                    if d.min() <= SAME_PLACE_PX:
                        found[p] = (*peaks[p][d.argmin(), :2], 1)
            if (found[:, 2] > 0).any():
                sets["decoder peaks, true grouping"].append(coco_entry(found, box, skeleton, sample.image_id, 1.0))
            for piece in limb_pieces(row[:, 2] > 0, skeleton.limbs):
                only = np.zeros_like(row)
                only[piece] = row[piece]
                sets["true limb-connected pieces, exact"].append(
                    coco_entry(only, box, skeleton, sample.image_id, len(piece) / skeleton.num_parts))
    return sets


def snap_to_truth(person, truth):
    """The person's parts moved onto the true part they stand for (nearest within SAME_PLACE_PX)."""
    out = np.zeros((len(person.found), 3), np.float32)
    for p in np.nonzero(person.found)[0]:
        out[p] = (*person.keypoints[p, :2], 1)
        if len(truth):
            labelled = truth[:, p, 2] > 0
            d = np.where(labelled, np.linalg.norm(truth[:, p, :2] - person.keypoints[p, :2], axis=1), np.inf)
            if d.min() <= SAME_PLACE_PX:
                out[p, :2] = truth[d.argmin(), p, :2]
    return out


def oks_matrix(coco, results, category_id, image_ids):
    """{image_id: (oks (num_dt, num_gt), dt entries in COCOeval order, gt ann ids)} from pycocotools."""
    from pycocotools.cocoeval import COCOeval

    from bpnet.evaluate import results_index

    evaluator = COCOeval(coco, results_index(coco, results, category_id), "keypoints")
    evaluator.params.imgIds = sorted(image_ids)
    evaluator.params.catIds = [category_id]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
    out = {}
    for image_id in image_ids:
        gts = evaluator._gts[image_id, category_id]
        dts = sorted(evaluator._dts[image_id, category_id], key=lambda d: -d["score"])
        dts = dts[:evaluator.params.maxDets[-1]]
        oks = evaluator.ious[image_id, category_id]
        out[image_id] = (np.asarray(oks).reshape(len(dts), len(gts)) if len(dts) and len(gts)
                         else np.zeros((len(dts), len(gts))), dts, [g["id"] for g in gts])
    return out


SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0


def keypoint_losses(gt_ann, dt_keypoints):
    """Per COCO keypoint, its share of 1 - OKS (pycocotools' formula), for labelled keypoints."""
    g = np.asarray(gt_ann["keypoints"], float).reshape(17, 3)
    d = np.asarray(dt_keypoints, float).reshape(17, 3)
    e = ((d[:, 0] - g[:, 0]) ** 2 + (d[:, 1] - g[:, 1]) ** 2) / (2 * SIGMAS) ** 2 / (gt_ann["area"] + np.spacing(1)) / 2
    labelled = g[:, 2] > 0
    return np.where(labelled, (1 - np.exp(-e)) / max(labelled.sum(), 1), 0.0)


def breakdown(coco, category_id, decoded, skeleton):
    """Per true person a dict: ann id, area, OKS of best detection, loss per cause, flags."""
    results = [person_to_coco(p, box, skeleton, s.image_id) for s, box, _, people, _ in decoded for p in people]
    image_ids = [s.image_id for s, *_ in decoded]
    oks = oks_matrix(coco, results, category_id, image_ids)
    coco_index = {name: i for i, name in enumerate(skeleton.coco_keypoints)}
    part_of_coco = [skeleton.parts.index(name) for name in skeleton.coco_keypoints]
    rows = []
    for sample, box, truth, people, peaks in decoded:
        matrix, dts, gt_ids = oks[sample.image_id]
        for row, ann_id in zip(truth, kept_annotation_ids(coco, sample.image_id, category_id)):
            ann = coco.anns[ann_id]
            k = gt_ids.index(ann_id)
            best = int(matrix[:, k].argmax()) if len(dts) else None
            best_oks = float(matrix[best, k]) if best is not None else 0.0
            losses = (keypoint_losses(ann, dts[best]["keypoints"]) if best is not None
                      else keypoint_losses(ann, [0.0] * 51))
            info = {"image_id": sample.image_id, "ann_id": ann_id, "area": ann["area"], "oks": best_oks,
                    "labelled": int((row[:, 2] > 0).sum()), "neck": bool(row[skeleton.parts.index("neck"), 2] > 0),
                    "pieces": len(limb_pieces(row[:, 2] > 0, skeleton.limbs)), "scale": box.scale,
                    "fragment": 0.0, "missing": 0.0, "wrong": 0.0, "position": 0.0, "missing_why": []}
            best_kps = np.asarray(dts[best]["keypoints"]).reshape(17, 3) if best is not None else np.zeros((17, 3))
            for c in np.nonzero(losses > 0)[0]:
                p = part_of_coco[c]
                here = box.to_image(row[p, :2][None])[0]
                near_px = SAME_PLACE_PX / box.scale
                holders = [i for i, d in enumerate(dts)
                           if np.asarray(d["keypoints"]).reshape(17, 3)[c, 2] > 0
                           and np.linalg.norm(np.asarray(d["keypoints"]).reshape(17, 3)[c, :2] - here) <= near_px]
                if best is not None and best in holders:
                    info["position"] += losses[c]
                elif holders:
                    info["fragment"] += losses[c]
                elif best_kps[c, 2] > 0:
                    info["wrong"] += losses[c]
                else:
                    info["missing"] += losses[c]
                    info["missing_why"].append(missing_reason(row, p, truth, peaks, box))
            rows.append(info)
    del coco_index
    return rows


def missing_reason(row, p, truth, peaks, box):
    """Why a true part has no detection at its place."""
    x, y = row[p, :2]
    h, w = box.input_hw
    if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
        return "outside input"
    if len(peaks[p]) and np.linalg.norm(peaks[p][:, :2] - row[p, :2], axis=1).min() <= SAME_PLACE_PX:
        return "peak found, person dropped"
    others = [t for t in truth if t[p, 2] > 0 and not np.array_equal(t, row)]
    if any(np.linalg.norm(t[p, :2] - row[p, :2]) < 4 * SAME_PLACE_PX for t in others):
        return "peak merged with another person's"
    return "no peak"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "specs" / "infer_strict_288x384.yaml"))
    parser.add_argument("--train_spec", help="take the target settings (sigma, PAF width) from this training spec")
    parser.add_argument("--people", action="store_true", help="also list every person with OKS < 0.9")
    args = parser.parse_args()
    skeleton = load_skeleton()
    spec = load_infer_spec(args.spec)
    targets = load_train_spec(args.train_spec).dataloader.targets if args.train_spec else TargetSpec()
    coco, category_id, decoded = decode_all(spec, targets, skeleton)
    image_ids = [s.image_id for s, *_ in decoded]

    print(f"spec {args.spec}; targets sigma {targets.heatmap_sigma_px} px, PAF width {targets.paf_width_px} px\n")
    print(f"{'results':<36} | {'AP':>5} | {'AP50':>5} | {'AP75':>5} | {'APm':>5} | {'APl':>5} | {'AR':>5} | dets")
    for name, results in results_sets(decoded, skeleton).items():
        stats, _ = score_results(coco, results, category_id, image_ids)
        print(f"{name:<36} | {stats['AP']:.3f} | {stats['AP50']:.3f} | {stats['AP75']:.3f} | "
              f"{stats['APm']:.3f} | {stats['APl']:.3f} | {stats['AR']:.3f} | {len(results)}")

    rows = breakdown(coco, category_id, decoded, skeleton)
    causes = ("fragment", "missing", "wrong", "position")
    print(f"\n{len(rows)} people; mean best OKS {np.mean([r['oks'] for r in rows]):.3f}; "
          "OKS loss summed over people, by cause and group")
    groups = {
        "neck labelled, 1 piece": lambda r: r["pieces"] == 1,
        "split into pieces (no neck)": lambda r: r["pieces"] > 1,
        "medium (area < 96^2)": lambda r: r["area"] < 96 ** 2,
        "large": lambda r: r["area"] >= 96 ** 2,
        "all": lambda r: True,
    }
    print(f"{'group':<30} | {'people':>6} | {'mean OKS':>8} | " + " | ".join(f"{c:>8}" for c in causes))
    for name, keep in groups.items():
        sel = [r for r in rows if keep(r)]
        if sel:
            print(f"{name:<30} | {len(sel):>6} | {np.mean([r['oks'] for r in sel]):>8.3f} | "
                  + " | ".join(f"{sum(r[c] for r in sel):>8.2f}" for c in causes))
    why = defaultdict(int)
    for r in rows:
        for reason in r["missing_why"]:
            why[reason] += 1
    print("\nmissing keypoints by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(why.items())))
    print("people by best OKS: " + ", ".join(
        f"{lo:.2f}-{hi:.2f}: {sum(lo <= r['oks'] < hi for r in rows)}"
        for lo, hi in ((0, 0.5), (0.5, 0.75), (0.75, 0.9), (0.9, 0.95), (0.95, 1.01))))
    if args.people:
        print(f"\n{'image':>7} {'ann':>8} {'area':>7} {'lab':>3} {'pcs':>3} {'OKS':>5} " + " ".join(f"{c:>8}" for c in causes))
        for r in sorted(rows, key=lambda r: r["oks"]):
            if r["oks"] < 0.9:
                print(f"{r['image_id']:>7} {r['ann_id']:>8} {r['area']:>7.0f} {r['labelled']:>3} {r['pieces']:>3} "
                      f"{r['oks']:>5.2f} " + " ".join(f"{r[c]:>8.3f}" for c in causes) + " " + ",".join(r["missing_why"]))


if __name__ == "__main__":
    main()
