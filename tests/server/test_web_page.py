"""The web page in headless Chromium (Debian's, driven by playwright): type, generate, get playable audio."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--autoplay-policy=no-user-gesture-required"]


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        yield page
        browser.close()
        assert not errors, errors


def test_generate_and_play(page):
    page.fill("#text", "Hello from the browser.")
    page.fill("#seed", "3")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Done')", timeout=60_000)
    src = page.get_attribute("#player", "src")
    assert src and src.startswith("blob:")
    # The audio element can load and decode what it was given: it knows a positive duration.
    duration = page.evaluate("""() => new Promise((resolve, reject) => {
        const a = document.querySelector('#player');
        if (a.readyState >= 1) return resolve(a.duration);
        a.addEventListener('loadedmetadata', () => resolve(a.duration));
        a.addEventListener('error', () => reject(new Error('audio error ' + a.error.code)));
        a.load();
    })""")
    assert duration > 0.1
    seconds = float(page.text_content("#status").split()[1])
    assert abs(duration - seconds) < 0.05
    link = page.get_attribute("#download", "download")
    assert link == "speech.wav"


def test_download_in_another_format(page):
    page.select_option("#format", "mp3")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#download').download === 'speech.mp3'", timeout=60_000)
    size = page.evaluate("async () => (await (await fetch(document.querySelector('#download').href)).blob()).size")
    assert size > 100


def test_upload_a_voice_and_use_it(page, server):
    import io

    import numpy as np
    import soundfile as sf

    buffer = io.BytesIO()
    t = np.arange(16000) / 16000
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000, format="WAV")
    page.fill("#voice-name", "browser_voice")
    page.fill("#voice-text", "A steady tone.")
    page.set_input_files("#voice-file", files=[{"name": "tone.wav", "mimeType": "audio/wav",
                                                "buffer": buffer.getvalue()}])
    page.click("#upload")
    page.wait_for_function("document.querySelector('#voice').value === 'browser_voice'", timeout=30_000)
    assert (server.voices / "browser_voice.wav").is_file()
    page.select_option("#format", "wav")
    before = page.get_attribute("#player", "src")
    page.click("#generate")
    page.wait_for_function("([old]) => document.querySelector('#player').src !== old", arg=[before],
                           timeout=60_000)
    assert page.text_content("#status").startswith("Done")
    with server.client() as c:
        assert c.delete("/v1/voices/browser_voice").status_code == 200
