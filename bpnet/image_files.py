"""Which files of a folder are images: the one suffix list and listing every module uses
(calibration, inference, sampling, run specs, the dashboard)."""

from pathlib import Path

from bpnet.errors import BpnetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def is_image_file(path):
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def list_images(folder, what="image folder"):
    """The images directly inside `folder`, sorted by name; `what` names the option in errors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BpnetError(f"{what}: {folder} is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def count_images(folder):
    """How many images `folder` holds directly (0 when it is not a folder)."""
    folder = Path(folder)
    return sum(1 for p in folder.iterdir() if p.is_file() and is_image_file(p)) if folder.is_dir() else 0
