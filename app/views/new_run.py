"""New run: pick data, base model, resolutions, stages, prune thresholds and precisions; see what
the sweep will cost before submitting. Every field is validated as it changes (no form submit)."""

import json
from pathlib import Path

import streamlit as st
import yaml

from app import forms, jobs, present
from app.html_table import html_table
from app.widgets import mtime_ns
from app.views import explorer_section
from bpnet.errors import BpnetError

TRAIN_TEMPLATE = forms.ROOT / "specs" / "train_small.yaml"
DEFAULTS = forms.default_new_run_form()   # what the widgets start from (the pretrained default run)
PREVIEW_TTL_S = 10
IMPORT_POLL_S = 5   # how often a pending import for the pruning preview is looked at


# `modified_ns` is part of the cache key on purpose (Streamlit leaves `_`-named arguments out of
# it), so an edited file is read again.
@st.cache_data(show_spinner="checking the dataset…", max_entries=32)
def inspect_dataset(annotations, images, bundled, modified_ns):
    """(DatasetInfo, None) or (None, message); cached per path and modification time because a
    real COCO annotations file takes seconds to parse."""
    try:
        return forms.inspect_dataset(annotations, images, bundled), None
    except BpnetError as err:
        return None, str(err)


@st.cache_data(show_spinner="computing the dataset statistics…", max_entries=16)
def dataset_statistics(annotations, modified_ns):
    """(statistics, None) or (None, message) of a COCO file (pure, but seconds on a real COCO file)."""
    from bpnet.guide.dataset_stats import dataset_stats_file

    try:
        return dataset_stats_file(annotations), None
    except BpnetError as err:
        return None, str(err)


@st.cache_data(ttl=PREVIEW_TTL_S, show_spinner="previewing the sweep…", max_entries=16)
def preview(spec_json):
    try:
        return jobs.preview_run(json.loads(spec_json)), None
    except BpnetError as err:
        return None, str(err)


@st.cache_data(ttl=30, show_spinner=False)
def trained_models():
    try:
        return jobs.trained_models()
    except BpnetError:
        return []


@st.cache_data(show_spinner="reading the base model's weights…", max_entries=16)
def pruning_dry_run(model, modified_ns, thresholds, prune_json):
    try:
        return jobs.preview_prune(model, thresholds, json.loads(prune_json)), None
    except BpnetError as err:
        return None, str(err)


@st.cache_data(ttl=PREVIEW_TTL_S, show_spinner=False, max_entries=16)
def preview_base_model(spec_json):
    """(where the prune preview reads the base model, None) or (None, message); cached briefly
    because it fingerprints the model file like the preview does."""
    try:
        return jobs.preview_base_model(json.loads(spec_json)), None
    except BpnetError as err:
        return None, str(err)


def prune_preview(spec):
    """Parameters each threshold keeps on the chosen base model, before anything is submitted."""
    chosen = tuple(spec.get("prune_thresholds") or ())
    if not chosen:
        return
    if not spec.get("model"):
        st.caption("What each threshold keeps is shown here once the base model exists (an existing or "
                   "pretrained model); a model trained by this run is measured after training.")
        return
    base, error = preview_base_model(json.dumps(spec, sort_keys=True))
    if error:
        st.warning(f"No pruning preview: {error}", icon=":material/warning:")
        return
    if base["path"] is None:
        import_for_preview(spec, base["importing"])
        return
    model = str(base["path"])
    grid = tuple(sorted(set(present.PRUNE_GRID) | set(chosen)))
    rows, error = pruning_dry_run(model, mtime_ns(model), grid,
                                  json.dumps(spec.get("prune") or {}, sort_keys=True))
    if error:
        st.warning(f"No pruning preview: {error}", icon=":material/warning:")
        return
    useless = [r["threshold"] for r in rows if r["threshold"] in chosen and r["threshold"] not in
               present.useful_thresholds(rows)]
    useful = present.useful_thresholds(rows)
    imported = Path(model).resolve() != Path(str(spec["model"])).expanduser().resolve()
    with st.expander("Parameters each prune threshold keeps on this base model (dry run of the pruning "
                     "decision on its weights" + (", as imported by the run's first stage)" if imported else ")"),
                     expanded=bool(useless)):
        st.html(html_table(present.prune_preview_rows(rows, chosen)))
    if useless:
        hint = f"; the lowest that removes parameters is {useful[0]:g}" if useful else ""
        st.warning(f"Threshold(s) {', '.join(f'{t:g}' for t in useless)} prune nothing on this model{hint}.",
                   icon=":material/content_cut:")


