"""``talkhead ui``: the Gradio page and its ``/animate`` API, served by a real ``talkhead ui`` process.

One server (tiny models, dlib landmarks, CPU) is started on a free loopback port for the module; it
is called through ``gradio_client`` (the README's example), driven in headless Chromium (Selenium),
and finally stopped with Ctrl-C (SIGINT), after which its temporary folder must be gone.
"""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import ASTRONAUT, ROOT, SPEECH, assert_clean_error, blank_photo, probe, wait_for
from talkhead.errors import InputError
from talkhead.options import AnimateOptions
from talkhead.ui import FRAMES, request_options
STARTUP_TIMEOUT_S = 300  # torch + gradio imports and model loading on a loaded 2-core machine


# --------------------------------------------------------------------------------------- request options
def test_request_options_apply_the_page_choices_over_the_command_line():
    base = AnimateOptions(landmarker="dlib", device="cpu", batch_size=4)
    opts = request_options(base, face_index=1.0, device="cpu")
    assert (opts.face_index, opts.device, opts.landmarker, opts.batch_size) == (1, "cpu", "dlib", 4)
    assert opts.overwrite  # each request writes a fresh file in its own folder
    assert request_options(base, face_index=None).face_index is None  # blank = the largest confident face
    with pytest.raises(InputError, match="--face-index must be 0 or more"):
        request_options(base, face_index=-1)
    with pytest.raises(InputError, match="--face-index must be a whole number"):
        request_options(base, face_index=1.5)
    with pytest.raises(InputError, match="--device must be one of"):
        request_options(base, device="tpu")


def test_the_pages_motion_scale_and_frame_reach_the_options():
    base = AnimateOptions()
    assert base.motion_scale == 1.0 and base.frame == "full"
    assert request_options(base, motion_scale=0.0).motion_scale == 0.0
    assert request_options(base, motion_scale=1.5).motion_scale == 1.5
    assert request_options(base).motion_scale == 1.0  # no slider value: the command line's
    still = AnimateOptions(still=True)  # --still sets the slider's start; the slider then decides
    assert still.motion_scale == 0.0
    assert request_options(still, motion_scale=0.5).motion_scale == 0.5
    with pytest.raises(InputError, match="--motion-scale must be a finite number >= 0"):
        request_options(base, motion_scale=-1.0)
    assert FRAMES == {"full photo": "full", "face crop": "crop"}
    assert request_options(base, frame="face crop").frame == "crop"
    assert request_options(base, frame="full photo").frame == "full"
    assert request_options(AnimateOptions(frame="crop")).frame == "crop"  # no choice: the command line's
    with pytest.raises(InputError, match="--frame must be one of"):
        request_options(base, frame="sideways")


def test_ui_without_gradio_says_what_to_install(monkeypatch):
    from typer.testing import CliRunner

    from talkhead.cli import app

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    result = CliRunner().invoke(app, ["ui", "--device", "cpu"])
    assert_clean_error(result, "needs the web-page extra", "pip install 'talkhead[ui]'")


def test_ui_with_an_unavailable_device_fails_before_serving(tmp_path, monkeypatch):
    import tempfile

    import torch
    from typer.testing import CliRunner

    from talkhead.cli import app

    _need_ui_extra()
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = CliRunner().invoke(app, ["ui", "--device", "cuda", "--port", "1"])
    assert_clean_error(result, "device cuda was asked for")
    assert list(tmp_path.glob("talkhead-ui-*")) == []  # its temporary root is gone too


