"""Data: COCO reading (`coco`), placement and augmentation (`augment`), the tf.data pipeline
(`pipeline`). `coco` and `augment` are numpy/cv2 only; `pipeline` imports TensorFlow lazily."""
