"""Inference backends behind one interface (`Backend.predict(batch) -> (heatmaps, pafs)`)."""

from bpnet.backends.base import Backend, load_backend

__all__ = ["Backend", "load_backend"]