def import_for_preview(spec, importing):
    """A pretrained .tflite/.pb base is measured once the run's first stage has rebuilt it in Keras:
    offer to run that stage now (the sweep reuses it), or follow the import under way."""
    name = Path(str(spec["model"])).name
    if importing and importing["status"] in ("queued", "running"):
        @st.fragment(run_every=IMPORT_POLL_S)
        def follow_import():
            try:
                current = jobs.preview_base_model(spec)
            except BpnetError as err:
                st.warning(f"No pruning preview: {err}", icon=":material/warning:")
                return
            if current["path"] is not None or not current["importing"] or \
                    current["importing"]["status"] not in ("queued", "running"):
                preview_base_model.clear()
                st.rerun()   # imported (or failed): the whole preview redraws
            state = current["importing"]
            done = f" ({100 * (state['fraction'] or 0):.0f}%)" if state["status"] == "running" else " (waiting for a worker)"
            st.info(f"Importing `{name}` for the pruning preview{done}; the table of what each threshold keeps "
                    "appears here when it is done.", icon=":material/hourglass:")
            st.page_link("views/run_detail.py", label="Follow the import", icon=":material/arrow_forward:",
                         query_params={"run": state["run_id"]})
        follow_import()
        return
    if importing and importing["status"] == "failed":
        st.warning(f"Importing `{name}` failed: {importing['error'] or 'see its run'}.", icon=":material/error:")
    st.caption(f"What each threshold keeps is measured on Keras weights: `{name}` is rebuilt in Keras by the "
               "run's first stage (one to a few minutes, once: every later run reuses it).")
    if st.button("Import it now to see what each threshold keeps", key="import_for_preview",
                 icon=":material/download:", help="queues only the import stage; the sweep you submit "
                 "afterwards reuses it"):
        try:
            jobs.import_base_model(spec)
        except BpnetError as err:
            st.error(f"Import not queued: {err}", icon=":material/block:")
        else:
            preview_base_model.clear()
            st.rerun()


def show_error(slot, errors, key):
    if key in errors:
        slot.error(errors[key], icon=":material/block:")


st.title("New run")
submitted_slot = st.container()   # "submitted" goes at the top, where the user looks after clicking
st.caption("A run trains (or reuses) a base model, prunes it at every threshold, retrains, exports at "
           "every resolution and precision and evaluates each result. Stages already computed by any "
           "run are reused.")
explorer_section.prefilled_export(jobs)   # an explorer point's export run, when one was chosen

# ---------------------------------------------------------------- dataset
st.subheader("1 · Dataset")
source = st.radio("Dataset", ["bundled", "path"], horizontal=True, key="dataset",
                  format_func={"bundled": "bundled sample (coco-mini, 80 images)",
                               "path": "a COCO person-keypoints dataset on this machine"}.get)
annotations = images = eval_annotations = eval_images = None
if source == "bundled":
    info, _ = inspect_dataset(str(forms.BUNDLED_ANNOTATIONS), str(forms.BUNDLED_IMAGES), True,
                              mtime_ns(forms.BUNDLED_ANNOTATIONS))   # a problem: said under the widget
    st.warning("The bundled sample is used for training **and** evaluation: its AP is measured on the "
               "training images, so it is optimistic (overfit). It shows the workflow and relative "
               "trade-offs, not real-world accuracy.", icon=":material/warning:")
else:
    annotations = st.text_input("Annotations file (COCO person_keypoints_*.json)", key="annotations",
                                placeholder="/data/coco/annotations/person_keypoints_train2017.json")
    images = st.text_input("Images folder (empty: the COCO layout's folder next to annotations/)",
                           key="images", placeholder="/data/coco/train2017")
    info, _ = inspect_dataset(annotations, images, False, mtime_ns(annotations))
    st.caption("Evaluate on held-out images for AP that means something (e.g. COCO val2017); "
               "empty = evaluate on the training data (optimistic).")
    c1, c2 = st.columns(2)
    eval_annotations = c1.text_input("Evaluation annotations (optional)", key="eval_annotations",
                                     placeholder="/data/coco/annotations/person_keypoints_val2017.json")
    eval_images = c2.text_input("Evaluation images folder (optional)", key="eval_images")
