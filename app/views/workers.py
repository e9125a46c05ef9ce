"""Workers: each registered worker's queues, capabilities and heartbeat, refreshed live."""

import time

import streamlit as st

from app import jobs
from app.html_table import html_table
from app.widgets import run_detail_href
from bpnet.errors import BpnetError

REFRESH_S = 5

st.title("Workers")
st.caption("Each worker registers what it can do (CPU, GPUs, TensorRT, ONNX Runtime) and sends a heartbeat; "
           "stages go to the queues (`cpu`, `gpu`, `tensorrt`) of workers able to run them.")


def capability_text(caps):
    gpus = caps.get("gpus") or []
    parts = [f"{caps.get('cpu_count', '?')} CPU",
             f"{len(gpus) if isinstance(gpus, list) else gpus} GPU",
             "TensorRT ✔" if caps.get("tensorrt") else "TensorRT ✘",
             "TF GPU ✔" if caps.get("tensorflow_gpu") else "TF GPU ✘"]
    providers = caps.get("onnxruntime_providers")
    if providers:
        parts.append("ORT: " + ", ".join(p.replace("ExecutionProvider", "") for p in providers))
    return " · ".join(parts)


def running_stage_text(worker):
    """'train s2 · run demo' (names, not hashes); '–' when idle."""
    if not worker.get("current_stage"):
        return "–"
    run = f" · run {worker['current_run_name']}" if worker.get("current_run_name") else ""
    return f"{worker['current_stage']}{run}"


def worker_rows(workers, now):
    return [{"worker": w["id"], "alive": "🟢 online" if w["alive"] else "🔴 offline",
             "heartbeat": f"{jobs.format_duration(now - w['heartbeat_at'])} ago",
             "queues": ", ".join(w["queues"]), "capabilities": capability_text(w.get("capabilities") or {}),
             "running stage": running_stage_text(w), "host": f"{w['hostname']} (pid {w['pid']})"}
            for w in workers]


@st.fragment(run_every=REFRESH_S)
def workers_panel():
    try:
        workers = jobs.list_workers()
    except BpnetError as err:
        st.error(str(err), icon=":material/block:")
        return
    alive = [w for w in workers if w["alive"]]
    if not alive:
        st.warning("No worker is online: submitted runs wait in the queue. Start one with "
                   "`bpnet-studio worker` (or everything at once with `bpnet-studio up`).", icon=":material/warning:")
    elif not any((w.get("capabilities") or {}).get("tensorrt") for w in alive):
        st.info("No online worker has TensorRT: models are measured on ONNX Runtime and TensorRT engines "
                "are not built.", icon=":material/info:")
    if workers:
        runs = [run_detail_href(w["current_run_id"]) if w["alive"] and w.get("current_run_id") else None
                for w in workers]
        st.html(html_table(worker_rows(workers, time.time()), links={"running stage": runs}))
        if any(runs):
            st.caption("Click a running stage to open its run.")
        with st.expander("raw capabilities"):
            st.json({w["id"]: w.get("capabilities") for w in workers})


workers_panel()
