"""TAO's launcher flags and model-file conventions, shared by every verb that TAO also has.

A TAO BodyPoseNet user's command lines carry flags that the TAO launcher (not the bpnet script)
understood: `--gpus`, `--gpu_index`, `-np`, `--use_amp`, `--log_file`, and the model key `-k`.
They are accepted here with TAO's meaning where it applies to us, and with one `note:` line where
it does not, so a pasted command runs instead of failing on `unrecognized arguments`.
docs/tao.md lists every flag and what bpnet does with it.
"""

import contextlib
import os
import sys
from pathlib import Path

from bpnet.errors import BpnetError

KEY_NOTE = ("note: -k/--key is not needed and ignored: TAO >= 5 models, like bpnet's, are plain "
            "(unencrypted) .hdf5/.onnx files")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ENCRYPTED_SUFFIXES = (".tlt", ".etlt")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def add_launcher_arguments(parser):
    """TAO's launcher flags: every verb takes them (bpnet/cli.py adds them), as every TAO task did."""
    tao = parser.add_argument_group("TAO compatibility (accepted so TAO command lines run; docs/tao.md)")
    tao.add_argument("-k", "--key", default=None,
                     help="TAO's model key. Ignored: TAO >= 5 and bpnet models are not encrypted "
                          "(an encrypted .tlt/.etlt gets an error saying how to convert it)")
    tao.add_argument("--gpus", type=int, default=1,
                     help="TAO: number of GPUs. bpnet runs one process on one device (the first "
                          "visible GPU, else the CPU); more than 1 prints a note")
    tao.add_argument("--gpu_index", type=int, nargs="+", default=None, metavar="INDEX",
                     help="TAO: which GPU(s) to use; sets CUDA_VISIBLE_DEVICES before TensorFlow loads")
    tao.add_argument("-np", "--num_processes", type=int, default=-1,
                     help="TAO: Horovod processes (default -1 = --gpus). bpnet runs one process")
    tao.add_argument("--use_amp", action="store_true",
                     help="TAO: automatic mixed precision. Not used: bpnet trains in float32 "
                          "(FP16 comes from `bpnet export --data_type fp16`); prints a note")
    tao.add_argument("--log_file", default=None,
                     help="also append everything this command prints to this file")
    return tao


def add_log_level(parser):
    """TAO's `-ll/--log_level` (train, evaluate, inference)."""
    parser.add_argument("-ll", "--log_level", choices=LOG_LEVELS, default="INFO",
                        help="TAO: logging level; DEBUG also shows TensorFlow's own log")


def add_verbose(parser):
    """TAO's `-v/--verbose` (prune, export)."""
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="TAO: verbose log; also shows TensorFlow's own log")


def apply_launcher_arguments(args, out=None):
    """Act on the launcher flags before the verb runs; returns the notes printed."""
    out = out or sys.stderr
    notes = []
    if getattr(args, "key", None):
        notes.append(KEY_NOTE)
    gpus = getattr(args, "gpus", 1)
    if gpus is not None and gpus < 1:
        raise BpnetError(f"--gpus: {gpus} must be >= 1")
    if gpus and gpus > 1:
        notes.append(f"note: --gpus {gpus}: bpnet trains in one process on one device (TAO spread "
                     "batches over GPUs with Horovod); the spec's batch_size is the whole batch")
    index = getattr(args, "gpu_index", None)
    if index:
        if any(i < 0 for i in index):
            raise BpnetError(f"--gpu_index: {index} holds a negative index")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in index)
    if getattr(args, "num_processes", -1) not in (-1, 1, None):
        notes.append(f"note: -np {args.num_processes}: bpnet runs one process")
    if getattr(args, "use_amp", False):
        notes.append("note: --use_amp is not used: bpnet trains in float32; export with "
                     "--data_type fp16 for half precision")
    if getattr(args, "log_level", None) == "DEBUG" or getattr(args, "verbose", False):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    for note in notes:
        print(note, file=out)
    return notes


@contextlib.contextmanager
def log_file_copy(path):
    """Append what the verb prints (stdout and stderr) to `path` as well, like TAO's --log_file."""
    if not path:
        yield
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        log = open(path, "a", encoding="utf-8")
    except OSError as err:
        raise BpnetError(f"--log_file: cannot write {path} ({err.strerror})") from None
    with log:
        streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(streams[0], log), _Tee(streams[1], log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = streams


class _Tee:
    def __init__(self, stream, copy):
        self.stream, self.copy = stream, copy

    def write(self, text):
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self):
        self.copy.flush()
        self.stream.flush()

    def isatty(self):
        return self.stream.isatty()


# ---------------------------------------------------------------- model files

def check_model_file(path, flag="-m/--model"):
    """Refuse TAO's encrypted model files with the way to an unencrypted one; other files pass
    (their own loaders check them)."""
    path = Path(path)
    if path.suffix.lower() not in ENCRYPTED_SUFFIXES or not path.is_file():
        return path
    with open(path, "rb") as f:
        head = f.read(len(HDF5_SIGNATURE))
    if head == HDF5_SIGNATURE:
        raise BpnetError(f"{flag}: {path} is a plain HDF5 model under a TAO name; bpnet picks the "
                         f"loader by extension: copy or rename it to {path.with_suffix('.hdf5').name}")
    if path.suffix.lower() == ".tlt":
        how = (f"in TAO 5 (its TF1 container), `tao model bpnet prune -m {path} -k $KEY -o "
               f"{path.with_suffix('.hdf5').name} -pth 0` writes it as a plain .hdf5 (threshold 0 "
               "keeps every filter); use that file here")
    else:
        how = ("an .etlt is an exported model: export again from the .hdf5 it was made from, "
               "`bpnet export -m MODEL.hdf5 -o MODEL.onnx`")
    raise BpnetError(f"{flag}: {path} is a key-encrypted TLT/TAO model (the format before TAO 5); "
                     f"bpnet never decrypts files. To get an unencrypted one: {how}")


def onnx_name_for(output_file):
    """TAO named exports `.etlt` (encrypted); bpnet writes plain ONNX beside that name.
    Returns (path to write, note or None)."""
    path = Path(output_file)
    if path.suffix.lower() == ".etlt":
        onnx = path.with_suffix(".onnx")
        return onnx, (f"note: {path.name}: bpnet writes plain ONNX, not an encrypted .etlt; "
                      f"writing {onnx} instead")
    return path, None