eval_slot = st.empty()
dataset_slot = st.empty()
stats = None
advice = present.static_advice()
if info is not None:
    dataset_slot.success(f"{info.num_images} images · {info.num_people_with_keypoints} people with keypoints "
                         f"in {info.num_images_with_keypoints} images · images from `{info.images}`", icon=":material/check_circle:")
    stats, stats_error = dataset_statistics(str(info.annotations), mtime_ns(info.annotations))
    if stats_error:
        st.warning(f"No statistics: {stats_error}", icon=":material/warning:")
if stats is not None:
    from bpnet.guide.recommend import recommend_resolution

    resolution_advice = recommend_resolution(stats)
    with st.expander("Dataset statistics and the recommendations they lead to", expanded=True):
        st.html(html_table(present.stats_rows(stats)))
        h, w = resolution_advice.value
        st.info(f"**Recommended input resolution: {h}×{w}**\n" +
                "\n".join(f"- {reason}" for reason in resolution_advice.reasons), icon=":material/lightbulb:")

# ---------------------------------------------------------------- base model
st.subheader("2 · Base model")
base = st.radio("Base model", ["pretrained", "train", "existing"], horizontal=True, key="base",
                format_func={"pretrained": "start from a pretrained model", "train": "train from scratch",
                             "existing": "an existing trained model"}.get)
existing_model = None
if base == "pretrained":
    train_epochs, stages = 1, 2
    st.caption(f"**{forms.PRETRAINED_LABEL}** (`{forms.PRETRAINED_MODEL.name}`, 6 stages). The first run imports "
               "it into Keras with a parity check against TFLite (one to a few minutes), later runs reuse it. It is "
               "retrained briefly after pruning at its own 0..255 BGR input convention (its model card). "
               "The bundled COCO sample images are from COCO train2017 and may have been in its training "
               "data: AP on them is optimistic.")
elif base == "train":
    c1, c2 = st.columns(2)
    train_epochs = c1.number_input("Training epochs", min_value=1, max_value=forms.MAX_EPOCHS, value=4, key="train_epochs",
                                   help="epochs of the base model on the chosen data (small CPU spec: "
                                        "narrow backbone, 128×128 training input)")
    stages = c2.slider("Stages", min_value=forms.MIN_STAGES, max_value=forms.MAX_STAGES,
                       value=int(advice["model.stages"].value), key="stages",
                       help=present.advice_text(advice["model.stages"]))
    st.caption(f"Stages: {present.advice_text(advice['model.stages'])}")
else:
    train_epochs, stages = 1, 2
    models = trained_models()
    choice = st.selectbox("Trained model", [m["path"] for m in models] + ["(a path)"], key="existing_choice",
                          format_func=lambda p: next((m["label"] for m in models if m["path"] == p), p))
    if choice == "(a path)":
        existing_model = st.text_input("Path of a Keras model (.hdf5)", key="existing_path").strip() or None
    else:
        existing_model = choice
    st.caption("The model keeps its own stages; it is retrained with the small CPU training spec.")
base_slot = st.empty()

# ---------------------------------------------------------------- sweep
st.subheader("3 · Sweep or search")
kind = st.radio("Run kind", list(forms.RUN_KINDS), horizontal=True, key="kind",
                format_func={"sweep": "sweep: prune at the thresholds I give",
                             "search": "AP-budget search: the smallest model within my AP budget",
                             "explore": "explore: every stage exit × resolution × precision of the model"}.get)
presets = st.pills("Input resolutions (H×W)", list(forms.RESOLUTION_PRESETS), selection_mode="multi",
                   default=["288×384"], key="presets",
                   help="224×320 → 288×384 gains about 7-10% AP on medium people; 320×448 another 7-10%")
if stats is not None:
    st.caption(f"Recommended for this dataset: {resolution_advice.value[0]}×{resolution_advice.value[1]} "
               f"(see the statistics above).")
use_custom = st.checkbox("add a custom resolution", key="use_custom")
custom_h = custom_w = None
if use_custom:
    c1, c2 = st.columns(2)
    custom_h = c1.number_input("H (multiple of 8)", min_value=1, max_value=4096, value=256, step=8, key="custom_h")
    custom_w = c2.number_input("W (multiple of 8)", min_value=1, max_value=4096, value=320, step=8, key="custom_w")
