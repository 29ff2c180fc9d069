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


OWN_TEXT = "\n\n".join(f"Note {i}: structured pruning removes whole attention heads and MLP channels, so the "
                       f"smaller model stays dense and runs faster on ordinary hardware." for i in range(120))


def press_on_ratio(page, key, times):
    page.locator("#bip-ratio input[type=range]").focus()
    for _ in range(times):
        page.keyboard.press(key)


def removed_share(page) -> float:
    return float(page.locator("#bip-readout .bip-big-value").first.inner_text().rstrip("%"))


def checked_allocation(page):
    return page.evaluate("() => document.querySelector('#bip-allocation input:checked')?.value")


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

    # 2 · Score & tune, on your own calibration text: a small run keeps the test quick.
    page.get_by_role("tab", name="2 · Score & tune").click()
    page.get_by_text("Your own calibration text").click()
    page.locator("#bip-own-text-box textarea").fill(OWN_TEXT)
    page.locator("#bip-own-text-btn").click()
    page.wait_for_selector("#bip-own-text-info >> text=Using your text")
    assert "your own text" in page.locator("#bip-source input").input_value()
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
    assert "your text 8x128" in page.locator("#bip-score-status").inner_text()
    shot(page, "03_scored_uniform20")
    press_on_ratio(page, "ArrowRight", 5)  # the keyboard moves the plan too
    page.wait_for_function("document.querySelector('#bip-readout').innerText.includes('25.0%')")

    page.get_by_role("button", name="Paper-style uniform 50%").click()
    page.wait_for_function("document.querySelector('#bip-readout').innerText.includes('50.0%')")
    shot(page, "04_uniform50")

    page.get_by_role("button", name="Global (energy) 20%", exact=True).click()
    page.wait_for_function("document.querySelector('#bip-readout').innerText.includes('global')")
    # Invalid JSON for a manual plan: refused, and the allocation stays what the plan is.
    page.get_by_text("Plan details and files").click()
    page.locator("#bip-ratios-json textarea").fill("[1, 2")
    page.get_by_role("button", name="Apply as manual plan").click()
    page.wait_for_function("document.querySelector('#bip-readout').innerText.includes('Not applied')")
    assert checked_allocation(page) == "global-energy" and "plan: global-energy" in page.locator("#bip-readout").inner_text()
    page.get_by_text("Per-layer ratios (sliders)").click()
    rows = page.locator("#bip-layer-editor .bip-layer-grid .bip-layer-row:not(.bip-layer-head)")
    rows.first.wait_for()
    assert rows.count() == 30
    # Set layer 0's attention with its slider (one unit removed): the plan becomes manual.
    box = rows.first.locator(".bip-att-slider input[type=number]")
    box.fill("1")
    box.press("Enter")
    box.blur()
    page.wait_for_function("document.querySelector('#bip-readout').innerText.includes('manual')")
    assert checked_allocation(page) == "manual"
    shot(page, "05_layer_editor_manual")
    # The Ratio slider scales a manual plan (and says so) instead of being ignored.
    press_on_ratio(page, "ArrowRight", 10)
    page.wait_for_function("document.querySelector('#bip-readout').innerText.includes('to the Ratio 30%')")
    assert 29 <= removed_share(page) <= 31
    shot(page, "05a_manual_scaled")
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
    # LLM-BIP's default (centred) scores: refit, layer by layer (its default practice, chosen on valid).
    assert page.locator("#bip-compensation").get_by_label("refit (least squares)").is_checked()
    assert page.locator("#bip-sequential input").is_checked()
    page.locator("#bip-prune-btn").click()
    page.wait_for_function("document.querySelector('#bip-prune-table').innerText.includes('MLP channels (all layers)')",
                           timeout=180_000)
    assert "Compensation: refit; sequential: on" in page.locator("#bip-prune-status").inner_text()
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
    table, details = page.evaluate("""() => [document.querySelector('#bip-results').getBoundingClientRect().right,
        [...document.querySelectorAll('#bip-results th')].pop().getBoundingClientRect().right]""")
    assert details <= table + 1, "the 'details' column runs past the table"
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


