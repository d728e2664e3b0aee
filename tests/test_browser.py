"""The cluster-size playground works for a person in a browser: JupyterLab + headless Chromium, end to end.

    .ci/install-browser                  # once: Debian's chromium + chromium-driver (apt), selenium (pip)
    pytest -m browser tests/test_browser.py -s

Starts JupyterLab on a free localhost port (no token, throw-away config/runtime dirs, the `python3` kernel of
this interpreter) in a temporary directory holding a copy of notebooks/03_cluster_size_playground.ipynb,
opens it in headless Chromium through Selenium, runs the cells from the top with Shift+Enter until the
ipywidgets sliders and their plot have rendered (later cells, e.g. a real training run, are left alone),
captures the plot, moves a slider one step with the keyboard, and asserts the plot changed. A
screenshot goes to the test's temporary directory (and to $SELFSUP_BROWSER_ARTIFACTS when set, e.g. for CI
to upload). Every wait is time-bound; the server, its kernels, chromedriver and Chromium are torn down even
when the test fails. Skipped, with the reason, when chromium, chromedriver or selenium is missing.

Environment: SELFSUP_CHROMIUM / SELFSUP_CHROMEDRIVER override the binaries' paths;
SELFSUP_BROWSER_NOTEBOOK drives another notebook (any notebook with a slider and a plot).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
PLAYGROUND = ROOT / "notebooks" / "03_cluster_size_playground.ipynb"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1300"]


def _find(env: str, *names: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if Path(os.environ[env]).exists() else None
    return next((p for p in map(shutil.which, names) if p), None)


CHROMIUM = _find("SELFSUP_CHROMIUM", "chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = _find("SELFSUP_CHROMEDRIVER", "chromedriver")


def _skip_reason() -> str | None:
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not path]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        return f"{' and '.join(missing)} not found: run .ci/install-browser (apt chromium chromium-driver, pip selenium)"
    return None


def _notebook() -> Path:
    path = Path(os.environ.get("SELFSUP_BROWSER_NOTEBOOK", PLAYGROUND))
    if not path.exists():
        pytest.fail(f"{path} does not exist: the browser test drives the cluster-size playground notebook")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _kill_leftovers(marker: str) -> list[int]:
    """Kill (by pid) processes whose command line mentions `marker`, a temp path only we use."""
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
            except OSError:
                pass
    return killed


class Lab:
    """A JupyterLab server in its own process group, serving `root`."""

    def __init__(self, root: Path, scratch: Path):
        self.root, self.port = root, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = scratch / "jupyterlab.log"
        self.runtime = scratch / "runtime"
        config = scratch / "config"
        (config / "labconfig").mkdir(parents=True)
        # a fresh user: no workspace to restore, and no "would you like news?" toast over the notebook
        (config / "labconfig" / "page_config.json").write_text(json.dumps(
            {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
        env = dict(os.environ,
                   JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(self.runtime),
                   JUPYTER_DATA_DIR=str(scratch / "data"), IPYTHONDIR=str(scratch / "ipython"),
                   MPLCONFIGDIR=str(scratch / "mpl"), SELFSUP_LAB_DATA=os.environ.get(
                       "SELFSUP_LAB_DATA", str(scratch / "selfsup-data")),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
               "--ServerApp.open_browser=False", f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True",
               "--ServerApp.disable_check_xsrf=True", "--ServerApp.terminals_enabled=False",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly",
               # a safety net should this process be SIGKILLed before its teardown: idle kernels are culled
               # and the server then exits on its own after 10 minutes without activity
               "--MappingKernelManager.cull_idle_timeout=600", "--MappingKernelManager.cull_interval=60",
               "--ServerApp.shutdown_no_activity_timeout=600"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{_tail(self.log)}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s:\n{_tail(self.log)}")

    def stop(self) -> None:
        """SIGTERM the server's process group (it shuts its kernels down), SIGKILL what is left."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        # kernels run in sessions of their own; they are recognisable by their connection file's directory
        _kill_leftovers(str(self.runtime))


