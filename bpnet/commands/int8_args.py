"""The argument block `bpnet quantize` and `bpnet divergence` share: the images the models are
run on and the inference spec that prepares them, and that spec loaded for a given model (an
imported network's card decides the normalisation, since these verbs prepare images themselves)."""


def add_image_arguments(parser, images_help):
    parser.add_argument("-i", "--images", required=True, help=images_help)
    parser.add_argument("--infer_spec", required=True,
                        help="inference spec: its input_shape is the input the models run at; an imported "
                             "network's normalisation comes from its model card")


def infer_spec_for(args, model_path):
    """The `--infer_spec` of `args`, with the normalisation `model_path`'s card prescribes."""
    from bpnet.preprocess import spec_following_card
    from bpnet.specs import load_infer_spec

    return spec_following_card(load_infer_spec(args.infer_spec), model_path, f"--infer_spec {args.infer_spec}")
