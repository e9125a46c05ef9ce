"""Streamlit pieces more than one page uses (the pure logic stays in state/forms/charts)."""

from pathlib import Path

import streamlit as st

from app import overlay, state
from bpnet.errors import BpnetError

ERROR_ICON = ":material/block:"


def run_action_buttons(run_id, status, cancel_slot, rerun_slot, key):
    """Cancel and Re-run buttons for one run, in the two given containers; messages below them."""
    if cancel_slot.button("Cancel run", key=f"cancel-{key}", disabled=status not in ("queued", "running"),
                          help="queued stages are dropped; running ones stop at their next step"):
        try:
            stopped = state.cancel_run(run_id)
            st.toast("run cancelled" if stopped else "the run had already finished")
        except BpnetError as err:
            st.error(str(err), icon=ERROR_ICON)
    if rerun_slot.button("Re-run", key=f"rerun-{key}", help="the same spec as a new run; finished stages are reused"):
        try:
            new_id = state.rerun(run_id)
        except BpnetError as err:
            st.error(f"Re-run refused: {err}", icon=ERROR_ICON)
        else:
            st.success(f"Re-run submitted as `{new_id}`.", icon=":material/rocket_launch:")
            st.page_link("views/run_detail.py", label="Open it", icon=":material/arrow_forward:",
                         query_params={"run": new_id})


# `modified_ns` arguments are in the cache keys on purpose (Streamlit leaves `_`-named ones out), so
# a rewritten file is read again.
@st.cache_data(max_entries=32, show_spinner=False)
def detections(results_file, modified_ns):
    """People per image of a results.json (cached: the live pages redraw every few seconds)."""
    return overlay.read_results(results_file)


@st.cache_data(max_entries=16, show_spinner=False)
def image_names(annotations, modified_ns):
    return overlay.image_paths_by_id(annotations)


@st.cache_data(max_entries=128, show_spinner=False)
def skeleton_picture(images_dir, file_name, results_file, modified_ns, image_id):
    """One dataset image with the people a result found on it (RGB)."""
    people = detections(results_file, modified_ns).get(image_id, [])
    return overlay.overlay_image(images_dir, file_name, people)


def mtime_ns(path):
    return Path(path).stat().st_mtime_ns
