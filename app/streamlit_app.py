"""saekit workbench: the Streamlit router. Pages live in `pages/`, shared loaders and plots in `components/`.

Started by `saekit app [RUNS_DIR]`, or directly:

    streamlit run app/streamlit_app.py --server.address 127.0.0.1 -- --runs-dir runs
    SAEKIT_RUNS_DIR=runs streamlit run app/streamlit_app.py
"""

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
# `streamlit run` puts the script's directory on sys.path but AppTest does not; pages import `components`.
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

import streamlit as st  # noqa: E402
from components import state  # noqa: E402

st.set_page_config(page_title="saekit workbench", layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Overview", default=True),
    st.Page("pages/latents.py", title="Latents"),
    st.Page("pages/steering.py", title="Steering"),
    st.Page("pages/dead_latents.py", title="Dead latents"),
    st.Page("pages/compare.py", title="Compare"),
]

state.sidebar_run_picker()
navigation = st.navigation(PAGES)
navigation.run()
