"""Step 5 of decoding: a decoded person -> a COCO keypoint result in original image coordinates."""

import numpy as np


def person_to_coco(person, letterbox, skeleton, image_id):
    """A COCO keypoint result entry in original image coordinates (v=1 found, zeros missing)."""
    parts = np.zeros((skeleton.num_parts, 3), dtype=np.float32)
    parts[:, :2] = letterbox.to_image(person.keypoints[:, :2])
    parts[:, 2] = person.found
    parts[~person.found] = 0.0
    keypoints = skeleton.parts_to_coco(parts)
    return {"image_id": int(image_id), "category_id": 1,
            "keypoints": [round(float(v), 2) for v in keypoints.reshape(-1)],
            "score": round(float(person.score), 5)}
