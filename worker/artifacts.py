"""The artifact store: one directory per computed stage under the artifact root, with a manifest.

A stage's directory is named by its cache key (`<kind>-<key[:20]>`), so identical stages in
different runs share one directory. Every file in it was written atomically by the engine; the
manifest (`manifest.json`: name, size, sha256, kind per file) is written last, atomically, so a
directory with a manifest is complete. Downloads resolve paths through `resolve_inside`, which
refuses anything that would leave the root (`..`, absolute paths, symlinks pointing out).
"""

import hashlib
import shutil
from pathlib import Path

from bpnet.errors import BpnetError
from bpnet.fileio import read_json, write_json_atomic
from bpnet.image_files import is_image_file

MANIFEST = "manifest.json"

# (test on the file name, kind) - first match wins.
_KINDS = (
    (lambda n: n.endswith(".int8.onnx"), "int8 onnx"),
    (lambda n: n.endswith(".int8_trt.onnx"), "int8 onnx (tensorrt q/dq)"),
    (lambda n: n.endswith(".fp16.onnx"), "fp16 onnx"),
    (lambda n: n.endswith(".onnx"), "onnx"),
    (lambda n: n.endswith((".hdf5", ".h5")), "keras model"),
    (lambda n: n.endswith((".engine", ".plan")), "tensorrt engine"),
    (lambda n: n.endswith((".cache", ".calib", ".cal.bin")) or "cal_cache" in n,
     "calibration cache"),
    (lambda n: n == "sample_maps.npz", "network outputs (sample images)"),
    (lambda n: n.endswith((".tensorfile", ".npy", ".npz")), "calibration tensor file"),
    (lambda n: n.endswith((".yaml", ".yml")), "spec"),
    (lambda n: n == "metrics.json" or n.endswith("metrics.json"), "metrics"),
    (is_image_file, "visualisation"),
    (lambda n: n.endswith(".jsonl"), "events"),
    (lambda n: n.endswith(".json"), "report"),
)


def artifact_kind(name):
    name = name.lower()
    for test, kind in _KINDS:
        if test(name):
            return kind
    return "file"


def stage_dir_name(kind, key):
    return f"{kind}-{key[:20]}"


def prepare_stage_dir(root, kind, key):
    """An empty directory for a stage about to be computed; leftovers of an interrupted attempt
    (a killed worker) are removed so they can never be mistaken for results."""
    path = Path(root) / stage_dir_name(kind, key)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def sha256_file(path):
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(root, stage_dir, skip=("checkpoints",)):
    """Describe every file under `stage_dir` (except temp files and `skip` folders) in
    `manifest.json`; returns the entries (name, relpath to root, kind, size, sha256)."""
    root, stage_dir = Path(root).resolve(), Path(stage_dir).resolve()
    entries = []
    for path in sorted(stage_dir.rglob("*")):
        rel_in_stage = path.relative_to(stage_dir)
        if (not path.is_file() or path.name == MANIFEST or path.name.startswith(".")
                or rel_in_stage.parts[0] in skip):
            continue
        entries.append({"name": str(rel_in_stage), "relpath": str(path.relative_to(root)),
                        "kind": artifact_kind(path.name), "size": path.stat().st_size,
                        "sha256": sha256_file(path)})
    write_json_atomic(stage_dir / MANIFEST, {"files": entries})
    return entries


def read_manifest(stage_dir):
    return read_json(Path(stage_dir) / MANIFEST, "artifact manifest")["files"]


def is_complete(stage_dir):
    return (Path(stage_dir) / MANIFEST).is_file()


def resolve_inside(root, relpath):
    """`root/relpath` as an absolute path, or BpnetError when it would escape `root`."""
    root = Path(root).resolve()
    rel = Path(str(relpath))
    if rel.is_absolute() or not str(relpath).strip():
        raise BpnetError(f"artifact path {relpath!r} is not allowed: it must be relative to the "
                         f"artifact root")
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise BpnetError(f"artifact path {relpath!r} is not allowed: it leaves the artifact root "
                         f"{root}")
    return path
