"""What a speed figure was measured on: CPU model, instruction set, threads, load.

INT8 speed-ups differ several-fold between CPUs (AVX2-only vs AVX-512 VNNI vs AMX), and a
shared machine's load changes every timing, so every benchmark result carries `describe_cpu()`.
"""

import os
import platform

from bpnet.limits import UNDER_LOAD_PER_CORE

# Instruction-set extensions that decide which ONNX Runtime / oneDNN kernels run, in the order
# they are reported (/proc/cpuinfo flag -> short name).
ISA_FLAGS = (("avx2", "AVX2"), ("fma", "FMA"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX-512 VNNI"),
             ("avx_vnni", "AVX-VNNI"), ("avx512_bf16", "AVX-512 BF16"), ("amx_int8", "AMX-INT8"),
             ("amx_bf16", "AMX-BF16"), ("asimd", "NEON"), ("asimddp", "NEON dot-product"))


def cpu_flags(cpuinfo_text):
    """The flag set of the first processor in a /proc/cpuinfo text (x86 'flags', ARM 'Features')."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_model(cpuinfo_text):
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine()


def instruction_sets(flags):
    """Short names of the performance-relevant extensions present, e.g. ['AVX2', 'FMA', 'AVX-512']."""
    return [name for flag, name in ISA_FLAGS if flag in flags]


def best_int8_path(isa):
    """The widest INT8 dot-product the CPU offers: what INT8 speed-ups depend on."""
    for name in ("AMX-INT8", "AVX-512 VNNI", "AVX-VNNI", "AVX-512", "AVX2", "NEON dot-product"):
        if name in isa:
            return name
    return "none"


def load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:   # not available on this platform
        return None


def describe_cpu(threads=None, cpuinfo_path="/proc/cpuinfo"):
    """A JSON-friendly description of this machine for a benchmark record.

    `threads` is the thread count the benchmark used (None = not fixed, the runtime default)."""
    try:
        with open(cpuinfo_path) as handle:
            text = handle.read()
    except OSError:
        text = ""
    isa = instruction_sets(cpu_flags(text))
    load = load_average()
    cores = os.cpu_count()
    return {"cpu": cpu_model(text), "instruction_sets": isa, "int8_path": best_int8_path(isa),
            "logical_cores": cores, "threads": threads, "load_average": load,
            "under_load": under_load({"load_average": load, "logical_cores": cores})}


def under_load(description):
    """Whether a describe_cpu() record's 1-minute load was above UNDER_LOAD_PER_CORE per core
    (from the recorded load, so records written under an older rule read the same way)."""
    load, cores = description.get("load_average"), description.get("logical_cores")
    return bool(load and cores and load[0] > UNDER_LOAD_PER_CORE * cores)


def cpu_line(description):
    """One line for printed tables: 'AMD EPYC, AVX-512 VNNI (AVX2 FMA ...), 2 cores, 1 thread, load 9.1 (under load)'."""
    d = description
    threads = f", {d['threads']} thread{'s' if d['threads'] != 1 else ''}" if d.get("threads") else ""
    load = f", load average {d['load_average'][0]:.1f}" if d.get("load_average") else ""
    flag = " (UNDER LOAD: shared machine, absolute timings are noisy)" if under_load(d) else ""
    return (f"{d['cpu']}, INT8 path {d['int8_path']} [{' '.join(d['instruction_sets']) or 'no SIMD flags read'}], "
            f"{d['logical_cores']} logical cores{threads}{load}{flag}")
