"""`bpnet dataset-stats -a ANNOTATIONS.json [--aspect W/H] [--json OUT.json]`: statistics and advice."""


def add_arguments(parser):
    parser.add_argument("-a", "--annotations", required=True, help="COCO person-keypoints JSON")
    parser.add_argument("--aspect", type=float, default=None,
                        help="deployment aspect ratio W/H (default: the images' median)")
    parser.add_argument("--cal_batch_size", type=int, default=8, help="calibration batch size (default 8)")
    parser.add_argument("--cal_batches", type=int, default=10, help="calibration batches (default 10)")
    parser.add_argument("--json", default=None, help="also write statistics and advice to this JSON file")


def run(args):
    from bpnet.fileio import write_json_atomic
    from bpnet.guide.dataset_stats import dataset_stats_file
    from bpnet.guide.recommend import recommend_all

    stats = dataset_stats_file(args.annotations)
    advice = recommend_all(stats, args.aspect, args.cal_batch_size, args.cal_batches)
    ranges = stats["area_ranges"]["counts"]
    print(f"images {stats['num_images']} ({stats['num_images_with_people']} with people), "
          f"people {stats['num_people']}, crowd regions {stats['num_crowd_regions']}")
    print(f"people per image (with people): median {stats['people_per_image']['median']:g}, "
          f"max {stats['people_per_image']['max']:g}; keypoints per person: median "
          f"{stats['keypoints_per_person']['median']:g}")
    print(f"sizes: small {ranges['small']}, medium {ranges['medium']}, large {ranges['large']}; "
          f"median image {stats['image_width']['median']:g}x{stats['image_height']['median']:g}")
    for item in advice:
        print(f"\n{item.field} = {item.value}  (recommended range {item.recommended_range})")
        for reason in item.reasons:
            print(f"  - {reason}")
    if args.json:
        write_json_atomic(args.json, {"stats": stats, "advice": [a.to_dict() for a in advice]})
    return 0
