"""The tf.data input pipeline: COCO samples -> (normalised images, {heatmaps, pafs, mask}).

One example is made in numpy (`make_example`: read, place/augment, targets, mask at the output
stride) and tf.data runs it in parallel over sample indices through `tf.numpy_function`.

Parallel workers: with `num_parallel_calls` N > 1, tf.data runs N map calls at once. By default
they are threads: since the targets are vectorised and normalisation is a lookup table, almost
all of an example's time is in numpy/OpenCV calls that release the GIL, and two threads measured
1.7-1.8x one worker on 2 cores against 1.3-1.5x for two processes (which pay ~2 ms per example
in the parent plus the shared-memory copies; docs/performance.md). `dataloader.worker_processes`
makes each map call hand its example to a pool of N spawned worker processes instead (for many
cores, where the GIL-held remainder would cap threads). N = 1 makes examples in the calling
process (no pool to start: tests and tiny runs stay quick).

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

import atexit
import contextlib
import multiprocessing
import os
import queue
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
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


def make_dataset(spec, training=True, repeat=None, processes=None):
    """tf.data.Dataset of (images (B, H, W, 3) float32, {"heatmaps": (B, h, w, P+1),
    "pafs": (B, h, w, 2L), "mask": (B, h, w, 1)}).

    training=True: seeded shuffle, augmentation (when enabled), repeated, full batches only.
    training=False: dataset order, letterbox, one pass. `repeat` overrides the repetition.
    `processes` None: as `dataloader.worker_processes` says; True/False: worker processes /
    threads whatever the spec says (for comparisons); the examples are the same either way."""
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
    workers = loader.num_parallel_calls
    use_processes = (loader.worker_processes if processes is None else bool(processes)) and workers > 1

    if use_processes:
        pool = worker_pool(spec, workers)

        def load(position, index):
            return pool.example(int(position), int(index), augment)
    else:
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
    # With processes, twice as many examples in flight as workers: each worker finds its next
    # example already queued instead of idling through a round trip to the parent.
    in_flight = IN_FLIGHT_PER_WORKER * workers if use_processes else workers
    dataset = dataset.map(load_tensors, num_parallel_calls=in_flight, deterministic=True)
    dataset = dataset.batch(loader.batch_size, drop_remainder=training)
    return dataset.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------- worker processes

# Pools kept alive by spec (a training run makes its training and validation datasets from one
# spec); the oldest beyond this many is shut down so a long-lived job worker does not pile them up.
MAX_POOLS = 2
IN_FLIGHT_PER_WORKER = 2
_pools = OrderedDict()
_worker = {}   # inside a worker process: its spec, samples, skeleton, attached slots


def example_shapes(spec):
    """Shapes of the four float32 arrays of one example (image, heatmaps, pafs, mask)."""
    skeleton = load_skeleton(spec.dataloader.skeleton)
    H, W = spec.dataloader.image_shape
    h, w = H // STRIDE, W // STRIDE
    return ((H, W, 3), (h, w, skeleton.num_heatmaps), (h, w, skeleton.num_pafs), (h, w, 1))


def slot_arrays(buffer, shapes):
    """float32 views of the four arrays laid out one after another in a shared buffer."""
    arrays, offset = [], 0
    for shape in shapes:
        count = int(np.prod(shape))
        arrays.append(np.ndarray(shape, np.float32, buffer=buffer, offset=offset))
        offset += 4 * count
    return arrays


class WorkerPool:
    """Spawned worker processes that make examples into shared-memory slots.

    Spawned, not forked: the parent runs TensorFlow's threads, which a fork would copy in an
    undefined state. An executor, not multiprocessing.Pool: a worker that dies (out of memory)
    breaks the pool with an error instead of leaving training waiting forever. Examples come
    back through shared memory (one slot per example in flight) because pickling 2.4 MB per
    368x368 example through a pipe cost the parent about as much CPU as making it."""

    def __init__(self, spec, processes):
        from multiprocessing import shared_memory

        self.shapes = example_shapes(spec)
        nbytes = 4 * sum(int(np.prod(shape)) for shape in self.shapes)
        self.slots = [shared_memory.SharedMemory(create=True, size=nbytes)
                      for _ in range(IN_FLIGHT_PER_WORKER * processes)]
        self.free = queue.Queue()
        for slot in self.slots:
            self.free.put(slot)
        self.executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker, initargs=(spec, self.shapes))

    def example(self, position, index, augment):
        """One example made by a worker, copied out of its slot (the slot is then reused)."""
        slot = self.free.get()
        try:
            self.executor.submit(pool_example, slot.name, position, index, augment).result()
            return tuple(array.copy() for array in slot_arrays(slot.buf, self.shapes))
        finally:
            self.free.put(slot)

    def close(self):
        self.executor.shutdown(wait=True, cancel_futures=True)
        for slot in self.slots:
            slot.close()
            slot.unlink()
        self.slots = []


def worker_pool(spec, processes):
    """The pool of `processes` workers for `spec` (started once, reused by later datasets)."""
    key = (spec.model_dump_json(), int(processes))
    if key in _pools:
        _pools.move_to_end(key)
        return _pools[key]
    while len(_pools) >= MAX_POOLS:
        _pools.popitem(last=False)[1].close()
    _pools[key] = WorkerPool(spec, int(processes))
    return _pools[key]


@atexit.register
def close_worker_pools():
    """Stop every worker process this module started and free their shared memory."""
    while _pools:
        _pools.popitem()[1].close()


def _init_worker(spec, shapes):
    import cv2 as worker_cv2

    worker_cv2.setNumThreads(1)   # one process per core already; no nested thread pools
    _worker.update(spec=spec, shapes=shapes, slots={}, samples=load_samples(spec),
                   skeleton=load_skeleton(spec.dataloader.skeleton))


def _attached(name):
    from multiprocessing import shared_memory

    # Spawned workers share the parent's resource tracker, so attaching registers nothing new;
    # the parent unlinks the blocks when it closes the pool.
    slots = _worker["slots"]
    if name not in slots:
        slots[name] = shared_memory.SharedMemory(name=name)
    return slots[name]


def pool_example(slot_name, position, index, augment):
    """`make_example` inside a worker (same seeded generator as in-process), into a slot."""
    spec = _worker["spec"]
    rng = example_rng(spec.random_seed, position, index) if augment else None
    made = make_example(_worker["samples"][index], spec, _worker["skeleton"], rng)
    for target, array in zip(slot_arrays(_attached(slot_name).buf, _worker["shapes"]), made):
        target[...] = array


def bpnet_error_from(error):
    """The BpnetError a pipeline worker raised, recovered from the TensorFlow error wrapping it
    (None when the error did not come from one)."""
    text = str(error)
    marker = "BpnetError: "
    if marker not in text:
        return None
    message = text.split(marker, 1)[1]
    # What follows the message: a traceback, or the worker process's (ProcessPoolExecutor's
    # _RemoteTraceback chained to it).
    for tail in ("\nTraceback (most recent call last)", "\nconcurrent.futures.process._RemoteTraceback"):
        message = message.split(tail, 1)[0]
    return BpnetError(message.strip())


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
