"""Guided optimization: the seed's rules of thumb applied to the user's own data.

- `dataset_stats`: what the dataset looks like (people per image, keypoints, sizes) - pure.
- `recommend`: input resolution and every field's range, each with its reason - pure.
- `cost`: a preview of a run's cost from measured times of past runs - pure.
- `search`: the AP-budget search over prune thresholds (pure rule + the prune/retrain/evaluate loop).
- `gate`: an INT8/FP16 result against its float parent, pass/fail and remedies.
- `sensitivity`: per-layer INT8 sensitivity of a QDQ ONNX model, and keeping layers in float.
"""
