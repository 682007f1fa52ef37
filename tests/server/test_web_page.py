"""The playground at ``/`` in headless Chromium (Debian's, driven by playwright), used as a person would.

Each state is saved as a screenshot under ``tmp/artifacts/playground`` (ignored by git) to look at.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from higgs_audio.sampling import SamplingParams
from tests.server.audio_check import decode
from tests.server.conftest import ROOT, start_server, stop_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--autoplay-policy=no-user-gesture-required",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]  # a beeping microphone
ARTIFACTS = ROOT / "tmp" / "artifacts" / "playground"
SHORT = "40"  # generation steps of most tests: the random model never stops on its own
# Every durationchange of the player, from the page's first moment: the duration grows while audio streams.
WATCH_DURATION = """
window.durations = [];
document.addEventListener('durationchange', (e) => {
  if (e.target.id === 'player') window.durations.push(e.target.duration);
}, true);
"""


def tone(seconds: float = 1.0, rate: int = 16000, hz: float = 200.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def play_server(tmp_path_factory, tiny_original, tiny_codec):
    """Long generations allowed (for stop), a library voice ``tone``, room for a long text."""
    s = start_server(tmp_path_factory.mktemp("play"), tiny_original, tiny_codec, "--max-batch", "4",
                     "--max-new-tokens", "3000", "--max-input-chars", "1500", "--max-len", "4096")
    with s.client() as c:
        added = c.post("/v1/voices", data={"name": "tone", "transcript": "A steady tone."},
                       files={"file": ("tone.wav", tone(), "audio/wav")})
        assert added.status_code == 201, added.text
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


class Playground:
    """One browser tab on the page; ``bodies`` holds every speech request it sent."""

    def __init__(self, browser, server, **context):
        self.context = browser.new_context(**context)
        self.context.grant_permissions(["clipboard-read", "clipboard-write", "microphone"], origin=server.url)
        self.page = self.context.new_page()
        self.page.add_init_script(WATCH_DURATION)
        self.errors: list[str] = []
        self.bodies: list[dict] = []
        self.url, self.elsewhere = server.url, []  # requests to anywhere but the server: the page works offline
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", self._seen)
        self.page.goto(server.url + "/")
        self.page.wait_for_function("document.querySelector('#voice').options.length > 1")

    def _seen(self, request):
        if not request.url.startswith((self.url + "/", "blob:", "data:")):
            self.elsewhere.append(request.url)
        if request.method == "POST" and request.url.endswith("/v1/audio/speech"):
            self.bodies.append(json.loads(request.post_data))

    def speak(self, steps: str = SHORT, seed: str = "3", wait: bool = True):
        page = self.page
        if not page.is_visible("#seed"):
            page.click("#advanced summary")
        page.fill("#max-new-tokens", steps)
        page.fill("#seed", seed)
        started = self.generations()
        page.click("#generate")
        if wait:
            self.wait_done(started)
            return self.bodies[-1]

    def generations(self) -> int:
        return self.page.locator("#history li").count()

    def wait_done(self, started: int):
        """Wait for the generation begun when the history had ``started`` entries to join it, done."""
        self.page.wait_for_function("([n]) => document.querySelectorAll('#history li').length > n", arg=[started],
                                    timeout=120_000)
        assert self.page.text_content("#status").startswith("Done"), self.page.text_content("#status")

    def shot(self, name: str):
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def history(self) -> list[str]:
        return self.page.eval_on_selector_all("#history li .said", "els => els.map(e => e.textContent)")

    def latest_audio(self) -> bytes:
        """The newest history entry's audio, as the page keeps it in IndexedDB."""
        data = self.page.evaluate("""() => new Promise((resolve, reject) => {
            const open = indexedDB.open('higgs-audio-playground', 1);
            open.onsuccess = () => {
              const all = open.result.transaction('generations').objectStore('generations').getAll();
              all.onsuccess = async () => {
                const bytes = new Uint8Array(await all.result.at(-1).blob.arrayBuffer());
                let text = ''; bytes.forEach((b) => text += String.fromCharCode(b)); resolve(btoa(text));
              };
            };
            open.onerror = () => reject(open.error);
        })""")
        return base64.b64decode(data)

    def overflowing(self, width: int) -> list[str]:
        """The elements that stick out past ``width`` pixels (the page would scroll sideways)."""
        return self.page.evaluate("""(width) => [...document.querySelectorAll('body *')]
            .filter((e) => e.getBoundingClientRect().right > width + 1)
            .map((e) => e.tagName + '#' + e.id + '.' + e.className)""", width)

    def close(self):
        self.context.close()
        assert not self.errors, self.errors
        assert not self.elsewhere, self.elsewhere