# --------------------------------------------------------------------------------------- the server
def _need_ui_extra():
    pytest.importorskip("gradio", reason="the ui extra (gradio) is not installed")
    return pytest.importorskip("gradio_client", reason="the ui extra (gradio_client) is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``talkhead ui`` subprocess; its temp files go under ``tmpdir`` (``TMPDIR``)."""

    def __init__(self, models_dir: Path, tmpdir: Path, *extra: str):
        self.tmpdir = tmpdir
        self.port = _free_port()
        env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
        cmd = [sys.executable, "-m", "talkhead", "ui", "--port", str(self.port), "--models-dir", str(models_dir),
               "--offline", "--landmarker", "dlib", "--device", "cpu", "--batch-size", "4", *extra]  # batch 4: 30 render progress steps
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        line = self._readline(STARTUP_TIMEOUT_S)
        if not line.startswith("http://"):
            self.proc.kill()
            raise AssertionError(f"the server did not start: {line!r}\n{''.join(self.stderr)}")
        self.url = line.strip()
        assert self.url == f"http://127.0.0.1:{self.port}/"

    def _readline(self, timeout: float) -> str:
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        return out[0] if out else ""

    def temp_roots(self) -> list[Path]:
        return sorted(self.tmpdir.glob("talkhead-ui-*"))

    def stop(self, sig=signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(tiny_models_dir, tmp_path_factory):
    _need_ui_extra()
    srv = Server(tiny_models_dir, tmp_path_factory.mktemp("ui-tmp"))
    yield srv
    srv.stop(signal.SIGKILL)


def test_the_pages_face_restoration_reaches_the_options_and_needs_its_weights(tmp_path):
    """Both tabs pass ``enhance`` / ``enhance_strength``; a restorer is loaded once per device, and a
    missing one is the CLI's line (names ``talkhead download gfpgan``)."""
    from helpers import ToyRenderer, toy_motion
    from talkhead.pipeline import Pipeline
    from talkhead.ui import Animator

    base = AnimateOptions(device="cpu", models_dir=tmp_path / "models")
    opts = request_options(base, enhance="gfpgan", enhance_strength=0.3)
    assert (opts.enhance, opts.enhance_strength) == ("gfpgan", 0.3)
    assert request_options(base).enhance == "none"
    with pytest.raises(InputError, match="--enhance-strength must be a number in"):
        request_options(base, enhance="gfpgan", enhance_strength=2)
    animator = Animator(base, tmp_path, pipeline=Pipeline(base, renderer=ToyRenderer(), motion=toy_motion))
    animator._by_device["cpu"] = animator._pipeline
    assert animator.pipeline_for(request_options(base))._restorer is None
    with pytest.raises(InputError, match="talkhead download gfpgan"):
        animator.pipeline_for(opts)


@pytest.fixture
def client(server, tmp_path):
    from gradio_client import Client

    return Client(server.url, verbose=False, download_files=str(tmp_path))


def test_api_animates_the_astronaut_with_real_speech(server, client, tmp_path):
    from gradio_client import handle_file

    video = client.predict(handle_file(str(ASTRONAUT)), handle_file(str(SPEECH)), api_name="/animate")
    video = Path(video["video"] if isinstance(video, dict) else video)
    assert video.is_file() and video.suffix == ".mp4" and tmp_path in video.parents
    info = probe(video)
    assert (info.video_codec, info.pix_fmt, info.audio_codec) == ("h264", "yuv420p", "aac")
    assert info.fps == pytest.approx(25.0)
    assert info.num_frames == 120  # round(4.8 s * 25): as long as the speech
    assert info.audio_duration_s == pytest.approx(4.8, abs=0.04)
    assert (info.width, info.height) == (512, 512)  # the whole photo (frame "full photo", the default)
    crop = client.predict(handle_file(str(ASTRONAUT)), handle_file(str(SPEECH)), motion_scale=0.0,
                          frame="face crop", api_name="/animate")
    info = probe(crop["video"] if isinstance(crop, dict) else crop)
    assert (info.width, info.height, info.num_frames) == (64, 64, 120)  # the tiny FOMM's square, still head
    # the request's own temporary folder is gone once the answer is back
    (root,) = server.temp_roots()
    assert not list((root / "requests").glob("request-*"))


def test_api_reports_bad_uploads_with_the_cli_message(server, client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    wall = blank_photo(tmp_path / "wall.png")
    with pytest.raises(AppError, match=r"no face found in 'wall\.png'"):  # the upload's name, not its server path
        client.predict(handle_file(str(wall)), handle_file(str(SPEECH)), api_name="/animate")

    notes = tmp_path / "notes.png"
    notes.write_text("not a picture\n")
    with pytest.raises(AppError, match=r"'notes\.png' is not an image"):
        client.predict(handle_file(str(notes)), handle_file(str(SPEECH)), api_name="/animate")

    silent = tmp_path / "silent.wav"
    import soundfile as sf

    sf.write(silent, np.zeros(16000, np.float32), 16000)
    with pytest.raises(AppError, match="silent"):
        client.predict(handle_file(str(ASTRONAUT)), handle_file(str(silent)), api_name="/animate")

    with pytest.raises(AppError, match=r"face index 3 requested but only 1 confident face\(s\) found in 'astronaut\.png'"):
        client.predict(handle_file(str(ASTRONAUT)), handle_file(str(SPEECH)), face_index=3, api_name="/animate")

    huge = tmp_path / "huge.png"  # 20000 x 20000 (400 megapixels, a 60 KB file): Pillow refuses to decode it
    Image.new("1", (20000, 20000)).save(huge)
    with pytest.raises(AppError) as info:
        client.predict(handle_file(str(huge)), handle_file(str(SPEECH)), api_name="/animate")
    msg = str(info.value)
    assert "'huge.png' is too large to decode safely" in msg and str(server.tmpdir) not in msg and "\n" not in msg
    # the server's log names each failure it returned, and holds no traceback
    wait_for(lambda: "too large to decode" in "".join(server.stderr), timeout=60, what="the failure in the log")
    log = "".join(server.stderr)
    assert "request failed: no face found in 'wall.png'" in log and "Traceback" not in log
    (root,) = server.temp_roots()
    assert not list((root / "requests").glob("request-*"))


def test_reenact_endpoint_moves_the_photo_like_a_driving_video(server, client, tmp_path):
    from gradio_client import handle_file

    from talkhead.ffmpeg import ffmpeg_exe

    driving = tmp_path / "driving.mp4"  # the astronaut's head panning for 1 s, with 1 s of the speech
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-loop", "1", "-framerate", "25", "-i", str(ASTRONAUT),
                    "-i", str(SPEECH), "-t", "1", "-vf", "crop=400:400:'40+20*sin(2*PI*t)':40,scale=256:256",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(driving)], check=True)
    video = client.predict(handle_file(str(ASTRONAUT)), handle_file(str(driving)), api_name="/reenact")
    info = probe(video["video"] if isinstance(video, dict) else video)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")  # the driving video's audio is kept
    assert info.fps == pytest.approx(25.0) and info.num_frames == 25
    assert (info.width, info.height) == (512, 512)  # the whole photo, as animate's default


def _chromium():
    """(chromium, chromedriver) paths, or skip when the browser test's dependencies are absent."""
    pytest.importorskip("selenium", reason="selenium is not installed")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no chromium + chromedriver (apt-get install chromium chromium-driver)")
    return browser, driver


def _submit_animate(driver, url: str):
    """Open the page at ``url``, upload the astronaut and the speech, wait for both previews and press
    Animate; returns the ``WebDriverWait`` (120 s) used."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 120)
    driver.get(url)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#photo input[type=file]")))
    driver.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(ASTRONAUT))
    driver.find_element(By.CSS_SELECTOR, "#speech input[type=file]").send_keys(str(SPEECH))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#photo img")))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#speech audio, #speech [data-testid=waveform-controls], #speech button[aria-label*=lay]")))
    wait.until(ec.element_to_be_clickable((By.ID, "animate-button"))).click()
    return wait


def _headless(width: int = 1280, height: int = 900):
    """A headless Chromium WebDriver with a ``width`` x ``height`` window (skips without one)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--mute-audio"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=opts)


def _in_view(driver, element) -> bool:
    """Whether ``element`` lies wholly inside the window without scrolling."""
    return driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return r.top >= 0 && r.left >= 0 && r.bottom <= window.innerHeight && r.right <= window.innerWidth;",
        element)


