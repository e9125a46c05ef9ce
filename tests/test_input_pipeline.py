"""Input-pipeline speed-ups (issue 17) change nothing in what the network is fed: worker
processes give the same batches as in-process threads, and the normalisation lookup table gives
the same bytes as the per-pixel formula."""

import numpy as np
import pytest

from bpnet.preprocess import normalize
from bpnet.specs import TrainSpec, parse_spec
from tests.conftest import tiny_train_spec_dict


def formula(images, scale, offset):
    """The per-pixel normalisation the lookup table replaced."""
    return np.asarray(images, np.float32) / np.asarray(scale, np.float32) - np.asarray(offset, np.float32)


@pytest.mark.parametrize("scale, offset", [((256.0,) * 3, (0.5,) * 3), ((58.4, 57.1, 57.4), (2.1, 2.0, 1.8)),
                                           ((255.0, 255.0, 255.0), (0.0, 0.0, 0.0)), ((1.0, 1.0, 1.0), (128.0, 127.5, 0.25))])
def test_normalisation_table_is_bit_identical_to_the_formula(scale, offset):
    every_level = np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 256, 3)
    images = np.random.default_rng(3).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    for array in (every_level, images, images[0], images[:, :, ::2]):   # batch, one image, a strided view
        fast = normalize(array, scale, offset)
        assert fast.dtype == np.float32 and fast.shape == array.shape
        assert fast.tobytes() == formula(array, scale, offset).tobytes()
    as_float = images.astype(np.float32)   # non-uint8 input takes the formula itself
    assert normalize(as_float, scale, offset).tobytes() == formula(as_float, scale, offset).tobytes()


def batches(spec, count, processes):
    from bpnet.data.pipeline import make_dataset

    out = []
    for images, targets in make_dataset(spec, training=True, processes=processes).take(count):
        out.append([images.numpy()] + [targets[k].numpy() for k in ("heatmaps", "pafs", "mask")])
    return out


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_as_threads():
    from bpnet.data.pipeline import close_worker_pools

    spec = parse_spec(TrainSpec, tiny_train_spec_dict(**{"dataloader.num_parallel_calls": 2,
                                                         "dataloader.batch_size": 3}), "spec")
    try:
        in_process, in_workers = batches(spec, 3, processes=False), batches(spec, 3, processes=True)
    finally:
        close_worker_pools()
    for threads_batch, workers_batch in zip(in_process, in_workers, strict=True):
        for a, b in zip(threads_batch, workers_batch, strict=True):
            assert a.tobytes() == b.tobytes()
    assert not np.array_equal(in_process[0][0], in_process[1][0])   # augmentation did run


@pytest.mark.slow
def test_a_worker_process_error_reaches_the_caller_as_a_bpnet_error(copy_of_coco_mini):
    from bpnet.data import pipeline
    from bpnet.data.pipeline import close_worker_pools, data_errors, make_dataset
    from bpnet.errors import BpnetError

    victim = sorted((copy_of_coco_mini / "train2017").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:2000])
    spec = parse_spec(TrainSpec, tiny_train_spec_dict(**{
        "dataloader.num_parallel_calls": 2, "dataloader.worker_processes": True, "dataloader.batch_size": 80,
        "dataloader.dataset.annotations": str(copy_of_coco_mini / "annotations" / "person_keypoints_train2017.json"),
        "dataloader.dataset.images": str(copy_of_coco_mini / "train2017"),
        "dataloader.dataset.include_images_without_people": True}), "spec")
    try:
        with pytest.raises(BpnetError, match=rf"^image .*{victim.name} is not a readable image"):
            with data_errors():
                for _ in make_dataset(spec, training=False):
                    pass
        assert pipeline._pools   # dataloader.worker_processes: the error came from a worker process
    finally:
        close_worker_pools()
