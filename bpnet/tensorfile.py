"""TAO's calibration TensorFile, read and written, so a TAO user's `--cal_data_file` is reused.

TAO (`tao model bpnet export --cal_data_file coco.288.384.tensorfile`) stores the preprocessed
calibration batches in an HDF5 file laid out as:

    attribute `count`        number of batches written
    attribute `shape`        the shape every batch has, e.g. (batch_size, H, W, 3)
    group  `_tensorfile_array_key__<i>` for batch i = 0 .. count-1, holding
        dataset `_tensorfile_array_key_`   the batch, float, NHWC (channels_last) or NCHW
                                           (channels_first), gzip-compressed

Each batch is the images resized to H x W, RGB, normalised with the training spec's
`image_offset`/`image_scale` (pixel / scale - offset, bpnet's normalisation too). bpnet
letterboxes instead of stretching when it writes the file; for calibration ranges the two are
interchangeable. bpnet writes NHWC batches (NCHW for a channels_first export, as TAO). Batches
are read in order and joined into one (N, H, W, 3) float32 array (NCHW batches transposed), the
form the rest of calibration uses.

Only arrays are read: h5py gives datasets, and nothing in the file is executed.
"""

from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.fileio import atomic_path

ARRAY_KEY = "_tensorfile_array_key_"
GROUP_PREFIX = "_tensorfile_array_key_"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def group_name(index):
    return f"{GROUP_PREFIX}_{index}"


def is_tensorfile(path):
    """True when `path` is an HDF5 file (a TensorFile is one); by content, not by name."""
    try:
        with open(path, "rb") as f:
            return f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
    except OSError:
        return False


def write_tensorfile(path, data, batch_size, channels_first=False):
    """Write `data` (N, H, W, 3) as N / batch_size batches in TAO's layout (atomically)."""
    import h5py

    data = np.asarray(data, dtype=np.float32)
    batch_size = int(batch_size)
    if data.ndim != 4 or batch_size < 1 or len(data) % batch_size:
        raise BpnetError(f"TensorFile {path}: needs (N, H, W, 3) data in whole batches of {batch_size}, "
                         f"got shape {data.shape}")
    batches = data.reshape(-1, batch_size, *data.shape[1:])
    if channels_first:
        batches = batches.transpose(0, 1, 4, 2, 3)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["count"] = len(batches)
            f.attrs["shape"] = np.asarray(batches.shape[1:], dtype=np.int64)
            for i, batch in enumerate(batches):
                f.create_group(group_name(i)).create_dataset(ARRAY_KEY, data=batch, compression="gzip")
    return Path(path)


def read_tensorfile(path, flag="--cal_data_file"):
    """All batches of a TensorFile, in order, as float32 (N, H, W, 3)."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            count = int(f.attrs.get("count", 0))
            if count < 1:
                raise BpnetError(f"{flag}: {path} is an HDF5 file without TensorFile batches (attribute "
                                 "'count' missing or 0); delete it to rebuild it from --cal_image_dir")
            batches = [_batch(f, i, path, flag) for i in range(count)]
    except OSError as err:
        raise BpnetError(f"{flag}: {path} is not a readable TensorFile ({err})") from None
    shapes = {b.shape[1:] for b in batches}
    if len(shapes) != 1:
        raise BpnetError(f"{flag}: {path} holds batches of different image shapes {sorted(shapes)}")
    data = np.concatenate(batches).astype(np.float32, copy=False)
    return to_channels_last(data, path, flag)


def _batch(f, index, path, flag):
    name = group_name(index)
    if name not in f or ARRAY_KEY not in f[name]:
        raise BpnetError(f"{flag}: {path}: batch {index} ({name}/{ARRAY_KEY}) is missing; the file is "
                         "incomplete, delete it to rebuild it")
    batch = f[name][ARRAY_KEY][()]
    if not np.issubdtype(batch.dtype, np.number) or batch.ndim != 4:
        raise BpnetError(f"{flag}: {path}: batch {index} is {batch.dtype} of shape {batch.shape}, "
                         "expected a numeric (batch, H, W, 3) or (batch, 3, H, W) array")
    return batch


def to_channels_last(data, path, flag):
    """NHWC as it is; NCHW (TAO's channels_first files) transposed to NHWC."""
    if data.shape[-1] == 3:
        return data
    if data.shape[1] == 3:
        return np.ascontiguousarray(data.transpose(0, 2, 3, 1))
    raise BpnetError(f"{flag}: {path} holds images of shape {data.shape[1:]}: neither H,W,3 nor 3,H,W")