resolution_slot = st.empty()
stages_slot = st.empty()
budget_ap, objective, max_iters = DEFAULTS["budget_ap"], DEFAULTS["objective"], DEFAULTS["max_iters"]
thresholds, stage_exits = "", ""
if kind == "search":
    c1, c2, c3 = st.columns(3)
    budget_ap = c1.number_input("AP budget (largest AP drop, points)", min_value=0.0, max_value=forms.MAX_AP_DROP_POINTS,
                                value=DEFAULTS["budget_ap"], step=0.5, key="budget_ap",
                                help="the search keeps only models within this many AP points of the unpruned one")
    objective = c2.selectbox("Objective (what to make small)", list(forms.SEARCH_OBJECTIVES), key="objective",
                             format_func={"params": "parameters",
                                          "latency": "latency (FP32, first resolution)"}.get)
    max_iters = c3.number_input("Search iterations (limit)", min_value=1, max_value=forms.MAX_SEARCH_ITERS,
                                value=DEFAULTS["max_iters"], key="max_iters",
                                help="each iteration prunes, retrains and evaluates one threshold")
    st.caption("The search tries 0.05 first, then 1.0, then narrows the bracket around your budget from the "
               "measured AP of each retrained model; it never picks a model outside the budget.")
elif kind == "explore":
    stage_exits = st.text_input("Stage exits (empty = every stage of the model)", key="stage_exits",
                                help="the model truncated after stage k, exported and evaluated at each "
                                     "resolution and precision, with the oracle ceiling; no training")
else:
    thresholds = st.text_input("Prune thresholds (several → a sweep)", key="thresholds",
                               value=DEFAULTS["thresholds"] if base == "pretrained" else "0.1",
                               help=present.advice_text(advice["prune.threshold"]))
    st.caption(f"Prune threshold: {present.advice_text(advice['prune.threshold'])}")
thresholds_slot = st.empty()
precisions = st.pills("Precisions", list(forms.PRECISIONS), selection_mode="multi",
                      default=["FP32", "INT8"] if base == "pretrained" else ["FP32"],
                      key="precisions", help=present.advice_text(advice["export.data_type"]))
st.caption(f"Precision: {present.advice_text(advice['export.data_type'])}")
precisions_slot = st.empty()
gate_max_ap_drop = DEFAULTS["gate_max_ap_drop"]
if precisions and set(precisions) & {"INT8", "FP16"}:
    gate_max_ap_drop = st.number_input(
        "INT8/FP16 gate: largest AP drop (points)", min_value=0.0, max_value=forms.MAX_AP_DROP_POINTS,
        value=DEFAULTS["gate_max_ap_drop"], step=0.5, key="gate_max_ap_drop",
        help="every INT8/FP16 result is compared with its float parent on the same evaluation; a larger "
             "AP drop, or outputs that no longer follow the float model's, marks it failed with remedies")
gate_slot = st.empty()
retrain_epochs = st.number_input("Retrain epochs (after pruning; 0 = evaluate pruned models as they are)",
                                 min_value=0, max_value=forms.MAX_EPOCHS, key="retrain_epochs",
                                 value=DEFAULTS["retrain_epochs"] if base == "pretrained" else 2)
retrain_slot = st.empty()
cal_images = cal_batches = cal_batch_size = None
if precisions and "INT8" in precisions:
    st.markdown("**INT8 calibration** — needs at least batch size × batches images (seed: about 10-20% "
                "of the training data, like the deployment's images)")
    default_cal = str(info.images) if info is not None else ""
    cal_images = st.text_input("Calibration images folder", value=default_cal, key="cal_images")
    c1, c2 = st.columns(2)
    cal_batch_size = c1.number_input("Calibration batch size", min_value=1, max_value=forms.MAX_CALIBRATION_BATCH_SIZE,
                                     value=DEFAULTS["cal_batch_size"], key="cal_batch_size")
    cal_batches = c2.number_input("Calibration batches", min_value=1, max_value=forms.MAX_CALIBRATION_BATCHES,
                                  value=DEFAULTS["cal_batches"], key="cal_batches")
    if stats is not None:
        from bpnet.guide.recommend import recommend_calibration

        try:
            st.caption(f"Calibration images: "
                       f"{present.advice_text(recommend_calibration(stats, int(cal_batch_size), int(cal_batches)))}")
        except BpnetError:
            pass   # the field error below says what is wrong
