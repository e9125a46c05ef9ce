"""`bpnet sample-calibration -a ANN.json -i IMAGES -o OUT_DIR [-n 500] [-pth 1] [-kth 5]
[--randomize] [--seed S] [--link]`

Flags and defaults are those of TAO's `sample_calibration_images.py` (also spelled
`bpnet sample_calibration_images`), so the workflow's `-n N -pth 1 --randomize` runs as written."""


def add_arguments(parser):
    from bpnet.sampling import DEFAULT_MIN_KEYPOINTS, DEFAULT_MIN_PERSONS, DEFAULT_NUM_IMAGES

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
    parser.add_argument("-kth", "--min_keypoints", "--min_kpts_per_person", dest="min_keypoints", type=int,
                        default=DEFAULT_MIN_KEYPOINTS,
                        help=f"labelled keypoints a person needs to count (default {DEFAULT_MIN_KEYPOINTS}, "
                             "TAO's: calibrate on clearly visible people)")
    parser.add_argument("-r", "--randomize", action="store_true", help="shuffle before choosing (else file-name order)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0; TAO's was unseeded)")
    parser.add_argument("--link", action="store_true", help="symlink instead of copying")


def run(args):
    from bpnet.sampling import REPORT_NAME, sample_calibration

    report = sample_calibration(args.annotations, args.images, args.output_dir, args.num_images,
                                args.min_persons, args.min_keypoints, args.randomize, args.seed, args.link)
    print(f"chose {report['chosen']} of {report['requested']} requested images "
          f"({report['eligible']} of {report['total_images']} meet: >= {args.min_persons} person(s) "
          f"with >= {args.min_keypoints} keypoints; order: {report['criteria']['order']})")
    for why, count in report["left_out"].items():
        print(f"  left out {count}: {why}")
    if report["shortfall"]:
        print(f"fewer than requested: {report['shortfall']}")
    print(f"images in {args.output_dir}; report: {args.output_dir}/{REPORT_NAME}")
    return 0
