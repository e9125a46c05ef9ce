"""`bpnet sample-calibration -a ANN.json -i IMAGES -o OUT_DIR -n N [--min_persons 1]
[--min_keypoints K] [--randomize] [--seed S] [--link]`"""


def add_arguments(parser):
    parser.add_argument("-a", "--annotations", required=True, help="COCO person-keypoints JSON")
    parser.add_argument("-i", "--images", required=True, help="folder of the images it names")
    parser.add_argument("-o", "--output_dir", required=True, help="new folder for the chosen images")
    parser.add_argument("-n", "--num_images", type=int, required=True, help="how many images to choose")
    parser.add_argument("--min_persons", type=int, default=1, help="persons an image must hold (default 1)")
    parser.add_argument("--min_keypoints", type=int, default=1,
                        help="labelled keypoints a person needs to count (default 1)")
    parser.add_argument("--randomize", action="store_true", help="shuffle before choosing (else file-name order)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
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