calibration_slot = st.empty()
int8_max_drop = None
if precisions and "INT8" in precisions and kind != "explore":
    if st.toggle("INT8 accuracy control", key="accuracy_control",
                 help="compare every calibrator on these images, then return the layers that cost most AP to "
                      "float until the INT8 model is within the budget of the FP32 one (docs/int8.md); one "
                      "INT8 stage that evaluates several candidate models, so it takes several times longer"):
        int8_max_drop = st.number_input("INT8 accuracy control: largest AP drop (points)", min_value=0.0,
                                        max_value=forms.MAX_AP_DROP_POINTS, value=forms.DEFAULT_INT8_MAX_DROP,
                                        step=0.5, key="int8_max_drop")
int8_max_drop_slot = st.empty()
name = st.text_input("Run name (optional)", key="name")

# ---------------------------------------------------------------- validation, preview, submit
form = {"dataset": source, "base": base, "existing_model": existing_model, "train_epochs": train_epochs,
        "presets": presets or [], "use_custom": use_custom, "custom_h": custom_h, "custom_w": custom_w,
        "stages": stages, "thresholds": thresholds, "precisions": precisions or [],
        "cal_images": cal_images, "cal_batches": cal_batches, "cal_batch_size": cal_batch_size,
        "retrain_epochs": retrain_epochs, "name": name, "eval_annotations": eval_annotations,
        "eval_images": eval_images, "kind": kind, "budget_ap": budget_ap, "objective": objective,
        "max_iters": max_iters, "gate_max_ap_drop": gate_max_ap_drop, "stage_exits": stage_exits,
        "int8_max_drop": int8_max_drop, "annotations": annotations, "images": images}
spec, errors = jobs.new_run_spec(form, info, yaml.safe_load(TRAIN_TEMPLATE.read_text()))
for slot, key in ((dataset_slot, "dataset"), (eval_slot, "eval_dataset"), (base_slot, "base"),
                  (base_slot, "train_epochs"), (base_slot, "kind"),
                  (resolution_slot, "resolution"),
                  (stages_slot, "stages"), (thresholds_slot, "thresholds"), (precisions_slot, "precisions"),
                  (retrain_slot, "retrain_epochs"), (calibration_slot, "calibration"), (gate_slot, "gate"),
                  (thresholds_slot, "budget_ap"), (thresholds_slot, "max_iters"), (thresholds_slot, "objective"),
                  (thresholds_slot, "stage_exits"), (int8_max_drop_slot, "int8_max_drop")):
    show_error(slot, errors, key)

st.subheader("4 · Preview")
if errors:
    spec = None
    st.info(f"Fix the {len(errors)} problem(s) above to see the preview and submit.", icon=":material/pan_tool:")
else:
    result, preview_error = preview(json.dumps(spec, sort_keys=True))
    if preview_error:
        st.error(preview_error, icon=":material/block:")
        spec = None
    else:
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("results", result["num_results"], help="evaluated models: unpruned + one per threshold, "
                                                         "each at every resolution and precision")
        c2.metric("stages to compute", result["to_compute"])
        c3.metric("stages cached", len(result["cached"]))
        c4.metric("time estimate", jobs.format_duration(result["estimate_s"]) if result["estimate_s"] is not None
                  else "unknown")
        st.caption(f"Estimate: {result['estimate_basis']}.")
        if result["estimate_stages"]:
            with st.expander("Cost per stage (from past stages on the same worker kind)"):
                st.html(html_table(jobs.cost_rows(result["estimate_stages"])))
        if result["cached"]:
            with st.expander(f"{len(result['cached'])} stage(s) already computed, reused"):
                st.write("\n".join(f"- {label}" for label in result["cached"]))
        prune_preview(spec)
        names = [f"{w['id']} ({', '.join(w['queues'])})" for w in result["workers"]]
        if names:
            st.success("Workers that can run it: " + "; ".join(names), icon=":material/dns:")
        for warning in result["warnings"]:
            st.warning(warning, icon=":material/warning:")

if st.button("Submit run", type="primary", disabled=spec is None, key="submit"):
    try:
        run_id = jobs.submit_run(spec)
    except BpnetError as err:
        st.error(f"Not submitted: {err}", icon=":material/block:")
    else:
        st.session_state["last_submitted"] = run_id
        preview.clear()
if st.session_state.get("last_submitted"):
    run_id = st.session_state["last_submitted"]
    with submitted_slot:
        st.success(f"Run `{run_id}` submitted.", icon=":material/rocket_launch:")
        c1, c2, _ = st.columns([1, 1, 3])
        with c1:
            st.page_link("views/run_detail.py", label="Open the run", icon=":material/arrow_forward:",
                         query_params={"run": run_id})
        with c2:
            st.page_link("views/runs.py", label="See all runs", icon=":material/list:")
