"""`bpnet dataset_convert -d coco_spec.json [-m train|test] [...TAO's flags]`

TAO converted COCO to TFRecords (and mask images) before training. bpnet reads the COCO
annotations and images directly and computes masks in memory, so there is nothing to convert:
this verb says so and checks the data the dataset spec names instead (annotations readable,
every image present, how many people are trainable), so a TAO user's step still catches problems."""


def add_arguments(parser):
    parser.add_argument("-d", "--dataset_spec", required=True, help="TAO's coco_spec.json")
    parser.add_argument("-m", "--mode", default="train", choices=["train", "test"],
                        help="which part of the dataset spec to check: train_data or test_data")
    parser.add_argument("-o", "--output_filename", help="TAO: TFRecord file to write. Not written (not needed)")
    parser.add_argument("-p", "--num_partitions", type=int, default=1, help="TAO: TFRecord folds. Not used")
    parser.add_argument("-s", "--num_shards", type=int, default=0, help="TAO: TFRecord shards. Not used")
    parser.add_argument("--generate_masks", action="store_true",
                        help="TAO: write mask images. Not needed: masks are computed in memory")
    parser.add_argument("--check_files", action="store_true", help="TAO: check image files exist. Always done")
    parser.add_argument("-r", "--results_dir", help="TAO: folder for status files. Not used")


def run(args):
    from bpnet.data.coco import load_coco_samples
    from bpnet.skeleton import load_skeleton
    from bpnet.tao_spec import coco_spec_dataset

    print("dataset_convert is not needed with bpnet: training and evaluation read the COCO "
          "annotations and images directly (no TFRecords, masks computed in memory). Checking the data instead.")
    notes = []
    annotations, images, min_keypoints = coco_spec_dataset(args.dataset_spec, args.mode, notes)
    samples = load_coco_samples(annotations, images, load_skeleton(), min_keypoints=min_keypoints)
    people = sum(s.num_people for s in samples)
    with_people = sum(1 for s in samples if s.num_people)
    print(f"{args.mode}_data: {annotations}")
    print(f"  images in {images}: {len(samples)} found ({with_people} with people); {people} people with "
          f">= {min_keypoints} labelled keypoints (data_filtering_params.min_acceptable_kpts)")
    for note in notes:
        print(f"  {note}")
    print(f"use it as it is: `bpnet train -e SPEC.yaml` with dataset_specs.coco: {args.dataset_spec}")
    return 0