def test_page_in_headless_chromium(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _headless(1280, 900)
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(server.url)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#photo input[type=file]")))
        assert "talkhead" in driver.title
        assert _in_view(driver, driver.find_element(By.ID, "animate-button"))  # above the fold at 1280 x 900
        driver.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(ASTRONAUT))
        driver.find_element(By.CSS_SELECTOR, "#speech input[type=file]").send_keys(str(SPEECH))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#photo img")))  # uploaded and previewed
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#speech audio, #speech [data-testid=waveform-controls], #speech button[aria-label*=lay]")))
        # record every text the download box shows while the request runs (the progress bar's labels: it is
        # shown there, so that it does not cover the player)
        driver.execute_script("""
            window.__seen = [];
            new MutationObserver(() => {
                const panel = document.querySelector('#result-file');
                const text = panel ? panel.innerText : '';
                if (text && window.__seen[window.__seen.length - 1] !== text) window.__seen.push(text);
            }).observe(document.body, {subtree: true, childList: true, characterData: true});""")
        wait.until(ec.element_to_be_clickable((By.ID, "animate-button"))).click()
        link = wait.until(lambda d: next((a for a in d.find_elements(By.CSS_SELECTOR, "#result-file a")
                                          if ".mp4" in (a.get_attribute("href") or "")), None))
        assert "astronaut-talking.mp4" in driver.find_element(By.ID, "result-file").text.replace("\n", "")  # once written
        assert link.get_attribute("href").split("?")[0].endswith(".mp4")
        video = driver.find_element(By.CSS_SELECTOR, "#result video")  # the player streamed the segments
        wait.until(lambda d: d.execute_script("return arguments[0].readyState >= 1 && arguments[0].duration > 4",
                                              video))
        seen = "\n".join(driver.execute_script("return window.__seen"))
        assert "keypoints (MS-Sync)" in seen and "frames (FOMM + ffmpeg)" in seen  # progress: keypoints, then frames
        assert seen.index("keypoints (MS-Sync)") < seen.index("frames (FOMM + ffmpeg)")
        assert "/120 frames" in seen and "Error" not in seen
        duration = driver.execute_script("return arguments[0].duration", video)
        assert duration == pytest.approx(4.8, abs=0.15)
        driver.execute_script("window.scrollTo(0, 0)")
        shot = tmp_path / "ui-screenshot.png"
        driver.save_screenshot(str(shot))
        with Image.open(shot) as im:
            assert im.size[0] >= 1000
        if os.environ.get("TALKHEAD_UI_SCREENSHOT"):
            shutil.copy(shot, os.environ["TALKHEAD_UI_SCREENSHOT"])
    finally:
        driver.quit()


