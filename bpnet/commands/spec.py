"""`bpnet spec FILE` / `bpnet spec --from-tao FILE`: a spec as bpnet reads it, as native YAML.

With --from-tao the file must be a TAO spec (experiment spec or infer_spec*.yaml); the fields
bpnet does not use are listed on stderr, and the YAML printed is a native spec that trains or
infers the same way (save it and edit it from there)."""

from bpnet.errors import BpnetError


def add_arguments(parser):
    parser.add_argument("file", nargs="?", help="a native spec file (validated and printed in full)")
    parser.add_argument("--from-tao", "--from_tao", dest="from_tao", metavar="FILE",
                        help="a TAO spec file to translate")
    parser.add_argument("-o", "--output", help="write the YAML to this file instead of printing it")


def run(args):
    import yaml

    from bpnet.fileio import write_text_atomic
    from bpnet.specs import spec_to_yaml
    from bpnet.tao_spec import load_any_spec, print_notes

    path = args.from_tao or args.file
    if not path or (args.from_tao and args.file):
        raise BpnetError("spec: give one file: `bpnet spec FILE` or `bpnet spec --from-tao FILE`")
    loaded = load_any_spec(path)
    if args.from_tao and not loaded.notes and loaded.checkpoint_dir is None and loaded.model_path is None \
            and loaded.native == loaded.spec.model_dump(mode="json"):
        print(f"note: {path} is already a native bpnet spec", flush=True)
    print_notes(loaded)
    kind = "training" if hasattr(loaded.spec, "dataloader") else "inference"
    header = f"# bpnet {kind} spec from {path}\n"
    if loaded.checkpoint_dir:
        header += f"# TAO checkpoint_dir (use as -r): {loaded.checkpoint_dir}\n"
    if loaded.model_path:
        header += f"# TAO model_path (use as -m): {loaded.model_path}\n"
    text = header + spec_to_yaml(loaded.spec)
    yaml.safe_load(text)   # what we print must read back
    if args.output:
        write_text_atomic(args.output, text)
        print(f"written: {args.output}")
    else:
        print(text, end="")
    return 0
