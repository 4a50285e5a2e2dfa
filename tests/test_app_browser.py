"""The demo in a real browser: ``python app.py --run <tiny run>`` driven by headless Chromium.

Uses Debian's Chromium (``apt-get install -y chromium``) through the playwright
package; no ``playwright install``. Without Chromium the test fails, it does not
skip: CI installs it. Every tab is used, and a screenshot of the side-by-side tab
is saved in the test's temporary folder (copy it to ``assets/screenshot.png`` by
hand to update the README's).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gpt2_scratch.files import atomic_write_bytes
from gpt2_scratch.prompts import get_prompt_style

# The base model is GPT-2 124M's shape (random weights): slow enough on CPU that
# the Stop button reliably lands mid-generation (the tiny model finishes 200
# tokens in a fraction of a second).
BASE = "random:gpt2"

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 20_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, make_run):
    """URL of ``python app.py --run <tiny run>`` started in a subprocess (stopped afterwards)."""
    folder = tmp_path_factory.mktemp("browser")
    run = make_run(folder / "run1")
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env.pop("SPACE_ID", None)
    log = open(folder / "app.log", "w+")
    proc = subprocess.Popen([sys.executable, "app.py", "--run", str(run.root), "--base", BASE], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"app.py exited with status {proc.returncode}:\n{log.read()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"app.py did not answer on {url} within 90 s:\n{log.read()}")
            time.sleep(0.3)
        yield url, run
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def output(page, elem_id: str) -> str:
    return page.input_value(f"#{elem_id} textarea")


def wait_for_value(page, elem_id: str, value: str) -> None:
    """Wait until the textbox's value is ``value`` (example clicks fill inputs asynchronously)."""
    page.wait_for_function("([id, v]) => document.querySelector(`#${id} textarea`)?.value === v", arg=[elem_id, value],
                           timeout=TIMEOUT_MS)


def set_max_new_tokens(page, n: int) -> None:
    """Type ``n`` into the slider's number box and wait until the slider itself holds it.

    Gradio applies the typed number asynchronously, and a box typed into while
    the page is still hydrating can lose the value: type again until the slider
    shows it (clicking Generate before that would send the old value).
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(10):
        page.fill("#max-new-tokens input[type=number]", str(n))
        page.press("#max-new-tokens input[type=number]", "Tab")
        try:
            page.wait_for_function("(v) => document.querySelector('#max-new-tokens input[type=range]')?.value === v",
                                   arg=str(n), timeout=2000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"the max-new-tokens slider never took the value {n}")


def wait_for_text(page, elem_id: str, fragment: str) -> None:
    """Wait until the element's visible text contains ``fragment``."""
    page.wait_for_function(
        "([id, s]) => (document.getElementById(id)?.innerText || '').includes(s)", arg=[elem_id, fragment],
        timeout=TIMEOUT_MS,
    )


# (right end of a dropdown's text, left end of its arrow), in pixels: the text is measured with the input's font.
TEXT_END_AND_ARROW = """e => {
    const input = e.querySelector('input'), arrow = e.querySelector('.icon-wrap'), style = getComputedStyle(input);
    const ctx = document.createElement('canvas').getContext('2d');
    ctx.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
    const left = input.getBoundingClientRect().left + parseFloat(style.paddingLeft);
    return [left + ctx.measureText(input.value).width, arrow.getBoundingClientRect().left];
}"""


def toasts(page) -> list[str]:
    """The texts of the toasts (gr.Warning / gr.Info) on screen."""
    return page.locator("[data-testid='toast-text']").all_inner_texts()


