"""The calibration tensor file: the calibration images preprocessed once, exactly like inference,
and reused by later runs (TAO's `--cal_data_file`). A `.npy` name is a NumPy NHWC float32 array;
any other name TAO's TensorFile layout (bpnet/tensorfile.py), so a TAO user's existing
`.tensorfile` is read as it is."""

from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.events import emit
from bpnet.fileio import atomic_path
from bpnet.image_files import list_images
from bpnet.limits import calibration_count_problem


def build_calibration_tensor(image_dir, input_hw, batch_size, batches, normalization=None, progress=None):
    """Preprocess the first batch_size x batches images (sorted by name) exactly like inference
    (letterbox into H x W, normalise): float32 (N, H, W, 3)."""
    from bpnet.preprocess import prepare_batch, read_image

    needed = _images_needed(batch_size, batches)
    images = list_images(image_dir, "--cal_image_dir")
    problem = calibration_count_problem(len(images), batch_size, batches)
    if problem:
        raise BpnetError(f"--cal_image_dir: {image_dir} {problem}; add images or lower the batches")
    norm = {} if normalization is None else {"image_scale": normalization.image_scale,
                                             "image_offset": normalization.image_offset}
    out = np.empty((needed, *input_hw, 3), dtype=np.float32)
    for i, path in enumerate(images[:needed]):
        out[i] = prepare_batch([read_image(path)], input_hw, "pad_image_input", **norm)[0][0]
        emit(progress, "calibrate", "preprocess", step=i + 1, num_steps=needed, fraction=(i + 1) / needed)
    return out


def _images_needed(batch_size, batches):
    for flag, value in (("--batch_size", batch_size), ("--batches", batches)):
        if int(value) < 1:
            raise BpnetError(f"{flag}: {value} must be >= 1")
    return int(batch_size) * int(batches)


def load_calibration_tensor(path, input_hw, batch_size, batches):
    """A tensor file written earlier, checked against the requested shape and image count."""
    from bpnet.tensorfile import is_tensorfile, read_tensorfile

    path = Path(path)
    if is_tensorfile(path):
        data = read_tensorfile(path)
    else:
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            raise BpnetError(f"--cal_data_file: {path} is neither a TAO TensorFile nor a readable .npy "
                             f"tensor file ({err})") from None
    needed = _images_needed(batch_size, batches)
    if data.ndim != 4 or tuple(data.shape[1:]) != (*input_hw, 3):
        raise BpnetError(f"--cal_data_file: {path} holds shape {tuple(data.shape)}, expected "
                         f"(N, {input_hw[0]}, {input_hw[1]}, 3); delete it to rebuild it for this input size")
    problem = calibration_count_problem(data.shape[0], batch_size, batches)
    if problem:
        raise BpnetError(f"--cal_data_file: {path} {problem}; delete it to rebuild it")
    return np.asarray(data[:needed], dtype=np.float32)


def calibration_tensor(input_hw, batch_size, batches, image_dir=None, data_file=None,
                       normalization=None, progress=None, channels_first=False):
    """(data, reused): the tensor file's content when it exists, else the preprocessed images
    (saved to `data_file` when one is given, so the next run skips preprocessing). The data is
    NHWC; `channels_first` writes a TensorFile's batches NCHW, as TAO's channels_first export."""
    if data_file is not None and Path(data_file).is_file():
        return load_calibration_tensor(data_file, input_hw, batch_size, batches), True
    if image_dir is None:
        where = f" and --cal_data_file {data_file} does not exist yet" if data_file else ""
        raise BpnetError(f"INT8 calibration needs calibration images: give --cal_image_dir{where}")
    data = build_calibration_tensor(image_dir, input_hw, batch_size, batches, normalization, progress)
    if data_file is not None:
        save_calibration_tensor(data_file, data, batch_size, channels_first)
    return data, False


def save_calibration_tensor(path, data, batch_size, channels_first=False):
    """`.npy`: one NumPy array; any other name (TAO's `.tensorfile`): TAO's TensorFile layout."""
    if Path(path).suffix.lower() == ".npy":
        with atomic_path(path) as tmp:
            np.save(tmp, data)
    else:
        from bpnet.tensorfile import write_tensorfile

        write_tensorfile(path, data, batch_size, channels_first)