def test_ctrl_c_stops_the_server_and_removes_its_temporary_files(tiny_models_dir, tmp_path):
    """A server of its own (the module's is shared by the other tests, in any order): one request leaves
    an upload in its temporary root; Ctrl-C ends the process with 0 and removes the root."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    _need_ui_extra()
    (tmp_path / "tmp").mkdir()
    srv = Server(tiny_models_dir, tmp_path / "tmp")
    try:
        (root,) = srv.temp_roots()
        with pytest.raises(AppError, match="no face found"):
            Client(srv.url, verbose=False, download_files=str(tmp_path)).predict(
                handle_file(str(blank_photo(tmp_path / "wall.png"))), handle_file(str(SPEECH)), api_name="/animate")
        assert any(p.is_file() for p in root.rglob("*"))  # the uploads are in it while serving
        assert srv.stop(signal.SIGINT) == 0, "".join(srv.stderr)
    finally:
        srv.stop(signal.SIGKILL)
    assert srv.temp_roots() == []
    assert list((tmp_path / "tmp").iterdir()) == []  # nothing else either (Gradio's vibe_edit_history was left)
    assert "stopped; temporary files removed" in "".join(srv.stderr)


def test_sigterm_twice_exits_143_and_leaves_nothing_and_a_killed_servers_root_is_swept(tiny_models_dir, tmp_path):
    """SIGTERM as ``timeout``/``docker stop``/systemd send it: a second one during the clean-up does
    not cut it short, the process exits 143 (the CLI's rule) and its root is gone. A root left by a
    server that was SIGKILLed (its owner pid dead) is removed by the next start; one whose owner is
    alive is kept."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from talkhead.ui import OWNER_FILE

    _need_ui_extra()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, alive = tmp / "talkhead-ui-stale", tmp / "talkhead-ui-alive"
    for root, pid in ((stale, dead.pid), (alive, os.getpid())):
        (root / "gradio").mkdir(parents=True)
        (root / "gradio" / "upload.png").write_bytes(b"x")
        (root / OWNER_FILE).write_text(str(pid))
    srv = Server(tiny_models_dir, tmp)
    try:
        assert not stale.exists() and alive.exists()
        (root,) = [r for r in srv.temp_roots() if r != alive]
        with pytest.raises(AppError, match="no face found"):
            Client(srv.url, verbose=False, download_files=str(tmp_path)).predict(
                handle_file(str(blank_photo(tmp_path / "wall.png"))), handle_file(str(SPEECH)), api_name="/animate")
        assert any(p.is_file() for p in (root / "gradio").rglob("*"))
        srv.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "stopping (SIGTERM)" in "".join(srv.stderr), timeout=60, proc=srv.proc,
                 what="the server saying it stops")
        srv.proc.send_signal(signal.SIGTERM)  # the second one, while it cleans up
        assert srv.stop(signal.SIGTERM) == 143, "".join(srv.stderr)
    finally:
        srv.stop(signal.SIGKILL)
    assert not root.exists() and srv.temp_roots() == [alive]
    log = "".join(srv.stderr)
    assert "stopped; temporary files removed" in log and "Traceback" not in log
    assert f"removed {stale}" in log


