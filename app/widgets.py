"""Streamlit pieces more than one page uses (the pure logic stays in jobs/present/forms/charts)."""

from pathlib import Path
from urllib.parse import urlencode

import streamlit as st

from app import jobs, overlay
from bpnet.errors import BpnetError

ERROR_ICON = ":material/block:"


def run_action_buttons(run_id, status, cancel_slot, rerun_slot, key):
    """Cancel and Re-run buttons for one run, in the two given containers; messages below them."""
    if cancel_slot.button("Cancel run", key=f"cancel-{key}", disabled=status not in ("queued", "running"),
                          help="queued stages are dropped; running ones stop at their next step"):
        try:
            stopped = jobs.cancel_run(run_id)
            st.toast("run cancelled" if stopped else "the run had already finished")
        except BpnetError as err:
            st.error(str(err), icon=ERROR_ICON)
    if rerun_slot.button("Re-run", key=f"rerun-{key}", help="the same spec as a new run; finished stages are reused"):
        try:
            new_id = jobs.rerun(run_id)
        except BpnetError as err:
            st.error(f"Re-run refused: {err}", icon=ERROR_ICON)
        else:
            st.success(f"Re-run submitted as `{new_id}`.", icon=":material/rocket_launch:")
            st.page_link("views/run_detail.py", label="Open it", icon=":material/arrow_forward:",
                         query_params={"run": new_id})


RUN_DETAIL_PAGE, RUN_DETAIL_PATH = "views/run_detail.py", "run"
NAVIGATION_KEY = "navigate_to"


def run_detail_href(run_id, result=None):
    """Run detail's address relative to the current page (pages sit side by side under the
    app's base path, so this also works behind a proxy's path prefix)."""
    query = urlencode({"run": run_id, **({"result": result} if result else {})})
    return f"{RUN_DETAIL_PATH}?{query}"


def open_run_detail(run_id, result=None):
    """Open Run detail on `run_id` (and one of its results) from a click that reruns the page
    (Compare's chart; tables use links, `run_detail_href`).

    The switch is also remembered in the session until Run detail has opened: a rerun asked for
    at the same moment (another click, a fragment's refresh timer) replaces a pending page switch
    in Streamlit's request queue (the newest request's page wins), so on a loaded machine the
    click could otherwise be lost. Every run after that repeats the switch (`follow_navigation`)."""
    query = {"run": run_id, **({"result": result} if result else {})}
    st.session_state[NAVIGATION_KEY] = query
    st.switch_page(RUN_DETAIL_PAGE, query_params=query)


def follow_navigation(current_url_path=None):
    """Repeat a switch to Run detail that has not happened yet; forget it once Run detail is
    the page being drawn (`current_url_path`: the page st.navigation picked; None inside a
    fragment of another page)."""
    query = st.session_state.get(NAVIGATION_KEY)
    if query is None:
        return
    if current_url_path == RUN_DETAIL_PATH:
        del st.session_state[NAVIGATION_KEY]
        return
    st.switch_page(RUN_DETAIL_PAGE, query_params=query)


@st.cache_data(max_entries=16, show_spinner=False)
def image_names(annotations, modified_ns):
    return overlay.image_paths_by_id(annotations)


def mtime_ns(path):
    """The file's modification time, part of a cache key (None when it cannot be read: the
    reader then says what is wrong)."""
    try:
        return Path(str(path)).expanduser().stat().st_mtime_ns
    except (OSError, ValueError):
        return None


@st.cache_data(max_entries=16, show_spinner=False)
def ground_truth(annotations, modified_ns):
    """Labelled people per image of a COCO file (cached per file and modification time)."""
    return overlay.read_ground_truth(annotations)


@st.cache_data(max_entries=32, show_spinner=False)
def scored_detections(results_file, modified_ns):
    """Detections with their scores per image of a results.json (cached)."""
    return overlay.read_detections(results_file)


@st.cache_data(max_entries=128, show_spinner=False)
def truth_picture(images_dir, file_name, annotations, results_file, stamps, image_id, min_score):
    """(RGB picture, OKS per person) of one image: ground truth against one result's prediction."""
    gt = ground_truth(annotations, stamps[0]).get(image_id, [])
    found = scored_detections(results_file, stamps[1]).get(image_id, [])
    return overlay.truth_and_prediction_image(images_dir, file_name, gt, found, min_score)


def result_file(run, stage_id, name):
    """Path of one named artifact of a result's stage in a run (None when it has none)."""
    art = next((a for a in run["artifacts"] if a["stage_id"] == stage_id and a["name"] == name), None)
    return jobs.artifact_path(art["id"]) if art else None