@pytest.mark.browser
@pytest.mark.slow
def test_every_tab_in_chromium(server, greedy, tmp_path):
    if not CHROMIUM.is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium` "
                    "(the browser test needs it; CI installs it)")
    from playwright.sync_api import sync_playwright

    url, run = server
    prompt_style = get_prompt_style("alpaca")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)

            # Settings: fewer new tokens keep the test fast (slider's number box).
            page.get_by_text("Generation settings").click()
            set_max_new_tokens(page, 24)

            # Base model: an example prompt fills the box; the answer streams in and equals generate().
            page.locator("#base-examples").get_by_text("Every effort moves you").click()
            wait_for_value(page, "base-prompt", "Every effort moves you")
            page.click("#base-generate")
            wait_for_text(page, "base-status", "new tokens in")
            assert output(page, "base-output") == greedy(BASE, "Every effort moves you", 24)

            # Stop cancels a long generation: the text stops growing before the end.
            set_max_new_tokens(page, 200)
            page.click("#base-generate")
            page.wait_for_function("() => document.querySelector('#base-output textarea').value.length > 0 && "
                                   "document.getElementById('base-status').innerText.includes('Generating')")
            page.click("#base-stop")
            wait_for_text(page, "base-status", "Stopped.")
            page.wait_for_timeout(500)  # a token already on its way may still land
            stopped = output(page, "base-output")
            page.wait_for_timeout(1000)
            assert output(page, "base-output") == stopped
            assert "new tokens in" not in page.inner_text("#base-status")  # it did not run to the end
            set_max_new_tokens(page, 24)

            # Side by side: both columns fill.
            page.get_by_role("tab", name="Side by side").click()
            page.locator("#sbs-examples").get_by_text("Rewrite the sentence using a simile.").click()
            wait_for_value(page, "sbs-input", "The car is very fast.")
            page.click("#sbs-generate")
            wait_for_text(page, "sbs-status", "New tokens: base")
            prompt = prompt_style.format("Rewrite the sentence using a simile.", "The car is very fast.")
            assert output(page, "sbs-base-output") == greedy(BASE, prompt, 24)
            assert output(page, "sbs-ft-output") == greedy(run.final, prompt, 24)
            page.evaluate("window.scrollTo(0, 0)")
            atomic_write_bytes(tmp_path / "screenshot.png", page.screenshot())  # for the README, by hand

            # Finetuned: an empty instruction gets the message, then a real answer streams in.
            page.get_by_role("tab", name="Finetuned").click()
            page.click("#ft-generate")
            wait_for_text(page, "ft-status", "Type an instruction first.")
            assert output(page, "ft-output") == ""
            page.fill("#ft-instruction textarea", "What is the capital of Italy?")
            page.click("#ft-generate")
            wait_for_text(page, "ft-status", "new tokens in")
            expected_ft = greedy(run.final, prompt_style.format("What is the capital of Italy?"), 24)
            assert output(page, "ft-output") == expected_ft

            # Test-set evaluation: summary, loss curve, table search and filter, row details.
            page.get_by_role("tab", name="Test-set evaluation").click()
            wait_for_text(page, "eval-summary", "ROUGE-L F1")
            assert page.locator("#loss-curve img").count() == 1
            wait_for_text(page, "eval-count", "4 of 4 test records")
            page.fill("#eval-search textarea", "quiet")
            wait_for_text(page, "eval-count", "2 of 4 test records")
            # Typing ".9" goes through ".", which is no number: nothing is checked until Enter (issue 9.16).
            page.locator("#eval-min textarea").press_sequentially(".9", delay=150)
            page.wait_for_timeout(1000)
            assert not [t for t in toasts(page) if "score" in t] and "2 of 4" in page.inner_text("#eval-count")
            page.press("#eval-min textarea", "Enter")
            wait_for_text(page, "eval-count", "1 of 4 test records")
            # The Score dropdown shows its whole choice, not clipped under its arrow (issue 9.18).
            text_right, arrow_left = page.eval_on_selector("#eval-score", TEXT_END_AND_ARROW)
            assert text_right < arrow_left
            first_cell = page.locator("#eval-table [data-testid='cell-0-1']")
            assert first_cell.inner_text() == "What is the opposite of 'quiet'?"
            first_cell.click()
            wait_for_text(page, "eval-detail", "Test record 41")
            assert page.input_value("#detail-reference textarea") == "Loud."
            assert page.input_value("#detail-finetuned textarea") == "Loud."
        finally:
            browser.close()
