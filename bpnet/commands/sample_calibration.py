"""`bpnet sample-calibration -a ANN.json -i IMAGES -o OUT_DIR [-n 500] [-pth 1] [--max_persons M]
[-kth 5] [--min_visible V] [--sizes small,medium,large] [--stratify [--eval_annotations EVAL.json]]
[--randomize] [--seed S] [--link]`

The flags and defaults of TAO's `sample_calibration_images.py` are accepted (also spelled
`bpnet sample_calibration_images`), so the workflow's `-n N -pth 1 --randomize` runs as written."""


def add_arguments(parser):
    from bpnet.limits import (DEFAULT_CALIBRATION_IMAGES as DEFAULT_NUM_IMAGES,
                              DEFAULT_CALIBRATION_MIN_KEYPOINTS as DEFAULT_MIN_KEYPOINTS,
                              DEFAULT_CALIBRATION_MIN_PERSONS as DEFAULT_MIN_PERSONS)

    parser.add_argument("-a", "--annotations", "--annotation_file", dest="annotations", required=True,
                        help="COCO person-keypoints JSON")
    parser.add_argument("-i", "--images", "--image_root_dir", dest="images", required=True,
                        help="folder of the images it names")
    parser.add_argument("-o", "--output_dir", "--output_image_root_dir", dest="output_dir", required=True,
                        help="new folder for the chosen images")
    parser.add_argument("-n", "--num_images", type=int, default=DEFAULT_NUM_IMAGES,
                        help=f"how many images to choose (default {DEFAULT_NUM_IMAGES}, TAO's)")
    parser.add_argument("-pth", "--min_persons", "--min_persons_per_image", dest="min_persons", type=int,
                        default=DEFAULT_MIN_PERSONS,
                        help=f"persons an image must hold (default {DEFAULT_MIN_PERSONS}, TAO's)")
    parser.add_argument("--max_persons", type=int, default=None, help="most persons an image may hold")
    parser.add_argument("-kth", "--min_keypoints", "--min_kpts_per_person", dest="min_keypoints", type=int,
                        default=DEFAULT_MIN_KEYPOINTS,
                        help=f"labelled keypoints a person needs to count (default {DEFAULT_MIN_KEYPOINTS}, "
                             "TAO's: calibrate on clearly visible people)")
    parser.add_argument("--min_visible", type=int, default=0,
                        help="visible (v=2) keypoints a person needs to count (default 0)")
    parser.add_argument("--sizes", default="small,medium,large",
                        help="an image needs a person of one of these COCO size classes (default all)")
    parser.add_argument("--stratify", action="store_true",
                        help="cover the evaluation data's mix of people per image and person sizes")
    parser.add_argument("--eval_annotations", default=None,
                        help="the data the model will be scored on (mix target and report; default -a)")
    parser.add_argument("-r", "--randomize", action="store_true", help="shuffle before choosing (else file-name order)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0; TAO's was unseeded)")
    parser.add_argument("--link", action="store_true", help="symlink instead of copying")


def run(args):
    from bpnet.sampling import REPORT_NAME, sample_calibration

    sizes = tuple(s.strip() for s in args.sizes.split(",") if s.strip())
    report = sample_calibration(args.annotations, args.images, args.output_dir, args.num_images,
                                args.min_persons, args.min_keypoints, args.randomize, args.seed, args.link,
                                max_persons=args.max_persons, min_visible=args.min_visible, sizes=sizes,
                                stratify=args.stratify, eval_annotations=args.eval_annotations)
    print(f"chose {report['chosen']} of {report['requested']} requested images "
          f"({report['eligible']} of {report['total_images']} meet: >= {args.min_persons} person(s) "
          f"with >= {args.min_keypoints} keypoints; order: {report['criteria']['order']})")
    for why, count in report["left_out"].items():
        print(f"  left out {count}: {why}")
    if report["shortfall"]:
        print(f"fewer than requested: {report['shortfall']}")
    print_mix(report["mix"])
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    print(f"images in {args.output_dir}; report: {args.output_dir}/{REPORT_NAME}")
    return 0


def print_mix(mix):
    """Calibration vs evaluation mix, one line per measure, in percent."""
    print(f"{'mix (% calibration / % evaluation)':<36}")
    for measure in ("people_per_image", "person_size", "visible_keypoints"):
        cal, ev = mix["calibration"][measure], mix["evaluation"][measure]
        cells = "  ".join(f"{k}: {100 * cal[k]:.0f}/{100 * ev[k]:.0f}" for k in cal)
        print(f"  {measure:<18} {cells}")
