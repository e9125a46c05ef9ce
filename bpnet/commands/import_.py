"""`bpnet import -m SOURCE -o MODEL.hdf5 [--card CARD.yaml]`: see docs/pretrained.md."""


def add_arguments(parser):
    parser.add_argument("-m", "--model", required=True,
                        help="pretrained network: .tflite, frozen graph .pb, .onnx or TAO BodyPoseNet .hdf5")
    parser.add_argument("-o", "--output_file", required=True,
                        help="model to write: .hdf5 (TFLite, .pb, TAO) or .onnx (ONNX stays ONNX); "
                             "OUTPUT.card.yaml and OUTPUT.import.json go beside it")
    parser.add_argument("--card", help="model card YAML (default: SOURCE.card.yaml beside the source)")


def run(args):
    from bpnet.imports import import_model

    import_model(args.model, args.output_file, args.card, log=lambda m: print(m, flush=True))
    return 0
