"""The tf.data input pipeline: COCO samples -> (normalised images, {heatmaps, pafs, mask}).

One example is made in numpy (`make_example`: read, place/augment, targets, mask at the output
stride) and tf.data runs it in parallel over sample indices through `tf.numpy_function`.

Determinism: the shuffle order comes from `random_seed`, and each example's augmentation from a
generator seeded by (random_seed, position in the stream, sample index), not from a shared
generator, so parallel workers finishing in any order still give the same batches for a seed, and
every pass over the data draws fresh augmentations.

The training dataset repeats forever (fresh shuffles and augmentations each pass) and drops the
last partial batch: a trainer passes `steps_per_epoch = spec.steps_per_epoch or
count_samples(spec) // batch_size`. The evaluation dataset (training=False) is one letterboxed,
ordered pass, last partial batch kept.

A BpnetError inside a worker (a corrupt JPEG) reaches the caller as a TensorFlow error; wrap the
loop that consumes the dataset in `with data_errors():` to get the BpnetError back.
"""

import contextlib
import os
from functools import lru_cache

import cv2
import numpy as np

from bpnet.data.augment import place_sample
from bpnet.data.coco import load_coco_samples, load_mask
from bpnet.errors import BpnetError
from bpnet.preprocess import STRIDE, normalize, read_image
from bpnet.skeleton import load_skeleton
from bpnet.targets import make_targets


def load_samples(spec):
    """The dataset's samples for a TrainSpec (cached: the COCO index is built once per file
    version; a long-lived worker still sees an edited annotations file)."""
    ds = spec.dataloader.dataset
    return _cached_samples(str(ds.annotations), _file_version(ds.annotations), str(ds.images),
                           spec.dataloader.skeleton, ds.min_keypoints, ds.include_images_without_people)


def _file_version(path):
    try:
        stat = os.stat(path)
    except OSError:
        return None  # the reader raises the clear error
    return stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=4)
def _cached_samples(annotations, version, images, skeleton, min_keypoints, include_images_without_people):
    return tuple(load_coco_samples(annotations, images, load_skeleton(skeleton), min_keypoints,
                                   include_images_without_people))


def count_samples(spec):
    """Number of images one pass over the dataset visits."""
    return len(load_samples(spec))


def check_augmentation(aug):
    if aug.zoom_ratio_min > aug.zoom_ratio_max:
        raise BpnetError(f"dataloader.augmentation: zoom_ratio_min {aug.zoom_ratio_min} is larger than "
                         f"zoom_ratio_max {aug.zoom_ratio_max}; the zoom is drawn from [min, max]")


def example_rng(seed, position, index):
    """The augmentation generator of one example: a pure function of seed, stream position, sample."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(position), int(index)])


def make_example(sample, spec, skeleton, rng=None):
    """One example in numpy: (image float32 (H, W, 3) normalised, heatmaps (h, w, P+1),
    pafs (h, w, 2L), mask (h, w, 1)), h, w = H/8, W/8. `rng` None = no augmentation."""
    loader = spec.dataloader
    input_hw = tuple(loader.image_shape)
    image = read_image(sample.image_path)
    if image.shape[:2] != (sample.height, sample.width):
        raise BpnetError(f"image {sample.image_path} is {image.shape[1]}x{image.shape[0]} pixels but the "
                         f"annotations say {sample.width}x{sample.height}; the file does not match its annotation")
    mask = load_mask(sample) if sample.ignore_regions else None
    placed, mask, parts = place_sample(image, mask, sample.parts, sample.boxes, input_hw,
                                       loader.augmentation, skeleton.flip_permutation, rng)
    heatmaps, pafs = make_targets(parts, skeleton, input_hw, loader.targets, STRIDE)
    grid_mask = np.ones(heatmaps.shape[:2], np.float32) if mask is None else downsample_mask(mask, heatmaps.shape[:2])
    norm = loader.normalization
    return (normalize(placed, norm.image_scale, norm.image_offset), heatmaps, pafs, grid_mask[..., None])


def downsample_mask(mask, grid_hw):
    """(H, W) -> (h, w) float32: the fraction of each cell's pixels that count in the loss."""
    return cv2.resize(mask.astype(np.float32), (grid_hw[1], grid_hw[0]), interpolation=cv2.INTER_AREA)


def make_dataset(spec, training=True, repeat=None):
    """tf.data.Dataset of (images (B, H, W, 3) float32, {"heatmaps": (B, h, w, P+1),
    "pafs": (B, h, w, 2L), "mask": (B, h, w, 1)}).

    training=True: seeded shuffle, augmentation (when enabled), repeated, full batches only.
    training=False: dataset order, letterbox, one pass. `repeat` overrides the repetition."""
    import tensorflow as tf

    loader = spec.dataloader
    check_augmentation(loader.augmentation)
    skeleton = load_skeleton(loader.skeleton)
    samples = load_samples(spec)
    repeat = training if repeat is None else repeat
    augment = training and loader.augmentation.enabled
    seed = spec.random_seed
    H, W = loader.image_shape
    h, w = H // STRIDE, W // STRIDE

    def load(position, index):
        rng = example_rng(seed, position, index) if augment else None
        return make_example(samples[int(index)], spec, skeleton, rng)

    def load_tensors(position, index):
        image, heatmaps, pafs, mask = tf.numpy_function(
            load, [position, index], [tf.float32] * 4, stateful=False)
        # numpy_function forgets shapes; Keras needs them.
        image.set_shape((H, W, 3))
        heatmaps.set_shape((h, w, skeleton.num_heatmaps))
        pafs.set_shape((h, w, skeleton.num_pafs))
        mask.set_shape((h, w, 1))
        return image, {"heatmaps": heatmaps, "pafs": pafs, "mask": mask}

    dataset = tf.data.Dataset.range(len(samples))
    if training:
        dataset = dataset.shuffle(len(samples), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.enumerate()  # (position in the stream, sample index)
    dataset = dataset.map(load_tensors, num_parallel_calls=loader.num_parallel_calls, deterministic=True)
    dataset = dataset.batch(loader.batch_size, drop_remainder=training)
    return dataset.prefetch(tf.data.AUTOTUNE)


def bpnet_error_from(error):
    """The BpnetError a pipeline worker raised, recovered from the TensorFlow error wrapping it
    (None when the error did not come from one)."""
    text = str(error)
    marker = "BpnetError: "
    if marker not in text:
        return None
    message = text.split(marker, 1)[1]
    return BpnetError(message.split("\nTraceback (most recent call last)", 1)[0].strip())


@contextlib.contextmanager
def data_errors():
    """Re-raise a data worker's BpnetError (e.g. a corrupt JPEG) as itself, not as a TF error."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.OpError as err:
        recovered = bpnet_error_from(err)
        if recovered is None:
            raise
        raise recovered from None
