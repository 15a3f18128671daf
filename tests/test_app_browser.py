"""The workbench in a real headless browser: `saekit app`'s exact command serves the fixture runs on
127.0.0.1, Debian's chromium (driven by the playwright package, never `playwright install`) opens every
page, picks a latent, runs a steering generation, and saves screenshots under test-artifacts/. Every
request the page makes must stay on localhost.
"""

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from fixtures_run import TOPK_RUN, build_fixture_runs

from saekit.app_launcher import app_command

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
WAIT_MS = 90_000  # the first steering click loads the model inside the server

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
def server(tmp_path_factory):
    runs = build_fixture_runs(tmp_path_factory.getbasetemp() / "saekit_runs")
    port = free_port()
    argv, env, cwd = app_command(runs, port=port)
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


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"app-{name}.png"), full_page=True)


def open_page(page, title: str) -> None:
    """Click a navigation link and wait for that page's title."""
    page.get_by_role("link", name=title, exact=True).first.click()
    page.get_by_role("heading", name=title if title != "Compare" else "Compare runs", exact=True).wait_for()


def test_every_page_in_a_real_browser(server, browser_page):
    page, requests = browser_page
    page.goto(server)
    page.get_by_role("heading", name="Overview").wait_for()
    page.get_by_role("heading", name=f"Run: {TOPK_RUN}").wait_for()
    page.get_by_test_id("stDataFrame").first.wait_for()  # the runs table (a canvas grid)
    page.locator(".js-plotly-plot").first.wait_for()
    screenshot(page, "overview")

    open_page(page, "Latents")
    page.get_by_role("heading", name="Latent 0").wait_for()
    box = page.get_by_label("Latent id")
    box.fill("5")
    box.press("Enter")
    page.get_by_role("heading", name="Latent 5").wait_for()
    assert page.locator(".saekit-heatmap").count() > 0
    screenshot(page, "latents")

    open_page(page, "Steering")
    page.get_by_label("Latents (comma-separated ids)").fill("5")
    page.get_by_label("Coefficients (one, or one per latent; boost = coef × max activation)").fill("20")
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Steered (5×20)").wait_for()
    generations = page.locator(".saekit-generation")
    generations.nth(1).wait_for()
    assert generations.count() == 2
    assert all(text.startswith("From my experience,") for text in generations.all_inner_texts())
    screenshot(page, "steering")

    open_page(page, "Dead latents")
    page.get_by_role("heading", name="Geometry of dead latents").wait_for()
    screenshot(page, "dead-latents")

    open_page(page, "Compare")
    page.get_by_role("heading", name="Sparsity vs fidelity").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    screenshot(page, "compare")

    host = server.split("//", 1)[1]
    outside = [u for u in requests if not u.startswith(("data:", "blob:", "about:")) and host not in u]
    assert requests and not outside, outside[:10]