def test_ui_warns_before_serving_beyond_this_computer(monkeypatch):
    """``--host`` other than loopback and ``--share`` each print one warning line before serving; a
    server stopped by SIGTERM exits 143."""
    from typer.testing import CliRunner

    import talkhead.ui as web
    from talkhead.cli import app

    calls = []
    monkeypatch.setattr(web, "require_gradio", lambda: None)
    monkeypatch.setattr(web, "serve", lambda opts, **kw: calls.append(kw) or signal.SIGTERM)
    result = CliRunner().invoke(app, ["ui", "--host", "0.0.0.0", "--share", "--landmarker", "dlib", "--offline"])
    assert result.exit_code == 143, result.output
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2 and "0.0.0.0" in warnings[0] and "no login" in warnings[0]
    assert "--share" in warnings[1] and "anyone" in warnings[1]
    assert calls and calls[0]["host"] == "0.0.0.0" and calls[0]["share"] is True
    result = CliRunner().invoke(app, ["ui", "--landmarker", "dlib", "--offline"])
    assert not [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    help_text = CliRunner().invoke(app, ["ui", "--help"]).output
    assert f"{web.MAX_UPLOAD_MB} MB" in help_text  # the help states the upload limit the page applies


def test_missing_checkpoints_show_on_the_page_with_the_fix(tmp_path, monkeypatch, capsys):
    """In-process serve() with an empty models dir: the page says what failed and how to fix it."""
    import tempfile
    import urllib.request

    _need_ui_extra()
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from talkhead.ui import serve

    empty = tmp_path / "models"
    empty.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stop, urls, errors, logs = threading.Event(), [], [], []

    def run():
        try:
            serve(AnimateOptions(models_dir=empty, offline=True, landmarker="dlib", device="cpu"),
                  port=_free_port(), ready=urls.append, stop=stop, share=True, log=logs.append)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: urls or not thread.is_alive(), timeout=STARTUP_TIMEOUT_S, what="the page serving")
        assert urls and not errors, errors
        assert len(list(tmp_path.glob("talkhead-ui-*"))) == 1
        config = urllib.request.urlopen(urls[0] + "config", timeout=30).read().decode()
        assert "could not be loaded" in config and "talkhead download" in config and "Traceback" not in config
        assert "```" not in config  # the fix is wrapped text, not a horizontally scrolling code box
        page = Client(urls[0], verbose=False, download_files=str(tmp_path))
        with pytest.raises(AppError, match="talkhead download"):
            page.predict(handle_file(str(ASTRONAUT)), handle_file(str(SPEECH)), api_name="/animate")
        try:
            driver = _headless(1280, 900)
        except pytest.skip.Exception:
            driver = None
        if driver is not None:  # the banner as a user sees it: wrapped, the command in view
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import WebDriverWait

            try:
                driver.get(urls[0])
                status = WebDriverWait(driver, 120).until(
                    lambda d: next((e for e in d.find_elements(By.ID, "status") if "talkhead download" in e.text),
                                   None))
                assert _in_view(driver, status), status.rect
                assert driver.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth", status)
                driver.save_screenshot(str(tmp_path / "banner.png"))
                if os.environ.get("TALKHEAD_UI_SCREENSHOT"):
                    shutil.copy(tmp_path / "banner.png", Path(os.environ["TALKHEAD_UI_SCREENSHOT"]).with_suffix(".banner.png"))
            finally:
                driver.quit()
    finally:
        stop.set()
        thread.join(120)  # guards against a hang only
    assert not thread.is_alive() and not errors
    assert list(tmp_path.glob("talkhead-ui-*")) == []
    # --share where no link can be made (no network here): one warning line in the log, Gradio's own
    # lines kept off stdout (where the URL goes); with a network the link is in the "running" line
    out = capsys.readouterr().out
    shared = [ln for ln in logs if ln.startswith("warning: no public share link")]
    assert len(shared) == 1 or any(".gradio.live" in ln for ln in logs), logs
    assert "Could not create share link" not in out and "\n" not in "".join(shared)
    assert not (ROOT / "talkhead" / "ui.pyi").exists()  # Gradio writes stubs beside modules that subclass components


# --------------------------------------------------------------------------------------- playing while it renders
@pytest.fixture
def gated_page(tmp_path, monkeypatch):
    """An in-process page over toy components whose render stops after 50 frames (2 s) until the test
    sets ``gate``: ``(url, gate, reached, animator, log)``; ``reached`` is set when the render waits there,
    ``log`` holds the animator's lines."""
    from talkhead.ui import can_stream

    _need_ui_extra()
    if not can_stream():
        pytest.skip("Gradio's streaming video output needs ffmpeg and ffprobe on PATH (apt-get install ffmpeg)")
    yield from _toy_page(tmp_path, monkeypatch, stream=True)


