"""The workbench in a real headless browser: `saekit app`'s exact command serves the fixture runs on
127.0.0.1, Debian's chromium (driven by the playwright package, never `playwright install`) opens every
page, clicks a row of the latent ranking, runs a steering generation and a coefficient sweep, and saves a
full-page screenshot of each page. Every request the page makes must stay on localhost.

    SAEKIT_SCREENSHOTS=/tmp/shots pytest tests/test_app_browser.py          # screenshots kept there
    SAEKIT_BROWSER_RUNS=runs/demo SAEKIT_SCREENSHOTS=/tmp/shots pytest ...  # on another RUNS_DIR
"""

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from fixtures_run import build_fixture_runs

from saekit.app_launcher import app_command
from saekit.runs import list_runs

CHROMIUM = "/usr/bin/chromium"
SHOTS_ENV = "SAEKIT_SCREENSHOTS"
"""Directory the screenshots are written to (default: the test's temporary directory)."""
RUNS_ENV = "SAEKIT_BROWSER_RUNS"
"""A RUNS_DIR to serve instead of the fixture runs (its first run with an index is opened)."""
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
WAIT_MS = 240_000  # the first steering click loads the model inside the server (minutes on a busy CPU)

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="pip install playwright (see QUARANTINE.md)"
)
if not Path(CHROMIUM).is_file():
    pytest.skip(
        "Debian chromium missing: apt-get install chromium (see QUARANTINE.md)", allow_module_level=True
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, proc: subprocess.Popen, deadline_s: float = 120.0) -> None:
    """Poll /_stcore/health until it answers 'ok' (the server needs seconds to import and bind)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.read().decode().strip() == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.25)  # polling interval, not a synchronisation guess: the loop checks the real state
    raise TimeoutError(f"{url} did not report healthy within {deadline_s:.0f} s")


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    chosen = os.environ.get(RUNS_ENV)
    return Path(chosen) if chosen else build_fixture_runs(tmp_path_factory.getbasetemp() / "saekit_runs")


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get(SHOTS_ENV) or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def server(runs_root, tmp_path_factory):
    port = free_port()
    argv, env, cwd = app_command(runs_root, port=port)
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}/_stcore/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser_page(server, tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    with playwright_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1400, "height": 2200},
        )  # fmt: skip
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        yield page, requests
        context.close()


def open_page(page, title: str) -> None:
    """Click a navigation link and wait for that page's title."""
    page.get_by_role("link", name=title, exact=True).first.click()
    page.get_by_role("heading", name=title if title != "Compare" else "Compare runs", exact=True).wait_for()


def settle(page) -> None:
    """Wait until Streamlit reports no script run in progress (the app root's script-state attribute);
    called after waiting for an element the run draws, so that run has started."""
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()


def screenshot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main block, so the window is grown to the content
    height for the shot (a full-page screenshot alone captures one window)."""
    size = page.viewport_size
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('[data-testid=stMain], section')]"
        ".map(e => e.scrollHeight), document.body.scrollHeight)"
    )
    page.set_viewport_size({"width": size["width"], "height": min(int(height) + 40, 16000)})
    settle(page)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)


def click_table_row(page, table, row: int) -> None:
    """Click the row-selection marker of a `st.dataframe` canvas grid (header and rows are 35 px)."""
    table.scroll_into_view_if_needed()
    box = table.bounding_box()
    page.mouse.click(box["x"] + 14, box["y"] + 35 + 35 * row + 17)


def test_every_page_in_a_real_browser(server, browser_page, runs_root, shots):
    run = next(r for r in list_runs(runs_root) if r.has_index)
    page, requests = browser_page
    shot = lambda name: screenshot(page, shots / f"app-{name}.png")
    page.goto(server)
    page.get_by_role("heading", name="Overview").wait_for()
    page.get_by_label("Run", exact=True).click()  # choose the indexed run in the sidebar
    page.get_by_role("option", name=run.name, exact=True).click()
    page.get_by_role("heading", name=f"Run: {run.name}").wait_for()
    page.get_by_test_id("stDataFrame").first.wait_for()  # the runs table (a canvas grid)
    page.locator(".saekit-settings").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    settle(page)
    shot("overview")

    open_page(page, "Latents")
    page.get_by_role("heading", name="Latent 0").wait_for()
    page.get_by_role("tab", name="Ranking").click()
    ranking = page.get_by_test_id("stDataFrame").first
    ranking.wait_for()
    settle(page)
    click_table_row(page, ranking, 2)
    page.get_by_role("heading", name="Latent 0").wait_for(state="detached")
    assert page.get_by_role("heading", name="Latent ").count() >= 1
    settle(page)
    assert page.locator(".saekit-heatmap").count() > 0
    shot("latents")

    open_page(page, "Steering")
    page.get_by_label("Coefficients (one, or one per latent; boost = coef × max activation)").fill("20")
    page.get_by_role("button", name="Generate").click()
    generations = page.locator(".saekit-generation")
    generations.nth(1).wait_for()
    assert generations.count() == 2
    assert all(text.startswith("From my experience,") for text in generations.all_inner_texts())
    page.get_by_role("button", name="Sweep").click()
    page.locator(".js-plotly-plot").nth(1).wait_for()
    settle(page)
    shot("steering")

    open_page(page, "Dead latents")
    page.get_by_role("heading", name="Per-latent status").wait_for()
    settle(page)
    shot("dead-latents")

    open_page(page, "Compare")
    page.get_by_role("heading", name="Sparsity vs fidelity").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    settle(page)
    shot("compare")

    host = server.split("//", 1)[1]
    outside = [u for u in requests if not u.startswith(("data:", "blob:", "about:")) and host not in u]
    assert requests and not outside, outside[:10]
