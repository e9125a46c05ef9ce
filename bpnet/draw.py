"""Skeleton pictures: the one drawing routine behind `bpnet inference --dump_visualizations` and
the dashboard's overlays (OpenCV and numpy only, so the dashboard can import it)."""

import cv2
import numpy as np


def limb_colors(num_limbs):
    """One distinct BGR colour per limb (hues around the colour wheel)."""
    hsv = np.zeros((1, num_limbs, 3), np.uint8)
    hsv[0, :, 0] = np.linspace(0, 179, num_limbs, endpoint=False).astype(np.uint8)
    hsv[0, :, 1:] = 255
    return [tuple(int(c) for c in bgr) for bgr in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]]


def draw_skeletons(image_bgr, people_parts, skeleton, colors=None, joint_color=(255, 255, 255),
                   thickness=None):
    """A copy of the BGR image with each person's limbs and parts drawn.

    `people_parts`: (num_parts, 3) arrays (x, y, visible) in the image's pixels, in the skeleton's
    part order; a part is drawn when `visible` is true. `colors`: one BGR colour per limb (default:
    a colour wheel); `thickness` defaults to the image size / 250.
    """
    canvas = image_bgr.copy()
    thickness = thickness or max(1, round(max(canvas.shape[:2]) / 250))
    colors = colors or limb_colors(len(skeleton.limbs))
    for parts in people_parts:
        visible = np.asarray(parts[:, 2]).astype(bool)
        for (a, b), color in zip(skeleton.limbs, colors):
            if visible[a] and visible[b]:
                cv2.line(canvas, _point(parts[a]), _point(parts[b]), color, thickness, cv2.LINE_AA)
        for part in parts[visible]:
            cv2.circle(canvas, _point(part), thickness + 1, joint_color, -1, cv2.LINE_AA)
    return canvas


def _point(xy):
    return int(round(float(xy[0]))), int(round(float(xy[1])))