def _toy_page(tmp_path, monkeypatch, stream: bool):
    from helpers import ToyRenderer, astronaut_face, toy_motion
    from talkhead.pipeline import Pipeline
    from talkhead.ui import Animator, build_app

    gate, reached, log = threading.Event(), threading.Event(), []

    class GatedRenderer(ToyRenderer):
        rendered = 0

        def frames(self, source, kp_source, kp_driving):
            if self.rendered >= 50:
                reached.set()
                assert gate.wait(300), "the test never let the render go on"
            self.rendered += len(kp_driving)
            return super().frames(source, kp_source, kp_driving)

    base = AnimateOptions(device="cpu", batch_size=5, landmarker="dlib", offline=True)
    pipeline = Pipeline(base, renderer=GatedRenderer(), motion=toy_motion, landmarker=astronaut_face)
    animator = Animator(base, tmp_path / "requests", pipeline=pipeline, segment_s=1.0, log=log.append)
    animator._by_device["cpu"] = pipeline  # the injected components are "loaded"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    demo = build_app(animator, stream=stream)
    demo.queue(default_concurrency_limit=1)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    try:
        yield f"http://127.0.0.1:{port}/", gate, reached, animator, log
    finally:
        gate.set()
        demo.close(verbose=False)


def test_the_page_plays_the_video_while_it_renders_then_offers_the_mp4(gated_page, tmp_path):
    """Headless Chromium: with the render held after its first 2 s of frames, the result player is
    already playing (Gradio's streaming output, fed each finished segment); the MP4 to download appears
    only once the render is let go, and it is the whole video."""
    import urllib.request

    from selenium.webdriver.common.by import By

    url, gate, reached, _, _ = gated_page
    driver = _headless(1280, 900)
    try:
        wait = _submit_animate(driver, url)
        playing = ("const v = document.querySelector('#result video');"
                   "return !!v && v.currentTime > 0 && !v.paused && v.readyState >= 2;")
        wait.until(lambda d: d.execute_script(playing), "the player never played while the render was held")
        assert reached.is_set() and not gate.is_set()  # the render is held: the job cannot have finished
        assert not driver.find_elements(By.CSS_SELECTOR, "#result-file a[href*='.mp4']")  # nothing to download yet
        shot = tmp_path / "streaming.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("TALKHEAD_UI_SCREENSHOT"):
            shutil.copy(shot, Path(os.environ["TALKHEAD_UI_SCREENSHOT"]).with_suffix(".streaming.png"))

        gate.set()
        link = wait.until(lambda d: next((a for a in d.find_elements(By.CSS_SELECTOR, "#result-file a")
                                          if ".mp4" in (a.get_attribute("href") or "")), None))
        mp4 = tmp_path / "downloaded.mp4"
        mp4.write_bytes(urllib.request.urlopen(link.get_attribute("href"), timeout=60).read())
        info = probe(mp4)
        assert (info.video_codec, info.audio_codec, info.num_frames) == ("h264", "aac", 120)  # the CLI's MP4, whole
        assert "Error" not in driver.find_element(By.ID, "result").text

        # what the player was given, joined (Gradio's own file of the stream): every frame, and the speech
        # continuous and in sync with them across the segment boundaries (1 s, 2 s, ...)
        playlist = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"
                                         ".find(n => n.includes('playlist.m3u8'))")
        played = tmp_path / "played.mp4"
        played.write_bytes(urllib.request.urlopen(playlist.replace("playlist.m3u8", "playlist-file"), timeout=60).read())
        assert probe(played).num_frames == 120
        offsets = _speech_offsets_s(played, [0.3, 0.9, 1.9, 2.9, 3.9])  # windows across 1, 2, 3 and 4 s
        assert max(offsets) - min(offsets) < 1e-3, offsets  # no gap, no drift at the boundaries
        assert abs(offsets[0]) <= 1 / 25, offsets  # the sound where its frames are, within a frame
    finally:
        driver.quit()