@pytest.fixture(scope="module")
def tab(browser, play_server):
    playground = Playground(browser, play_server, viewport={"width": 1280, "height": 900})
    yield playground
    playground.close()


def test_sampling_placeholders_are_the_api_defaults(tab):
    defaults = SamplingParams()
    page = tab.page
    assert float(page.get_attribute("#temperature", "placeholder")) == defaults.temperature
    assert int(page.get_attribute("#top-k", "placeholder")) == defaults.top_k
    assert float(page.get_attribute("#top-p", "placeholder")) == defaults.top_p
    tab.shot("start-light")


def test_library_voice_streams_into_the_player(tab):
    page = tab.page
    page.select_option("#voice", "tone")
    page.select_option("#scene-preset", "quiet_indoor")
    assert page.input_value("#scene") == "Audio is recorded from a quiet room."
    body = tab.speak(steps="150")
    assert body["voice"] == "tone" and body["seed"] == 3 and body["max_new_tokens"] == 150
    assert body["scene"] == "Audio is recorded from a quiet room." and body["response_format"] == "mp3"
    durations = [d for d in page.evaluate("window.durations") if d == d and d != float("inf")]
    # The element knew more and more audio while the response was still streaming.
    assert len(set(durations)) >= 3 and durations == sorted(durations), durations
    for stat in ("#ttfa", "#rtf", "#fps", "#audio-seconds"):
        assert page.text_content(stat) != "–"
    assert float(page.text_content("#fps")) > 0
    shown = float(page.text_content("#audio-seconds").split()[0])
    assert abs(shown - durations[-1]) < 0.2
    tab.shot("library-voice-done-light")


def test_profile_voice(tab):
    page = tab.page
    page.check("#source-profile")
    page.fill("#profile", "a deep, calm male voice")
    body = tab.speak()
    assert body["voice"] == "profile:a deep, calm male voice"
    assert "profile:a deep, calm male voice" in page.text_content("#history li .meta")
    tab.shot("profile-done-light")


def test_uploaded_clip_is_cloned_and_kept(tab, play_server):
    page = tab.page
    page.check("#source-clip")
    page.set_input_files("#clip-file", files=[{"name": "hum.wav", "mimeType": "audio/wav", "buffer": tone(1.5)}])
    page.wait_for_function("document.querySelector('#clip-status').textContent.includes('1.5 s')")
    page.fill("#clip-text", "A low hum.")
    body = tab.speak()
    assert body["reference_audio"].startswith("data:audio/wav;base64,") and body["reference_text"] == "A low hum."
    assert "voice" not in body
    tab.shot("clip-done-light")
    page.fill("#clip-name", "hum")
    page.click("#clip-save")
    page.wait_for_function("document.querySelector('#voice').value === 'hum'")
    assert (play_server.voices / "hum.wav").is_file()


def test_recorded_clip(tab):
    page = tab.page
    page.check("#source-clip")
    page.click("#clip-record")
    page.wait_for_function("document.querySelector('#clip-record').getAttribute('aria-pressed') === 'true'")
    page.wait_for_timeout(1500)
    page.click("#clip-record")
    page.wait_for_function("document.querySelector('#clip-status').textContent.includes('recording.wav')")
    seconds = float(page.text_content("#clip-status").split("(")[1].split()[0])
    assert seconds >= 1.0
    page.fill("#clip-text", "A beep.")
    body = tab.speak()
    wave, _ = sf.read(io.BytesIO(base64.b64decode(body["reference_audio"].partition(",")[2])))
    assert np.abs(wave).max() > 0.01  # the fake microphone's beeps, not silence
    tab.shot("recorded-clip-light")


def test_two_speaker_dialogue(tab):
    page = tab.page
    page.check("#mode-dialogue")
    page.wait_for_selector("#speaker-voice-1")
    assert page.eval_on_selector_all(".speaker", "rows => rows.map(r => r.dataset.tag)") == ["SPEAKER0", "SPEAKER1"]
    page.select_option("#speaker-voice-0", "tone")
    page.select_option("#speaker-voice-1", "profile")
    page.fill("#speaker-profile-1", "an old man, slow and hoarse")
    page.fill("#max-new-tokens", SHORT)
    page.focus("#dialogue")
    started = tab.generations()
    page.keyboard.press("Control+Enter")  # speaks without leaving the keyboard
    tab.wait_done(started)
    body = tab.bodies[-1]
    assert body["speakers"] == {"SPEAKER0": "tone", "SPEAKER1": "profile:an old man, slow and hoarse"}
    assert body["input"].startswith("[SPEAKER0]") and "voice" not in body
    tab.shot("dialogue-done-light")
    page.check("#mode-one")


