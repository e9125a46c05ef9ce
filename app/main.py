"""BPNet Studio dashboard: `streamlit run app/main.py` (or `bpnet-studio up`).

The entry script only sets up the page and the navigation; each page lives in `app/views/` and its
logic in the helper modules (`forms`, `charts`, `state`, `overlay`). Nothing here imports
TensorFlow, so the dashboard starts in about a second and stays responsive while workers train.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:   # `streamlit run app/main.py` puts only app/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app.widgets import follow_navigation  # noqa: E402

# Not "pages/": Streamlit runs a folder of that name as a legacy multipage app on the first visit
# after the server starts (before st.navigation has run once), bypassing this entry script.
PAGES_DIR = Path(__file__).resolve().parent / "views"

# A local icon: a ":material/...:" page icon makes every page load fetch it from Google's font
# servers, which an offline or private deployment cannot reach.
st.set_page_config(page_title="BPNet Studio", page_icon=str(Path(__file__).resolve().parent / "static" / "favicon.png"),
                   layout="wide")

RUNS = st.Page(PAGES_DIR / "runs.py", title="Runs", icon=":material/list:", url_path="runs")


def home():
    """The root address opens Runs at its own path, so `/runs` and `/` are the same page (the
    default page of st.navigation is served only at `/`; a visible default would make `/runs`
    "page not found")."""
    st.switch_page(RUNS, query_params=st.query_params.to_dict())


pages = [
    st.Page(home, title="Home", url_path="home", default=True, visibility="hidden"),
    st.Page(PAGES_DIR / "new_run.py", title="New run", icon=":material/add_circle:", url_path="new"),
    RUNS,
    st.Page(PAGES_DIR / "run_detail.py", title="Run detail", icon=":material/account_tree:", url_path="run"),
    st.Page(PAGES_DIR / "compare.py", title="Compare", icon=":material/scatter_plot:", url_path="compare"),
    st.Page(PAGES_DIR / "workers.py", title="Workers", icon=":material/dns:", url_path="workers"),
]
st.sidebar.caption("BPNet Studio · guided optimization of BodyPoseNet: train → prune → retrain → "
                   "INT8 → export → evaluate")
page = st.navigation(pages)
follow_navigation(page.url_path)   # a click's page switch that a refresh replaced is repeated
page.run()
