"""Decoding speed: ms per image (median, p95) on the bundled images' oracle maps, per input size
and against the number of people in the image. One core (OpenCV and BLAS limited to one thread).

    OMP_NUM_THREADS=1 python bench/bench_decode.py [--repeats 5] [--spec specs/infer_strict_288x384.yaml]
                                                   [--clock cpu|wall]

Maps are the ground truth encoded by bpnet.targets (what a perfect network would output), so the
numbers are the decoder's own cost; a real model's noisier maps give more candidate peaks.
`--clock cpu` (default) counts the CPU time of this process, which stays meaningful on a shared,
loaded machine (wall time there includes waiting for the core); on an idle core both agree.
"""

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bpnet.data.coco import image_sample  # noqa: E402
from bpnet.decode import decode, decode_options  # noqa: E402
from bpnet.evaluate import load_ground_truth  # noqa: E402
from bpnet.preprocess import letterbox_image, read_image  # noqa: E402
from bpnet.skeleton import load_skeleton  # noqa: E402
from bpnet.specs import TargetSpec, load_infer_spec  # noqa: E402
from bpnet.targets import make_targets  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ANNOTATIONS = ROOT / "data" / "coco-mini" / "annotations" / "person_keypoints_train2017.json"
IMAGES = ROOT / "data" / "coco-mini" / "train2017"
SIZES = ((224, 320), (288, 384), (320, 448))


def oracle_maps(spec, skeleton, input_hw):
    """[(num_people, heatmaps, pafs)] for every bundled image at `input_hw`."""
    coco, category_id = load_ground_truth(ANNOTATIONS, skeleton)
    out = []
    for image_id in sorted(coco.getImgIds()):
        sample = image_sample(coco, image_id, IMAGES, category_id, skeleton, min_keypoints=1)
        _, box = letterbox_image(read_image(sample.image_path), input_hw, spec.keep_aspect_ratio_mode)
        parts = sample.parts.copy()
        parts[..., :2] = box.to_input(parts[..., :2])
        heatmaps, pafs = make_targets(parts, skeleton, box.input_hw, TargetSpec())
        out.append((sample.num_people, heatmaps, pafs))
    return out


def time_decode(maps, spec, skeleton, repeats, clock=time.process_time):
    """Per image, the median over `repeats` runs, in ms."""
    per_image = []
    for _, heatmaps, pafs in maps:
        runs = []
        for _ in range(repeats):
            start = clock()
            decode(heatmaps, pafs, skeleton, **decode_options(spec))
            runs.append(1000 * (clock() - start))
        per_image.append(float(np.median(runs)))
    return np.asarray(per_image)


def people_bucket(n):
    return "0" if n == 0 else "1" if n == 1 else "2-3" if n <= 3 else "4-6" if n <= 6 else "7+"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "specs" / "infer_strict_288x384.yaml"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: this process's CPU time (robust on a shared machine); wall: elapsed time")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    cv2.setNumThreads(1)
    skeleton = load_skeleton()
    base = load_infer_spec(args.spec)
    from bpnet.machine import cpu_line, describe_cpu

    print(f"decoder settings from {args.spec}; {args.repeats} runs per image, median per image, "
          f"{args.clock} time\nmachine: {cpu_line(describe_cpu(threads=1))}\n")
    print(f"{'input':>9} | {'images':>6} | {'median ms':>9} | {'p95 ms':>7} | {'max ms':>7}")
    by_people = defaultdict(list)
    for hw in SIZES:
        spec = base.model_copy(update={"input_shape": hw})
        maps = oracle_maps(spec, skeleton, hw)
        ms = time_decode(maps, spec, skeleton, args.repeats, clock)
        print(f"{hw[0]:>4}x{hw[1]:<4} | {len(ms):>6} | {np.median(ms):>9.2f} | "
              f"{np.percentile(ms, 95):>7.2f} | {ms.max():>7.2f}")
        if hw == (288, 384):
            for (n, _, _), t in zip(maps, ms):
                by_people[people_bucket(n)].append(t)
    print("\nat 288x384, by number of annotated people in the image")
    print(f"{'people':>6} | {'images':>6} | {'median ms':>9} | {'p95 ms':>7}")
    by_people[">=1"] = [t for bucket, times in by_people.items() if bucket != "0" for t in times]
    for bucket in ("0", "1", "2-3", "4-6", "7+", ">=1"):
        if by_people[bucket]:
            t = np.asarray(by_people[bucket])
            print(f"{bucket:>6} | {len(t):>6} | {np.median(t):>9.2f} | {np.percentile(t, 95):>7.2f}")


if __name__ == "__main__":
    main()