@pytest.fixture(autouse=True)
def sigterm_runs_teardown():
    """`timeout pytest ...` sends SIGTERM, which would kill pytest before any teardown: turn it into a
    KeyboardInterrupt, which pytest handles by tearing the fixtures down (server, kernels, browser)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def lab(tmp_path):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    notebook = _notebook()
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(notebook, root / notebook.name)
    server = Lab(root, tmp_path)
    try:
        server.wait_ready()
        server.notebook = notebook.name
        server.num_cells = len(json.loads(notebook.read_text())["cells"])
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for downloads
    profile = tmp_path / "chromium-profile"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(30)
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            _kill_leftovers(str(profile))  # a Chromium that outlived its driver


# --- driving the page ------------------------------------------------------------------------------------------

def wait_for(driver, condition, timeout: float, what: str, shots: Path | None = None, poll: float = 0.5):
    """Poll `condition()` until it returns something truthy; on timeout fail with `what` (and a screenshot)."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except WebDriverException as exc:  # stale elements while JupyterLab re-renders: try again
            last_error = exc
        time.sleep(poll)
    if shots is not None:
        driver.save_screenshot(str(shots / f"timeout-{what[:40].replace(' ', '_')}.png"))
    raise TimeoutError(f"waited {timeout:.0f} s for {what}" + (f" (last error: {last_error!r})" if last_error else ""))


ERROR_OUTPUTS_JS = r"""
return Array.from(document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
  .map(e => e.innerText).filter(t => /Traceback \(most recent call last\)|^\w*(Error|Exception):/m.test(t));
"""

# Every rendered picture in the notebook's outputs as a data URL: <img> (drawn onto a canvas, so the pixels
# are compared, not a blob: URL), <canvas> (ipympl and friends) and inline <svg>.
PLOTS_JS = """
const root = arguments[0] || document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)') || document;
const out = [];
for (const el of root.querySelectorAll('.jp-OutputArea img, .jp-OutputArea canvas, .jp-OutputArea svg')) {
  if (el.closest('.widget-slider') || (el.tagName === 'svg' && el.closest('button'))) continue;
  try {
    if (el.tagName === 'IMG') {
      if (!el.complete || !el.naturalWidth) continue;
      const c = document.createElement('canvas');
      c.width = el.naturalWidth; c.height = el.naturalHeight;
      c.getContext('2d').drawImage(el, 0, 0);
      out.push(c.toDataURL('image/png'));
    } else if (el.tagName === 'CANVAS') {
      if (el.width * el.height > 0) out.push(el.toDataURL('image/png'));
    } else if (el.getBoundingClientRect().width > 50) {
      out.push(el.outerHTML);
    }
  } catch (e) { out.push('unreadable:' + (el.src || el.tagName)); }
}
return out;
"""


# The cell whose output holds the first slider: the widget under test.
WIDGET_CELL_JS = """
const slider = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea .widget-slider');
return slider ? slider.closest('.jp-Cell') : null;
"""


def plot_signature(driver) -> tuple[str, ...]:
    """Hashes of the pictures in the widget's cell (of the whole notebook if there is no slider yet)."""
    cell = driver.execute_script(WIDGET_CELL_JS)
    return tuple(hashlib.sha1(s.encode()).hexdigest()[:12] for s in driver.execute_script(PLOTS_JS, cell))


def kernel_idle(driver) -> bool:
    """The status bar reads "Python 3 (ipykernel) | Idle" once the kernel has started and is waiting."""
    return bool(driver.execute_script("""
        const sel = '.jp-StatusBar-Widget, .jp-Toolbar-kernelStatus, .jp-Notebook-ExecutionIndicator';
        const txt = Array.from(document.querySelectorAll(sel))
            .map(e => (e.innerText || '') + ' ' + (e.getAttribute('title') || '')).join(' ');
        return /\\bIdle\\b/i.test(txt);
    """))


def running_cells(driver) -> int:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.jp-InputArea-prompt')).filter(e => /\\[\\*\\]/.test(e.innerText)).length;")


def dismiss_dialogs(driver) -> None:
    """Accept a kernel-selection (or any other) dialog JupyterLab may put up."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog .jp-Dialog-button.jp-mod-accept"):
        try:
            button.click()
        except Exception:
            pass


def widget_rendered(driver) -> bool:
    """A slider and a picture in the same cell's output."""
    return bool(driver.execute_script(WIDGET_CELL_JS)) and bool(plot_signature(driver))


def check_for_errors(driver) -> None:
    errors = driver.execute_script(ERROR_OUTPUTS_JS)
    if errors:
        raise AssertionError("a cell failed in the browser:\n" + errors[0][-3000:])