def test_a_closed_tab_cancels_its_job(browser_page):
    """Score a long run, close the tab: the job stops at its next batch, so a new tab's Load does not wait
    behind it (it used to wait for the whole abandoned job)."""
    page, url, studio = browser_page
    tab = page.context.browser.new_page(viewport={"width": 1440, "height": 960})
    tab.goto(url)
    tab.get_by_role("button", name="Load model").click()
    tab.wait_for_selector("#bip-model-card .bip-tiles")
    tab.get_by_role("tab", name="2 · Score & tune").click()
    set_number(tab, "bip-samples", 256)
    tab.locator("#bip-seq-len input").click()
    tab.get_by_role("option", name="512", exact=True).click()
    tab.locator("#bip-score-btn").click()  # 256 x 512 tokens: minutes of work on this machine
    deadline = time.time() + 60
    while not any(s.busy == "Scoring" for s in list(studio.registry._sessions.values())) and time.time() < deadline:
        time.sleep(0.2)
    scoring = next(s for s in list(studio.registry._sessions.values()) if s.busy == "Scoring")
    time.sleep(2)
    tab.close()
    fresh = page.context.browser.new_page(viewport={"width": 1440, "height": 960})
    fresh.goto(url)
    started = time.time()
    fresh.get_by_role("button", name="Load model").click()
    fresh.wait_for_selector("#bip-model-card .bip-tiles", timeout=90_000)
    waited = time.time() - started
    shot(fresh, "10_new_tab_after_closing_a_busy_one")
    assert scoring.busy is None and scoring.expired and not scoring.scores, "the closed tab's job still runs"
    assert waited < 45, f"Load waited {waited:.0f} s behind the closed tab's job"
    fresh.close()


def test_two_sessions_at_once(browser_page):
    """Two users score different methods at the same time; each sees only its own runs and plan."""
    page, url, _ = browser_page
    browser = page.context.browser
    users = [browser.new_context().new_page() for _ in range(2)]
    for user in users:
        user.set_default_timeout(TIMEOUT)
        user.set_viewport_size({"width": 1440, "height": 960})
        user.goto(url)
        user.get_by_role("button", name="Load model").click()
    for user, method in zip(users, ("LLM-BIP", "Magnitude")):
        user.wait_for_selector("#bip-model-card .bip-tiles")
        user.get_by_role("tab", name="2 · Score & tune").click()
        set_number(user, "bip-samples", 8)
        user.locator("#bip-method input").click()
        user.get_by_role("option", name=method, exact=True).click()
    for user in users:
        user.locator("#bip-score-btn").click()  # both at once: one waits for the other's slot
    for user, method in zip(users, ("LLM-BIP", "Magnitude")):
        user.wait_for_selector(f"#bip-score-status >> text={method}")
        user.wait_for_selector("#bip-readout .bip-bigs")
    users[1].get_by_role("button", name="Paper-style uniform 50%").click()
    users[1].wait_for_function("document.querySelector('#bip-readout').innerText.includes('50.0%')")
    shot(users[0], "11_two_sessions_a")
    shot(users[1], "11_two_sessions_b")
    for user, mine, theirs in ((users[0], "LLM-BIP", "Magnitude"), (users[1], "Magnitude", "LLM-BIP")):
        user.locator("#bip-shown input").click()
        options = user.get_by_role("option").all_inner_texts()
        assert len(options) == 1 and mine in options[0] and theirs not in options[0], options
        user.keyboard.press("Escape")
        assert theirs not in user.locator("#bip-status-strip").inner_text()
    assert "20.0%" in users[0].locator("#bip-readout").inner_text()  # b's 50% plan is b's alone
    for user in users:
        user.context.close()