def keypoint_floor(run, stage_id):
    """The inference spec's heatmap threshold of an evaluate stage: the confidence below which a
    predicted keypoint is not drawn (the decoder would not have used it either)."""
    stage = next((s for s in run["stages"] if s["id"] == stage_id), None)
    spec = ((stage or {}).get("params") or {}).get("infer_spec") or {}
    return float(spec.get("heatmap_threshold", 0.1))


LEGEND = ("green: ground truth · magenta: prediction (keypoints above the inference spec's confidence "
          "floor of {floor:g}) · red rings: labelled keypoints a found person lost · OKS per person "
          "(1 = exact, 0 = missed)")


def truth_gallery(run, row, stage_id, count, worst=False, columns=2):
    """Pictures of one result: the images with the most annotated people, or (worst=True) the
    images where its mean OKS is lowest; GT and prediction drawn in two colours."""
    results_path = result_file(run, stage_id, "results.json")
    if results_path is None:
        raise BpnetError("this result has no results.json artifact (detections) to draw")
    annotations = row["annotations"]
    stamps = (mtime_ns(annotations), mtime_ns(results_path))
    gt = ground_truth(annotations, stamps[0])
    if not gt:
        st.caption("The evaluation images have no annotated people to compare with.")
        return
    names = image_names(annotations, stamps[0])
    if worst:
        found = scored_detections(results_path, stamps[1])
        chosen = [i for i, _ in overlay.worst_images(gt, found, count)]
    else:
        chosen = overlay.images_with_annotated_people(gt, count)
    floor = keypoint_floor(run, stage_id)
    slots = st.columns(columns)   # large pictures: small ones hide what went wrong
    for n, image_id in enumerate(chosen):
        col = slots[n % columns]
        picture, scores = truth_picture(row["images"], names[image_id], annotations, str(results_path), stamps,
                                        image_id, floor)
        col.image(picture, caption=f"{names[image_id]} · {len(scores)} annotated · mean OKS "
                                   f"{sum(scores) / len(scores):.2f}")
    st.caption(LEGEND.format(floor=floor))


@st.cache_data(max_entries=16, show_spinner=False)
def sample_maps(path, modified_ns):
    return overlay.read_sample_maps(path)


def map_floors(run, stage_id):
    """(heatmap floor, PAF floor) of the result's inference spec: below these the decoder does
    not take a peak or a connection, so a labelled point below them is lost."""
    stage = next((s for s in run["stages"] if s["id"] == stage_id), None)
    spec = ((stage or {}).get("params") or {}).get("infer_spec") or {}
    return float(spec.get("heatmap_threshold", 0.1)), float(spec.get("paf_threshold", 0.05))


def map_controls(key):
    """(kind, channel, sample index) chosen by the user for the heatmap/PAF overlays."""
    from bpnet.skeleton import load_skeleton

    skeleton = load_skeleton()
    c1, c2, c3 = st.columns([1, 2, 1])
    kind = c1.radio("Map", ["part", "limb"], horizontal=True, key=f"{key}-kind",
                    format_func={"part": "heatmap (part)", "limb": "PAF (limb)"}.get)
    if kind == "part":
        channel = c2.selectbox("Part", range(skeleton.num_parts), format_func=lambda i: skeleton.parts[i],
                               key=f"{key}-part")
    else:
        channel = c2.selectbox("Limb", range(len(skeleton.limbs)), key=f"{key}-limb",
                               format_func=lambda i: " → ".join(skeleton.parts[p] for p in skeleton.limbs[i]))
    index = c3.selectbox("Image", range(3), format_func=lambda i: f"image {i + 1}", key=f"{key}-image")
    return kind, channel, index


def map_view(run, row, stage_id, kind, channel, index):
    """One result's map of the chosen part or limb on the chosen sample image (or why not)."""
    path = result_file(run, stage_id, "sample_maps.npz")
    if path is None:
        st.caption("No sample maps: this result was evaluated before the evaluate stage saved the network's "
                   "outputs (sample_maps.npz); re-run it to get them.")
        return
    samples = sample_maps(str(path), mtime_ns(path))
    if not samples:
        st.caption("No sample maps (the evaluation images have no annotated people).")
        return
    sample = samples[min(index, len(samples) - 1)]
    gt = ground_truth(row["annotations"], mtime_ns(row["annotations"])).get(sample["image_id"], [])
    heat_floor, paf_floor = map_floors(run, stage_id)
    floor = heat_floor if kind == "part" else paf_floor
    picture, lost = overlay.map_picture(row["images"], sample, gt, channel, kind, floor)
    st.image(picture, caption=f"{sample['file_name']} · {lost} labelled point(s) below the "
                              f"{'heatmap' if kind == 'part' else 'PAF'} threshold {floor:g} (red: lost)")