def run_cells_until_widget(driver, shots: Path, timeout: float, num_cells: int) -> int:
    """Shift+Enter through the notebook from the top, as a person would, until a slider and its plot have
    rendered; returns how many cells were run. Stopping there (instead of Run All) keeps later cells — a
    real training run, say — from occupying the kernel while the slider is being tested."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    deadline = time.monotonic() + timeout
    first = driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", first)
    first.find_element(By.CSS_SELECTOR, ".jp-Cell-inputWrapper .jp-InputPrompt, .jp-InputPrompt").click()
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()  # command mode, first cell selected
    for count in range(1, num_cells + 1):
        ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
        time.sleep(0.3)  # the prompt turns to [*] as soon as the execute request is sent

        def settled():
            check_for_errors(driver)
            return running_cells(driver) == 0

        wait_for(driver, settled, max(1.0, deadline - time.monotonic()), f"cell {count} to finish", shots)
        if widget_rendered(driver):
            return count
    raise AssertionError(f"ran all {num_cells} cells, but no slider with a plot appeared")


def slider_state(driver):
    """(slider, its handle, its readout text) of the first visible slider, scrolled into view; None if none."""
    from selenium.webdriver.common.by import By

    sliders = [s for s in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea .widget-slider") if s.is_displayed()]
    if not sliders:
        return None
    slider = sliders[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", slider)
    handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
    readouts = slider.find_elements(By.CSS_SELECTOR, ".widget-readout")
    return slider, handle, (readouts[0].text if readouts else "")


def _readout_changes(driver, before: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = slider_state(driver)
        if state and state[2] != before:
            return state[2]
        time.sleep(0.2)
    return before


def move_slider(driver, shots: Path) -> tuple[str, str]:
    """Move the first slider one step with the keyboard (→ on its focused handle; ← if it is at the right
    end); fall back to typing a value into its readout. Returns the readout before and after. One step
    only: every key press is a separate change, i.e. a separate recomputation in the kernel."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    slider, handle, before = wait_for(driver, lambda: slider_state(driver), 30, "a visible slider", shots)
    driver.execute_script("arguments[0].focus();", handle)
    handle.send_keys(Keys.ARROW_RIGHT)
    after = _readout_changes(driver, before)
    if after == before:
        handle.send_keys(Keys.ARROW_LEFT)
        after = _readout_changes(driver, before)
    if after == before:  # the keyboard is not wired up: type into the readout instead
        readout = slider.find_element(By.CSS_SELECTOR, ".widget-readout")
        readout.click()
        readout.send_keys(Keys.CONTROL, "a")
        value = float(before or 0)
        readout.send_keys(str(int(value) + 1 if value.is_integer() else round(value * 1.1, 3)), Keys.ENTER)
        after = _readout_changes(driver, before)
    return before, after


def test_playground_slider_redraws_the_plot(lab, browser, tmp_path):
    from selenium.webdriver.common.by import By

    shots = tmp_path / "screenshots"
    shots.mkdir()
    timings = {}
    t0 = time.monotonic()
    browser.get(f"{lab.url}/lab/tree/{lab.notebook}")
    try:
        wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell"), 90,
                 "the notebook to open", shots)
        wait_for(browser, lambda: (dismiss_dialogs(browser), kernel_idle(browser))[1], 90, "an idle kernel", shots)
        timings["open"] = time.monotonic() - t0

        t1 = time.monotonic()
        failure = None
        try:
            cells_run = run_cells_until_widget(browser, shots, timeout=300, num_cells=lab.num_cells)
        except AssertionError as exc:
            failure = str(exc)
        if failure:
            pytest.fail(failure, pytrace=False)
        wait_for(browser, lambda: kernel_idle(browser), 60, "an idle kernel after the widget cell", shots)
        time.sleep(1)  # let the first draw settle (an Output widget may redraw once on creation)
        before = wait_for(browser, lambda: plot_signature(browser), 30, "a plot", shots)
        timings[f"run {cells_run} cells + render"] = time.monotonic() - t1

        value_before, value_after = move_slider(browser, shots)
        assert value_after != value_before, f"the slider did not move (readout stayed {value_before!r})"
        t2 = time.monotonic()
        wait_for(browser, lambda: (lambda s: s and s != before)(plot_signature(browser)), 120,
                 "the plot to change after moving the slider", shots)
        timings["redraw"] = time.monotonic() - t2
        wait_for(browser, lambda: kernel_idle(browser), 120, "the kernel to finish redrawing", shots)
        time.sleep(0.5)
        after = plot_signature(browser)
        assert after and after != before, "the plot is back to what it was before the slider moved"
    finally:
        cell = browser.execute_script(WIDGET_CELL_JS)
        if cell is not None:  # the sliders and the plot in the picture
            browser.execute_script("arguments[0].querySelector('.jp-OutputArea').scrollIntoView({block: 'start'});",
                                   cell)
            time.sleep(0.3)
        screenshot = shots / "playground.png"
        browser.save_screenshot(str(screenshot))
        artifacts = os.environ.get("SELFSUP_BROWSER_ARTIFACTS")
        if artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            for png in shots.glob("*.png"):
                shutil.copy(png, Path(artifacts) / png.name)
    print(f"slider {value_before} → {value_after}; plot changed; screenshot {screenshot}; "
          + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
