"""The page of `lstmkit serve` in a real headless Chromium: predictions, the heatmap and its pickers, span
selection, streamed generation.

Needs a Chromium executable (Debian's /usr/bin/chromium; none is downloaded) and the playwright package; the
module is skipped, saying which is missing, without them. A screenshot goes to test-artifacts/web_page.png.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_web import make_char_run, make_sentiment_run

from lstmkit.sample import generate
from lstmkit.web import app as web
from lstmkit.web.app import background_server, create_app

CHROMIUM = shutil.which("chromium") or next((p for p in ["/usr/bin/chromium"] if Path(p).exists()), None)
if CHROMIUM is None:
    pytest.skip("no chromium executable (apt-get install chromium) for the browser test", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

# The machine's network is closed: these keep Chromium from trying to reach Google's services.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
REVIEW = "the plot was dull and boring but the actor was superb and i loved it"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    root = tmp_path_factory.mktemp("web_browser")
    app = create_app([make_sentiment_run(root), make_char_run(root)])
    with background_server(app) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@contextlib.contextmanager
def open_page(browser, url: str):
    """The page at `url`, loaded, in a fresh context; fails afterwards if any JavaScript error was raised."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_selector("#run-select option", state="attached")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(browser, url):
    with open_page(browser, url) as opened:
        yield opened


