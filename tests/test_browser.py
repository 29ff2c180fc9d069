"""End to end in a real browser: headless Debian Chromium driven by Playwright opens the app, runs
load -> score -> tune -> prune -> compare -> export, checks what a user sees, and saves screenshots
to screenshots/ (ignored by git) for a human to look at."""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("BIP_SCREENSHOTS", ROOT / "screenshots"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT = 120_000  # ms, for steps that compute


def _chromium() -> str:
    """Debian's chromium (installed on demand when we are root and apt-get exists), or skip."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=300)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, capture_output=True,
                           timeout=600)
        except (subprocess.SubprocessError, OSError) as err:
            pytest.skip(f"chromium is not installed and `apt-get install chromium` failed: {err}")
        path = shutil.which("chromium")
        if path:
            return path
    pytest.skip("chromium is not installed and cannot be installed here (run `make browser` as root)")


@pytest.fixture(scope="module")
def browser_page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                   "(pip install -r requirements-dev.txt)")
    executable = _chromium()
    from app_server import launch

    url, studio, demo = launch()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 960})
        page.set_default_timeout(TIMEOUT)
        page.goto(url)
        yield page, url, studio
        browser.close()
    demo.close()


def shot(page, name):
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def set_number(page, elem_id, value):
    """Type into a slider's number box (Gradio updates the slider on blur)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def test_full_flow_in_a_browser(browser_page):
    page, _, _ = browser_page
    page.wait_for_selector("#bip-model-card")
    assert page.get_by_text("BIP Studio").first.is_visible()
    shot(page, "01_start")

    # 1 · Model
    page.get_by_role("button", name="Load model").click()
    page.wait_for_selector("#bip-model-card .bip-tiles")
    assert "134.5M" in page.locator("#bip-model-card").inner_text()
    shot(page, "02_model_loaded")

    # 2 · Score & tune: a small calibration run keeps the test quick.
    page.get_by_role("tab", name="2 · Score & tune").click()
    set_number(page, "bip-samples", 8)
    page.locator("#bip-score-btn").click()
    page.wait_for_timeout(500)
    page.locator("#bip-score-btn").click()  # a second click while scoring runs: refused with a message
    page.wait_for_selector("text=Scoring is still running")
    shot(page, "03a_second_click_refused")
    page.wait_for_selector("#bip-readout .bip-bigs")
    page.wait_for_selector("#bip-heatmap .js-plotly-plot")
    readout = page.locator("#bip-readout").inner_text()
    assert "of attention + MLP parameters removed" in readout and "20.0%" in readout
    shot(page, "03_scored_uniform20")

    page.get_by_role("button", name="Paper-style uniform 50%").click()
    page.wait_for_function("document.querySelector('#bip-readout').innerText.includes('50.0%')")
    shot(page, "04_uniform50")

    page.get_by_role("button", name="Global (energy) 20%", exact=True).click()
    page.wait_for_function("document.querySelector('#bip-readout').innerText.includes('global')")
    page.get_by_text("Per-layer ratios (sliders)").click()
    rows = page.locator("#bip-layer-editor .bip-layer-grid .bip-layer-row")
    rows.first.wait_for()
    assert rows.count() == 30
    # Set layer 0's attention with its slider (one unit removed): the plan becomes manual.
    box = rows.first.locator(".bip-att-slider input[type=number]")
    box.fill("1")
    box.press("Enter")
    box.blur()
    page.wait_for_function("document.querySelector('#bip-readout').innerText.includes('manual')")
    shot(page, "05_layer_editor_manual")
    # A position the plan cannot take (no attention left in layer 0): a warning, and the slider snaps back.
    box = rows.first.locator(".bip-att-slider input[type=number]")
    box.fill("3")
    box.press("Enter")
    box.blur()
    page.wait_for_selector("text=removes all 3 attention units")
    page.wait_for_function("document.querySelector('#bip-layer-editor .bip-att-slider input[type=number]').value == '1'")
    shot(page, "05b_layer_editor_refused")

    # Another method: its scores join the first ones; the heatmap can show either.
    page.locator("#bip-method input").click()
    page.get_by_role("option", name="Magnitude").click()
    page.locator("#bip-score-btn").click()
    page.wait_for_selector("text=Magnitude scored")
    page.wait_for_function("document.querySelector('#bip-heatmap').innerText.includes('Scores: Magnitude')")
    page.locator("#bip-shown input").click()
    assert page.get_by_role("option").count() == 2
    page.get_by_role("option", name="LLM-BIP", exact=False).click()
    page.wait_for_function("document.querySelector('#bip-heatmap').innerText.includes('Scores: LLM-BIP')")
    shot(page, "05c_two_methods")

    # 3 · Prune
    page.get_by_role("tab", name="3 · Prune").click()
    page.locator("#bip-prune-btn").click()
    page.wait_for_function("document.querySelector('#bip-prune-table').innerText.includes('MLP channels (all layers)')")
    page.wait_for_selector("text=Compare it with the original")
    shot(page, "06_pruned")

    # 4 · Compare: chat, an empty prompt, quick perplexity.
    page.get_by_role("tab", name="4 · Compare").click()
    page.locator("#bip-prompt textarea").fill("What is the capital of France?")
    page.locator("#bip-send").click()
    page.wait_for_function("document.querySelector('#bip-chat-original').innerText.includes('Paris')")
    page.wait_for_function("document.querySelector('#bip-chat-info').innerText.startsWith('Done')")
    page.locator("#bip-send").click()  # the prompt box is empty now
    page.wait_for_selector("text=Type a prompt first")
    shot(page, "07_chat_and_empty_prompt")
    set_number(page, "bip-ppl-windows", 4)
    page.locator("#bip-ppl-btn").click()
    page.wait_for_function("document.querySelector('#bip-results').innerText.split('perplexity wiki-bb test (4 x 128)').length > 2")
    assert page.locator("#bip-results").inner_text().count("perplexity wiki-bb test") == 2
    shot(page, "08_perplexity")

    # 5 · Export
    page.get_by_role("tab", name="5 · Export").click()
    page.locator("#bip-export-btn").click()
    page.wait_for_selector("#bip-export-file a")
    assert ".zip" in page.locator("#bip-export-file").inner_text()
    shot(page, "09_export")


def test_closing_the_tab_frees_the_session(browser_page):
    page, url, studio = browser_page
    tab = page.context.browser.new_page()
    tab.goto(url)
    tab.get_by_role("button", name="Load model").click()
    tab.wait_for_selector("#bip-model-card .bip-tiles")
    sessions = [s for s in list(studio.registry._sessions.values()) if s.loaded is not None]
    before = len(studio.registry)
    tab.close()  # the heartbeat stops: Gradio runs the app's unload handler
    deadline = time.time() + 60
    while len(studio.registry) >= before and time.time() < deadline:
        time.sleep(0.2)
    assert len(studio.registry) == before - 1
    assert sum(s.loaded is None for s in sessions) >= 1  # its model reference was dropped