def _speech_offsets_s(video: Path, at_s: list[float], window_s: float = 0.25, search_s: float = 0.2) -> list[float]:
    """Where SPEECH's sound at each of ``at_s`` is heard in ``video``, relative to the video's frames
    (seconds; positive = late): cross-correlation of 16 kHz mono windows, plus the streams' start times."""
    import json

    import soundfile as sf

    streams = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(video)],
                                        capture_output=True, check=True).stdout)["streams"]
    start = {s["codec_type"]: float(s.get("start_time", 0)) for s in streams}
    heard = np.frombuffer(subprocess.run(["ffmpeg", "-v", "error", "-i", str(video), "-vn", "-f", "s16le", "-ac", "1",
                                          "-ar", "16000", "-"], capture_output=True, check=True).stdout,
                          np.int16).astype(np.float32)
    speech, rate = sf.read(SPEECH, dtype="float32")
    win, search = int(window_s * rate), int(search_s * rate)
    offsets = []
    for t in at_s:
        ref = speech[int(t * rate):int(t * rate) + win]
        lo = max(0, int(t * rate) - search)
        part = heard[lo:int(t * rate) + win + search]
        scores = np.correlate(part, ref, mode="valid") / (np.sqrt(np.convolve(part ** 2, np.ones(win), "valid")) + 1e-9)
        heard_at = (lo + int(np.argmax(scores))) / rate + start["audio"]
        offsets.append(heard_at - t - start["video"])
    return offsets


def _toy_animator(tmp_path, renderer, segment_s=1.0):
    from helpers import astronaut_face, toy_motion
    from talkhead.pipeline import Pipeline
    from talkhead.ui import Animator

    base = AnimateOptions(device="cpu", batch_size=5)
    pipeline = Pipeline(base, renderer=renderer, motion=toy_motion, landmarker=astronaut_face)
    animator = Animator(base, tmp_path / "requests", pipeline=pipeline, segment_s=segment_s)
    animator._by_device["cpu"] = pipeline
    return animator


def test_a_render_error_after_segments_ends_the_stream_with_its_line_and_no_mp4(tmp_path):
    """Segments already played stay played; the error is the CLI's one line (upload names only); the MP4
    is never kept, and the request's folder is gone."""
    import torch

    from helpers import ToyRenderer
    from talkhead.errors import NonFiniteError

    class BadAfterTwoSeconds(ToyRenderer):
        rendered = 0

        def frames(self, source, kp_source, kp_driving):
            frames = super().frames(source, kp_source, kp_driving)
            self.rendered += len(kp_driving)
            # passes of 2 (the first) then 5 end at frames 52, 57, 62: the pass 57-61 goes bad, after the
            # frames of two whole 1 s segments (0-49) were written, with a few frames to spare for the writer
            if self.rendered > 57:
                frames[0, 0, 0, 0] = torch.inf
            return frames

    kept = []
    items = []
    animator = _toy_animator(tmp_path, BadAfterTwoSeconds())
    with pytest.raises(NonFiniteError) as err:
        for kind, path in animator.stream(str(ASTRONAUT), str(SPEECH), keep=kept.append):
            if kind != "wait":
                items.append(kind)
                assert Path(path).is_file() and probe(path).num_frames == 25  # each 1 s segment, playable
    assert items == ["segment", "segment"] and kept == []
    assert "\n" not in str(err.value) and err.value.stage == "render"
    assert list((tmp_path / "requests").iterdir()) == []


def test_closing_the_stream_stops_the_render(tmp_path):
    """The page's request ends early (Stop, a closed tab: Gradio closes the generator): the render stops
    at its next batch, nothing is kept, the request's folder is gone."""
    from helpers import ToyRenderer, wait_for

    gate, reached = threading.Event(), threading.Event()

    class Held(ToyRenderer):
        rendered = 0

        def frames(self, source, kp_source, kp_driving):
            if self.rendered >= 50:
                reached.set()
                assert gate.wait(300)
            self.rendered += len(kp_driving)
            return super().frames(source, kp_source, kp_driving)

    renderer, kept = Held(), []
    animator = _toy_animator(tmp_path, renderer)
    stream = animator.stream(str(ASTRONAUT), str(SPEECH), keep=kept.append)
    assert next(kind for kind, _ in stream if kind != "wait") == "segment"
    wait_for(reached.is_set, timeout=120, what="the render reaching the held batch")
    assert next(kind for kind, _ in stream if kind == "wait")  # (the second segment may come first)
    assert [kind for kind, _ in itertools.islice(stream, 2)] == ["wait", "wait"]  # held: nothing new, yet it yields
    stream.close()  # returns at once, the render still held
    (request,) = (tmp_path / "requests").iterdir()  # the render's: removed once it has stopped
    gate.set()
    wait_for(lambda: not request.exists(), timeout=120, what="the stopped render's folder going")
    assert renderer.rendered < 120 and kept == []  # stopped after the batch in hand
    # the next request runs (it waited for the stopped one), to the end
    items = [kind for kind, _ in animator.stream(str(ASTRONAUT), str(SPEECH), keep=kept.append)]
    assert items[-1] == "video" and items.count("segment") == 5 and len(kept) == 1


