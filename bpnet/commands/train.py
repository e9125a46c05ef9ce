"""`bpnet train -e SPEC.yaml -r RESULTS_DIR [--num_epoch N]`: train or resume a BodyPoseNet.

SPEC is a native spec or a TAO experiment spec (bpnet_train_m1_coco.yaml style), which is
translated (bpnet/tao_spec.py) and whose unused fields are listed."""

import sys
import time


def add_arguments(parser):
    from bpnet.commands.tao_flags import add_log_level

    parser.add_argument("-e", "--experiment_spec", "--experiment_spec_file", required=True, metavar="SPEC",
                        help="training spec (YAML), e.g. specs/train_small.yaml, or a TAO experiment spec")
    parser.add_argument("-r", "--results_dir", default=None,
                        help="where checkpoints, events, the model and the summary go; re-running "
                             "on the same folder resumes from its newest checkpoint (default: a TAO "
                             "spec's checkpoint_dir, as in TAO)")
    parser.add_argument("--num_epoch", type=int, default=None,
                        help="override the spec's num_epoch (e.g. to train a finished run longer)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_log_level(parser)


def run(args):
    from bpnet.commands.tao_flags import check_model_file
    from bpnet.errors import BpnetError
    from bpnet.specs import TrainSpec, parse_spec
    from bpnet.tao_spec import load_train_spec_any, print_notes

    loaded = load_train_spec_any(args.experiment_spec)
    print_notes(loaded)
    spec = loaded.spec
    if spec.pretrained_weights is not None:
        check_model_file(spec.pretrained_weights, "pretrained_weights")
    results_dir = args.results_dir or loaded.checkpoint_dir
    if results_dir is None:
        raise BpnetError("-r/--results_dir: give the results folder (a TAO spec may name it as checkpoint_dir)")
    if args.num_epoch is not None:
        spec = parse_spec(TrainSpec, {**spec.model_dump(), "num_epoch": args.num_epoch},
                          source="command line (--num_epoch)")
    from bpnet.train import train   # TensorFlow loads only now, after the spec is known good

    bar = None if args.quiet else ProgressBar(sys.stderr)
    try:
        summary = train(spec, results_dir, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    print(format_summary(summary))
    return 0


def format_summary(summary):
    rate = summary["images_per_s"]
    return "\n".join([
        f"model:      {summary['model_path']}",
        f"epochs:     {summary['epochs']} ({summary['steps']} steps"
        + (f", resumed after epoch {summary['resumed_from_epoch']})"
           if summary["resumed_from_epoch"] else ")"),
        f"loss:       {_fmt(summary['first_epoch_loss'])} (first epoch) -> "
        f"{_fmt(summary['final_loss'])} (last epoch)",
        f"parameters: {summary['parameter_count']:,}",
        f"speed:      {_fmt(rate)} images/s, {summary['time_s']:.0f} s this run",
    ])


def _fmt(value):
    return "n/a" if value is None else f"{value:.4g}"


class ProgressBar:
    """One self-rewriting line on a terminal; a line per epoch when the output is a file."""

    WIDTH = 30

    def __init__(self, stream):
        self.stream = stream
        self.interactive = stream.isatty()
        self.drawn = False

    def __call__(self, event):
        kind = event.get("event")
        if kind == "start":
            self._line(event.get("message", "training"))
        elif kind == "step" and self.interactive:
            self._draw(event)
        elif kind == "epoch_end":
            if self.interactive:
                self._draw(event)
            else:
                self._line(self._text(event))

    def _draw(self, event):
        self.stream.write("\r" + self._text(event).ljust(100))
        self.stream.flush()
        self.drawn = True

    def _line(self, text):
        if self.drawn:
            self.stream.write("\n")
            self.drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def _text(self, event):
        fraction = event.get("fraction") or 0.0
        filled = int(round(fraction * self.WIDTH))
        loss = event.get("loss")
        return (f"epoch {event.get('epoch')}/{event.get('num_epochs')} "
                f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction:4.0%} "
                f"loss {_fmt(loss)}  ETA {_clock(event.get('eta_s'))}")

    def close(self):
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds):
    if seconds is None:
        return "--:--"
    return time.strftime("%H:%M:%S" if seconds >= 3600 else "%M:%S", time.gmtime(seconds))