def test_long_text_in_chunks(tab):
    page = tab.page
    page.check("#source-library")
    page.select_option("#voice", "")
    text = "\n\n".join(f"Paragraph {i}. The rain kept falling on the quiet town." for i in range(1, 6))
    page.fill("#text", text)
    page.select_option("#chunk", "paragraph")
    page.click("#system-fold summary")
    page.fill("#system", "You read stories aloud, slowly.")
    body = tab.speak(steps="60")
    assert body["chunk"] == "paragraph" and body["input"] == text and body["system"] == "You read stories aloud, slowly."
    tab.shot("long-text-done-light")
    page.select_option("#chunk", "")
    page.fill("#system", "")


def test_copied_curl_and_python_give_the_same_audio(tab, tmp_path):
    page = tab.page
    page.fill("#text", "Copy me exactly.")
    tab.speak(seed="11")
    ours = tab.latest_audio()
    page.click("#history li:first-child button.curl")
    command = page.text_content("#code-text")
    assert command.startswith("curl http://127.0.0.1:") and '"seed":11' in command
    tab.shot("copy-as-curl-light")
    page.click("#code-close")
    subprocess.run(["bash", "-c", command], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    page.click("#history li:first-child button.python")
    script = page.text_content("#code-text")
    page.click("#code-close")
    (tmp_path / "py").mkdir()
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path / "py", check=True, capture_output=True, timeout=120)
    mine, _ = decode(ours, "mp3")
    for path in (tmp_path / "speech.mp3", tmp_path / "py" / "speech.mp3"):
        theirs, _ = decode(path.read_bytes(), "mp3")
        assert len(theirs) == len(mine) and np.abs(theirs - mine).max() < 1e-4


def test_history_survives_a_reload_and_downloads_any_format(tab, tmp_path):
    page = tab.page
    before = tab.history()
    assert len(before) >= 6
    page.reload()
    page.wait_for_function("document.querySelectorAll('#history li').length > 0")
    assert tab.history() == before
    page.click("#history li:first-child button.play")
    page.wait_for_function("document.querySelector('#player').duration > 0.5")
    seconds = float(page.text_content("#history li:first-child .meta").split()[0])
    page.select_option("#history li:first-child select.format", "flac")
    with page.expect_download() as download:
        page.click("#history li:first-child button.download")
    path = tmp_path / "speech.flac"
    download.value.save_as(path)
    wave, rate = decode(path.read_bytes(), "flac")
    assert rate == 24000 and abs(len(wave) / rate - seconds) < 0.15
    tab.shot("history-after-reload-light")


def test_stop_cancels_on_the_server(tab, play_server):
    page = tab.page
    page.fill("#text", "A long story that would take a long time to tell, if nobody stopped it. " * 4)
    tab.speak(steps="3000", wait=False)
    page.wait_for_function("document.querySelector('#status').textContent === 'Speaking…'", timeout=60_000)
    assert play_server.metrics()["higgs_active_streams"] == 1
    tab.shot("speaking-light")
    page.click("#stop")
    stopped = time.monotonic()
    while play_server.metrics()["higgs_active_streams"] != 0:
        assert time.monotonic() - stopped < 1.0, "the server still generates 1 s after stop"
        time.sleep(0.05)
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('Stopped')")
    assert not page.is_disabled("#generate") and page.is_disabled("#stop")


def test_api_error_is_shown(tab):
    page = tab.page
    page.fill("#text", "x" * 1600)
    tab.speak(wait=False)
    page.wait_for_function("document.querySelector('#error').textContent !== ''")
    assert "at most 1500" in page.text_content("#error")  # the API's own message
    tab.shot("api-error-light")
    page.fill("#text", "The sun rises in the east.")


@pytest.mark.parametrize("scheme,width", [("dark", 1280), ("light", 390), ("dark", 390)])
def test_dark_and_phone_width(browser, play_server, scheme, width):
    """Every part stays on screen at a phone's width, in both colour schemes (screenshots to look at)."""
    tab = Playground(browser, play_server, viewport={"width": width, "height": 844}, color_scheme=scheme,
                     is_mobile=width < 500, has_touch=width < 500)
    page = tab.page
    name = f"{'phone' if width < 500 else 'desktop'}-{scheme}"
    assert not tab.overflowing(width)
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert (background == "rgb(21, 23, 26)") == (scheme == "dark")
    tab.shot(f"{name}-start")
    page.check("#mode-dialogue")
    page.click("#advanced summary")
    page.select_option("#speaker-voice-1", "profile")
    page.fill("#speaker-profile-1", "a bright young voice")
    tab.speak()
    assert not tab.overflowing(width)
    tab.shot(f"{name}-done")
    tab.close()