@pytest.fixture
def finished_only_page(tmp_path, monkeypatch):
    """The toy page as it is served without ffmpeg/ffprobe on PATH (``stream=False``), render not held."""
    _need_ui_extra()
    for page in _toy_page(tmp_path, monkeypatch, stream=False):
        page[1].set()
        yield page


def test_without_the_streaming_tools_the_page_shows_the_finished_mp4(finished_only_page):
    """Headless Chromium: the player gets the whole MP4 once it is written, and the download box offers it."""
    from selenium.webdriver.common.by import By

    url = finished_only_page[0]
    driver = _headless(1280, 900)
    try:
        wait = _submit_animate(driver, url)
        video = wait.until(lambda d: next((v for v in d.find_elements(By.CSS_SELECTOR, "#result video")
                                           if ".mp4" in (v.get_attribute("src") or "")), None))
        wait.until(lambda d: d.execute_script("return arguments[0].readyState >= 1 && arguments[0].duration", video))
        assert driver.execute_script("return arguments[0].duration", video) == pytest.approx(4.8, abs=0.1)
        wait.until(lambda d: any(".mp4" in (a.get_attribute("href") or "")
                                 for a in d.find_elements(By.CSS_SELECTOR, "#result-file a")))
    finally:
        driver.quit()


def test_stop_on_the_page_stops_the_render_and_offers_no_file(gated_page):
    """Headless Chromium: Stop while the render is held; once let go it stops at its next batch, its
    request folder goes, and no MP4 is offered."""
    from selenium.webdriver.common.by import By

    from helpers import wait_for

    url, gate, reached, animator, log = gated_page
    driver = _headless(1280, 900)
    try:
        _submit_animate(driver, url)
        wait_for(reached.is_set, timeout=120, what="the render reaching the held batch")
        (request,) = animator.workdir.iterdir()
        driver.find_element(By.ID, "animate-stop").click()
        # Gradio closes the request's generator at its next item (the render is held: a "wait")
        wait_for(lambda: any(line.startswith("request stopped") for line in log), timeout=60,
                 what="the request ending while its render is held")
        gate.set()
        wait_for(lambda: not request.exists(), timeout=120, what="the stopped render's folder going")
        assert animator._pipeline.renderer.rendered < 120
        assert not animator._lock.locked()
        assert not driver.find_elements(By.CSS_SELECTOR, "#result-file a[href*='.mp4']")
    finally:
        driver.quit()


# --------------------------------------------------------------------------------------- prepared sources
def test_a_request_with_the_last_photo_reuses_its_prepared_source(tmp_path):
    """Each request has its own Pipeline; the Animator's SourceCache is shared by them: the same photo
    content (uploaded again, under another name) is not searched nor encoded again and gives the same
    video; another frame option prepares it anew."""
    from helpers import ToyRenderer, astronaut_face, decode_frames, toy_motion
    from talkhead.pipeline import Pipeline
    from talkhead.ui import Animator

    calls = []
    base = AnimateOptions(device="cpu", frame="crop")
    animator = Animator(base, tmp_path / "work", pipeline=Pipeline(
        base, renderer=ToyRenderer(), motion=toy_motion, landmarker=lambda im: calls.append(1) or astronaut_face(im)))
    animator._by_device["cpu"] = animator._pipeline
    kept = []

    def keep(path):
        kept.append(tmp_path / f"kept{len(kept)}.mp4")
        shutil.copy(path, kept[-1])
        return str(kept[-1])

    uploads = [tmp_path / "a" / "me.png", tmp_path / "b" / "upload.png"]
    for up in uploads:
        up.parent.mkdir()
        shutil.copy(ASTRONAUT, up)
    animator.run(str(uploads[0]), str(SPEECH), keep=keep)
    animator.run(str(uploads[1]), str(SPEECH), keep=keep)
    assert len(calls) == 1 and animator._sources.hits == 1
    assert np.array_equal(decode_frames(kept[0])[1], decode_frames(kept[1])[1])
    animator.run(str(uploads[1]), str(SPEECH), keep=keep, frame="full")
    assert len(calls) == 2
