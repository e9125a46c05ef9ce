"""What this machine can run: CPU count, NVIDIA GPUs, TensorFlow GPU support, TensorRT, ONNX
Runtime providers; and the queues a worker with those capabilities should listen to.

Cheap by default: TensorFlow is asked about GPUs only when nvidia-smi reports some (importing
TensorFlow takes seconds and would delay every CPU worker's start).
"""

import importlib.util
import os
import platform
import shutil
import subprocess


def detect_gpus():
    """[{index, name, memory_mb}] from nvidia-smi; [] when there is none or it fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit():
            gpus.append({"index": int(parts[0]), "name": parts[1],
                         "memory_mb": int(parts[2]) if parts[2].isdigit() else None})
    return gpus


def visible_gpus(gpus, env=None):
    """The GPUs this process may use, after CUDA_VISIBLE_DEVICES."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return gpus
    wanted = {int(v) for v in visible.split(",") if v.strip().isdigit()}
    return [g for g in gpus if g["index"] in wanted]


def tensorflow_gpus():
    try:
        import bpnet  # noqa: F401  (selects tf-keras before TensorFlow is imported)
        import tensorflow as tf
        return len(tf.config.list_physical_devices("GPU"))
    except Exception:   # a broken CUDA install must not stop a worker from starting on CPU
        return 0


def ort_providers():
    try:
        import onnxruntime
        return list(onnxruntime.get_available_providers())
    except ImportError:
        return []


def detect_capabilities(env=None):
    gpus = visible_gpus(detect_gpus(), env)
    return {
        "cpu_count": os.cpu_count() or 1,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpus": gpus,
        "tensorflow_gpu": tensorflow_gpus() if gpus else 0,
        "tensorrt": bool(gpus) and importlib.util.find_spec("tensorrt") is not None,
        "onnxruntime_providers": ort_providers(),
        "cuda_visible_devices": (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES"),
    }


def default_queues(caps):
    """cpu always (export, evaluation on ONNX Runtime); gpu with a usable GPU; tensorrt with
    TensorRT on a GPU."""
    queues = ["cpu"]
    if caps["gpus"] and caps["tensorflow_gpu"]:
        queues.append("gpu")
    if caps["tensorrt"]:
        queues.append("tensorrt")
    return queues
