"""Streamlit pieces more than one page uses (the pure logic stays in state/forms/charts)."""

import streamlit as st

from app import state
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
