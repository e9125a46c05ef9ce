"""Atomic file writes: a result is either complete at its final path or absent.

Everything the engine writes as a result (models, JSON, ONNX, caches) goes through `atomic_path`
so an interrupted run never leaves a half-written file that looks complete.
"""

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temp file keeps `path`'s suffix (or `suffix`) because some writers (Keras, ONNX) pick the
    format from the extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix, dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            # mkstemp makes files private (0600); results get the usual umask-based mode.
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path, obj):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text_atomic(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(value):
    # numpy scalars and arrays, Paths: the usual non-JSON values in metrics and reports.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path, what="JSON file"):
    """Read a JSON file or raise a BpnetError naming it."""
    from bpnet.errors import BpnetError

    path = Path(path)
    if not path.is_file():
        raise BpnetError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BpnetError(f"{what} {path} is not valid JSON: {err}") from None