def api_trace(url: str, run: str, text: str) -> dict:
    response = httpx.post(f"{url}/api/trace", json={"run": run, "text": text}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def cell_count(page) -> int:
    return page.locator("#heatmap .hm-cell").count()


def read_review(page, text: str = REVIEW) -> None:
    page.fill("#text-input", text)
    page.click("#submit")
    page.wait_for_selector("#prediction:not([hidden])")
    page.wait_for_selector("#view:not([hidden])")


def test_a_review_gets_its_prediction_and_a_token_by_unit_heatmap(page, url):
    read_review(page)
    trace = api_trace(url, "reviews", REVIEW)
    T, H = len(trace["tokens"]), trace["hidden_size"]
    prediction = page.inner_text("#prediction")
    assert trace["prediction"]["label"] in prediction
    assert f"{100 * trace['prediction']['probability']:.1f}%" in prediction
    assert cell_count(page) == T * H
    assert page.inner_text("#heatmap-info") == f"{T} tokens × {H} units"
    labels = page.locator("#heatmap .hm-token").all_inner_texts()
    assert labels == trace["tokens"]
    # Every cell says where it is; hovering one shows its token, unit and value.
    cell = page.locator('#heatmap .hm-cell[data-token="3"][data-unit="5"]')
    assert cell.count() == 1
    cell.hover()
    tip = page.inner_text("#tooltip")
    value = trace["layers"][-2]["hidden"][3][5]  # the default view: the top layer, forward, hidden state
    assert f"“{trace['tokens'][3]}”" in tip and "unit 5" in tip and "hidden state" in tip
    assert abs(float(tip.rsplit(" ", 1)[1]) - value) < 1e-3


def row_colours(page) -> list[str]:
    return page.eval_on_selector_all('#heatmap .hm-cell[data-token="1"]', "cells => cells.map(c => c.style.background)")


def test_the_pickers_redraw_without_asking_the_server_again(page, url):
    read_review(page)
    T = len(api_trace(url, "reviews", REVIEW)["tokens"])
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    heatmap = page.locator("#heatmap")
    before = row_colours(page)
    page.select_option("#gate-select", "forget")
    assert heatmap.get_attribute("data-gate") == "forget" and cell_count(page) == T * 8
    assert row_colours(page) != before
    assert "forget gate" in page.inner_text("#legend")
    page.select_option("#layer-select", "0")
    assert heatmap.get_attribute("data-layer") == "0"
    assert page.is_visible("#direction-select")
    page.select_option("#direction-select", "reverse")
    assert heatmap.get_attribute("data-direction") == "reverse" and cell_count(page) == T * 8
    page.fill("#units-count", "3")
    page.dispatch_event("#units-count", "change")
    assert cell_count(page) == T * 3 and page.inner_text("#heatmap-info") == f"{T} tokens × 3 units"
    assert "3 of 8 units" in page.inner_text("#units-note")
    page.select_option("#units-order", "variance")
    assert cell_count(page) == T * 3
    # The three units whose forget gate (layer 0, reverse) varies most over the text, most variable first.
    trace = api_trace(url, "reviews", REVIEW)
    requests.clear()  # that request was the test's own
    forget = np.array(next(e for e in trace["layers"] if e["layer"] == 0 and e["direction"] == "reverse")["forget"])
    expected = [int(u) for u in np.argsort(-forget.var(axis=0), kind="stable")[:3]]
    shown = page.eval_on_selector_all("#heatmap .hm-unit", "units => units.map(u => Number(u.dataset.unit))")
    assert shown == expected, f"units shown {shown}, most variable first {expected} (variances {forget.var(axis=0)})"
    assert requests == []  # all of it from the one trace already fetched


def test_a_selected_span_lists_its_units_and_where_they_fire_together(page, url):
    read_review(page)
    T = len(api_trace(url, "reviews", REVIEW)["tokens"])
    page.select_option("#gate-select", "input")
    page.fill("#threshold", "0")  # every input gate is above 0: all 8 units qualify, everywhere
    page.click('#heatmap .hm-token[data-token="2"]')
    page.click('#heatmap .hm-token[data-token="4"]', modifiers=["Shift"])
    info = page.locator("#selection-info")
    assert info.get_attribute("data-units") == "8" and info.get_attribute("data-matches") == str(T - 3)
    assert "tokens 2–4" in info.inner_text() and page.locator("#selected-units .chip").count() == 8
    assert page.locator("#token-strip .tok.in-span").count() == 3
    assert page.locator("#token-strip .tok.match").count() == T - 3
    page.fill("#threshold", "1")  # and none is at 1
    assert info.get_attribute("data-units") == "0" and "no unit" in info.inner_text()
    assert page.locator("#token-strip .tok.match").count() == 0

    # Dragging over the text selects too; the hidden state at 0.3 picks some units, or says that none stays on.
    page.select_option("#gate-select", "hidden")
    page.hover('#token-strip .tok[data-token="0"]')
    page.mouse.down()
    page.hover('#token-strip .tok[data-token="1"]')
    page.mouse.up()
    assert page.locator("#token-strip .tok.in-span").count() == 2
    assert info.inner_text().startswith("tokens 0–1")
    page.fill("#threshold", "0")  # units whose h stays above 0 over both tokens: some, so there is a chip to click
    assert int(info.get_attribute("data-units")) > 0
    chip = page.locator("#selected-units .chip").first
    assert page.locator("#token-strip .tok").first.evaluate("el => el.style.background") == ""
    chip.click()  # colours the text by that unit
    assert page.locator("#token-strip .tok").first.evaluate("el => el.style.background") != ""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_page.png"), full_page=True)


def test_generation_streams_into_the_page_then_its_gates_are_shown(page, url, monkeypatch):
    def unhurried(*args, **kwargs):
        """Tokens 40 ms apart, so that the page can be seen filling while the stream is still open."""
        def paced():
            for piece in generate(*args, **kwargs):
                time.sleep(0.04)
                yield piece
        generate(*args, **kwargs)  # its argument checks, at once as the real one does them
        return paced()

    monkeypatch.setattr(web, "generate", unhurried)
    page.select_option("#run-select", "verse")
    assert page.is_visible("#lm-panel") and not page.is_visible("#sentiment-panel")
    page.fill("#prompt-input", "the ")
    page.fill("#length-input", "30")
    page.click("#generate-button")
    # Part of the text is on the page while generation is still going on.
    page.wait_for_function("""() => {
        const n = document.querySelector('#generated-text .generated')?.textContent.length || 0;
        return n >= 2 && n < 30 && document.querySelector('#generate-button').disabled;
    }""")
    page.wait_for_selector("#view:not([hidden])", timeout=30_000)
    generated = page.inner_text("#generated-text .generated")
    assert len(generated) == 30
    assert page.inner_text("#heatmap-info") == "34 tokens × 16 units" and cell_count(page) == 34 * 16
    assert "Most likely next tokens" in page.inner_text("#prediction")
    assert page.locator("#prediction .bar").count() == 5
    trace = api_trace(url, "verse", "the " + generated)
    assert page.locator("#heatmap .hm-token").count() == len(trace["tokens"]) == 34
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_page_lm.png"))


def test_a_projected_lstm_shows_h_with_proj_size_units_and_c_with_hidden_size(browser, tmp_path):
    run = make_sentiment_run(tmp_path, "model.proj_size=3", name="projected")
    with background_server(create_app([run])) as base_url, open_page(browser, base_url) as page:
        read_review(page)
        T = len(api_trace(base_url, "projected", REVIEW)["tokens"])
        # The default view is h: 3 units (proj_size); the memory cell keeps hidden_size's 8.
        assert cell_count(page) == T * 3 and page.inner_text("#heatmap-info") == f"{T} tokens × 3 units"
        assert "NaN" not in page.inner_html("#heatmap")
        page.select_option("#gate-select", "cell")
        assert cell_count(page) == T * 8 and page.inner_text("#heatmap-info") == f"{T} tokens × 8 units"


def test_api_errors_show_as_one_line(page):
    page.fill("#text-input", "   ")
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    assert "no words" in page.inner_text("#error") and "HTTP 400" in page.inner_text("#error")
    page.select_option("#run-select", "verse")
    assert page.is_hidden("#error")
    page.fill("#prompt-input", "QQQ")
    page.click("#generate-button")
    page.wait_for_selector("#error:not([hidden])")
    assert "never saw" in page.inner_text("#error")


def test_an_uploaded_recording_shows_its_prediction_spectrogram_and_gates_on_one_time_axis(browser, tmp_path):
    from test_speech import make_speech_run, tone, write_wav

    run = make_speech_run(tmp_path, "model.bidirectional=true")
    rate = 8000
    quiet = 0.003 * np.random.default_rng(0).standard_normal(int(0.2 * rate)).astype(np.float32)
    samples = np.concatenate([quiet, tone(1000, 0.3, rate), quiet])  # silence, a 1 kHz tone, silence
    recording = write_wav(tmp_path / "tone in silence.wav", samples, rate)
    with background_server(create_app([make_sentiment_run(tmp_path), run])) as base_url, \
            open_page(browser, base_url) as page:
        expected = httpx.post(f"{base_url}/api/speech", params={"run": "speech", "filename": recording.name},
                              content=recording.read_bytes(), timeout=30)
        assert expected.status_code == 200, expected.text
        trace = expected.json()
        page.select_option("#run-select", "speech")
        assert page.is_visible("#speech-panel") and page.is_hidden("#sentiment-panel")
        page.set_input_files("#speech-file", str(recording))
        page.click("#speech-submit")
        page.wait_for_selector("#speech-view:not([hidden])")
        prediction = page.inner_text("#speech-prediction")
        assert recording.name in prediction and trace["prediction"]["label"] in prediction
        assert f"{100 * trace['prediction']['probability']:.1f}%" in prediction

        frames = len(trace["spectrogram"])
        assert frames == 1 + len(samples) // 80  # 10 ms frames at 8 kHz
        sizes = page.eval_on_selector_all("#speech-canvases canvas", "cs => cs.map(c => [c.dataset.frames, "
                                          "c.dataset.frameWidth, c.width, c.getBoundingClientRect().left])")
        assert sizes[0] == sizes[1] and sizes[0][0] == str(frames), sizes  # one time axis: frame k at the same x
        w = int(sizes[0][1])

        def pixel(canvas: str, frame: int, row: int, rows: int) -> list[int]:
            return page.evaluate("([id, x, row, rows]) => { const c = document.getElementById(id); "
                                 "const h = c.height / rows; return Array.from(c.getContext('2d')"
                                 ".getImageData(x, Math.floor((rows - 1 - row) * h + h / 2), 1, 1).data); }",
                                 [canvas, frame * w + w // 2, row, rows])

        # The tone's band is bright while it sounds and dark before: the spectrogram drawn is the trace's, in time.
        spectrogram = np.asarray(trace["spectrogram"])
        middle = frames // 2
        band = int(spectrogram[middle].argmax())
        bands = spectrogram.shape[1]
        assert sum(pixel("spectrogram", middle, band, bands)[:3]) > sum(pixel("spectrogram", 5, band, bands)[:3]) + 200

        # The gates: the default view is the top layer's forward forget gate, coloured from its values.
        gates = page.locator("#speech-gates")
        assert gates.get_attribute("data-gate") == "forget" and gates.get_attribute("data-direction") == "forward"
        forget = np.asarray(next(e for e in trace["layers"] if e["direction"] == "forward")["forget"])
        hi_t, hi_u = np.unravel_index(forget.argmax(), forget.shape)
        lo_t, lo_u = np.unravel_index(forget.argmin(), forget.shape)
        units = forget.shape[1]
        assert sum(pixel("speech-gates", int(hi_t), int(hi_u), units)[:3]) < \
            sum(pixel("speech-gates", int(lo_t), int(lo_u), units)[:3])  # open (dark blue) vs closed (white)
        page.select_option("#speech-direction", "reverse")
        page.select_option("#speech-gate", "cell")
        assert gates.get_attribute("data-gate") == "cell" and gates.get_attribute("data-direction") == "reverse"

        # Hovering frame k of the gates names frame k and its time.
        box = gates.bounding_box()
        page.mouse.move(box["x"] + 30 * w + w / 2, box["y"] + 3)
        assert page.inner_text("#speech-cursor-info") == f"frame 30, t = {30 * trace['hop_seconds']:.3f} s"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web_page_speech.png"), full_page=True)

        not_audio = tmp_path / "notes.wav"
        not_audio.write_text("this is text with a .wav name\n")
        page.set_input_files("#speech-file", str(not_audio))
        page.click("#speech-submit")
        page.wait_for_selector("#error:not([hidden])")
        error = page.inner_text("#error")
        assert "notes.wav is not a recording" in error and "HTTP 400" in error and "lstmkit-upload" not in error
