"""Headless Chromium opens notebook 07's explorer in JupyterLab, clicks it and checks what it shows.

Not part of pytest or CI (it needs a browser); tests/test_explorer.py tests the callbacks without one.

Needs: Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``)
and, in the venv, ``jupyterlab``, ``selenium`` and ipywidgets/jupyterlab_widgets (the test extra).
No browser download and no network: selenium drives /usr/bin/chromium through /usr/bin/chromedriver.
Run from the repository root::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python tools/browser_check_explorer.py [--workdir /tmp/explorer-check]

It copies notebooks/07_counterfactual_explanations.ipynb and NOTATION.md to ``--workdir``, starts
``jupyter lab`` there (headless, a random token, this checkout first on PYTHONPATH, JDM_QUICK=1, a
throw-away Jupyter config), and in Chromium:

1. runs notebook 07's set-up cells and its explorer cell, and checks that the widget renders as
   controls (not "Loading widget..." nor a text repr): a test-image box, target and sampler menus,
   the t*-auto box, the t* and scale sliders and the Explain button; that the scale shows the
   sampler's default (a log slider once rounded it to its grid in the browser);
2. checks the callbacks in the page: unticking "auto" enables the t* slider, a new sampler resets
   the scale to that sampler's default (``jdm.explorer.default_scale``);
3. clicks Explain four times, changing the controls between clicks (the default; target Sandal;
   image 3, t* 250 typed in, classifier guidance; the scale three steps down, arrow keys), and
   checks that each click draws one figure (image, counterfactual, difference map) and the verdict
   line; that the first verdict is the one ``jdm.explorer.explain`` gives here with the defaults,
   and later ones name the new target and the t* typed in; it times each click;
4. in a two-cell notebook of its own, gives the explorer one label too few and checks that the
   click's error reaches the student as a traceback in the widget's output, not swallowed.

Screenshots (PNG) and ``results.json`` (checks, timings, versions) land in ``--workdir``. Exits 1
when a check fails, 2 when JupyterLab or the browser cannot start.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "07_counterfactual_explanations.ipynb"
SETUP_CELLS = 2            # the code cells notebook 07's explorer cell needs: QUICK, then imports and model
EXPLORER_MARK = "counterfactual_explorer(model, evaluator, test_x, test_y)"
CELL_TIMEOUT = 600         # seconds: a set-up cell (model, evaluator, data) on a busy CPU
CLICK_TIMEOUT = 300        # seconds: one Explain click
ERROR_NAME = "explorer_error.ipynb"
ERROR_NOTEBOOK = """\
import jdm
from jdm.data import load_tensors
from jdm.evaluator import load_evaluator
from jdm.explorer import counterfactual_explorer
model, evaluator = jdm.load_pretrained("joint-fmnist-small-gpu"), load_evaluator()
test_x, test_y = load_tensors("fashion_mnist", train=False)
""", """\
# one label too few: test image 5 has none, so a click must show the student an IndexError
counterfactual_explorer(model, evaluator, test_x[:6], test_y[:5])
"""

# JavaScript run in the page: JupyterLab's app object (exposed with --LabApp.expose_app_in_browser).
# Each finds its notebook by path (arguments[0]), not as "the current tab", which may still be another.
PANEL = """
const app = window.jupyterapp;
const panel = app && Array.from(app.shell.widgets('main')).find(
    w => w.context && w.context.path === arguments[0]);
"""
JS_READY = PANEL + """
const kernel = panel && panel.sessionContext.session && panel.sessionContext.session.kernel;
return Boolean(kernel && kernel.status === 'idle');
"""
JS_CELLS = PANEL + """
return panel.content.widgets.map(c => [c.model.type, c.model.sharedModel.getSource()]);
"""
JS_RUN_CELL = PANEL + """
const done = arguments[arguments.length - 1];
app.shell.activateById(panel.id);
panel.content.activeCellIndex = arguments[1];
app.commands.execute('notebook:run-cell').then(() => done(null), err => done(String(err)));
"""
JS_CELL_RUN = PANEL + """
const cell = panel.content.widgets[arguments[1]];
const errors = cell.model.outputs.toJSON().filter(o => o.output_type === 'error');
return [cell.model.executionCount, errors.map(o => o.ename + ': ' + o.evalue)];
"""
JS_CELL_NODE = PANEL + """
const cell = panel.content.widgets[arguments[1]];
panel.content.activeCellIndex = arguments[1];
cell.node.scrollIntoView({block: 'start'});
return cell.node;
"""
JS_CELL_OUTPUT_TEXT = PANEL + """
const cell = panel.content.widgets[arguments[1]];
return cell.outputArea ? cell.outputArea.node.innerText : '';
"""


class Checks:
    """Named pass/fail results; a failed one is reported, never raised, so later checks still run."""

    def __init__(self):
        self.results: list[dict] = []

    def __call__(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"[{'PASS' if ok else 'FAIL'}] {name}" + (f" — {detail}" if detail else ""), flush=True)
        return bool(ok)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.results if not r["ok"]]


def start_lab(workdir: Path, port: int, token: str, log: Path) -> subprocess.Popen:
    """``jupyter lab`` in ``workdir``, headless, with a throw-away config that hides the news toast."""
    config = workdir / ".jupyter-config"   # hidden: stays out of the file browser
    (config / "labconfig").mkdir(parents=True, exist_ok=True)
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", JDM_QUICK="1", JUPYTER_CONFIG_DIR=str(config),
               JUPYTERLAB_SETTINGS_DIR=str(config / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(config / "workspaces"))
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--port-retries=0",
         "--ip=127.0.0.1", f"--ServerApp.token={token}", "--allow-root", f"--ServerApp.root_dir={workdir}",
         "--LabApp.expose_app_in_browser=True"],
        cwd=workdir, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return lab
        except OSError:
            if lab.poll() is not None:
                break
            time.sleep(1)
    lab.terminate()
    raise RuntimeError(f"jupyter lab did not start; see {log}")


def start_browser(chromium: str, chromedriver: str) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1300,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_script_timeout(CELL_TIMEOUT)
    return driver


def open_notebook(driver, port: int, token: str, name: str) -> None:
    """Open notebook ``name`` in a workspace of its own (no tab left over from another) and wait
    for its kernel."""
    workspace = Path(name).stem
    driver.get(f"http://127.0.0.1:{port}/lab/workspaces/{workspace}/tree/{name}?reset&token={token}")
    WebDriverWait(driver, 180, poll_frequency=1).until(lambda d: d.execute_script(JS_READY, name))


def run_cell(driver, name: str, index: int) -> float:
    """Run code cell ``index`` of notebook ``name`` as Shift+Enter would; returns its wall time in
    seconds. Raises RuntimeError if it did not run or raised."""
    start = time.perf_counter()
    error = driver.execute_async_script(JS_RUN_CELL, name, index)
    if error:
        raise RuntimeError(f"{name} cell {index}: {error}")
    WebDriverWait(driver, CELL_TIMEOUT, poll_frequency=0.5).until(
        lambda d: d.execute_script(JS_READY, name) and d.execute_script(JS_CELL_RUN, name, index)[0])
    seconds = time.perf_counter() - start
    _, errors = driver.execute_script(JS_CELL_RUN, name, index)
    if errors:
        raise RuntimeError(f"{name} cell {index} raised {errors}")
    return seconds


def find_widget(driver, name: str, cell_index: int, checks: Checks):
    """The explorer's widget in the output of cell ``cell_index`` of ``name`` (a WebElement), or None."""
    cell = driver.execute_script(JS_CELL_NODE, name, cell_index)
    try:
        WebDriverWait(driver, 60, poll_frequency=0.5).until(
            lambda d: cell.find_elements(By.CSS_SELECTOR, ".jupyter-widgets.widget-vbox"))
    except TimeoutException:
        text = driver.execute_script(JS_CELL_OUTPUT_TEXT, name, cell_index)
        checks("the widget renders", False, f"no widget in the output; it reads {text[:300]!r}")
        return None
    text = driver.execute_script(JS_CELL_OUTPUT_TEXT, name, cell_index)
    checks("the widget renders", "Loading widget" not in text and "VBox(" not in text,
           "controls, no 'Loading widget...' and no text repr")
    return cell.find_element(By.CSS_SELECTOR, ".jupyter-widgets.widget-vbox")


def control(widget, kind: str, description: str):
    """The input element of the control whose label reads ``description``."""
    selector = {"text": "input", "dropdown": "select", "checkbox": "input[type=checkbox]",
                "slider": ".widget-readout"}[kind]
    css = {"text": ".widget-text", "dropdown": ".widget-dropdown", "checkbox": ".widget-checkbox",
           "slider": ".widget-slider"}[kind]
    for box in widget.find_elements(By.CSS_SELECTOR, css):
        if box.text.strip().split("\n")[0].strip() == description:
            return box.find_element(By.CSS_SELECTOR, selector)
    raise LookupError(f"no {kind} control labelled {description!r}")


def slider_disabled(widget, description: str) -> bool:
    readout = control(widget, "slider", description)
    return readout.get_attribute("contenteditable") != "true"


def type_into(driver, element, text: str) -> None:
    """Replace a text box's or slider readout's content and commit it (Enter), as a student would."""
    element.click()
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(text, Keys.ENTER)
    time.sleep(0.5)   # the change travels to the kernel, whose observers may answer (t*, scale)


def step_slider(widget, description: str, key: str, times: int) -> None:
    """Move a slider by ``times`` steps with the arrow keys on its handle, as a student would."""
    for box in widget.find_elements(By.CSS_SELECTOR, ".widget-slider"):
        if box.text.strip().split("\n")[0].strip() == description:
            handle = box.find_element(By.CSS_SELECTOR, ".noUi-handle")
            handle.click()
            for _ in range(times):
                handle.send_keys(key)
            time.sleep(1)
            return
    raise LookupError(f"no slider labelled {description!r}")


def output_state(widget) -> tuple[str, str]:
    """(the figure's data URL, the output's text) in the explorer's output area."""
    output = widget.find_element(By.CSS_SELECTOR, ".widget-output")
    images = output.find_elements(By.TAG_NAME, "img")
    return (images[-1].get_attribute("src") if images else ""), output.text


def click_explain(driver, widget, label: str, timeout: float = CLICK_TIMEOUT) -> tuple[float, str, int]:
    """Click Explain; wait until the output changes. Returns (seconds, the output's text, images)."""
    before = output_state(widget)
    button = widget.find_element(By.XPATH, ".//button[normalize-space()='Explain']")
    start = time.perf_counter()
    button.click()
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.2).until(
            lambda d: output_state(widget) != before and (
                "evaluator:" in output_state(widget)[1] or "Error" in output_state(widget)[1]
                or "cannot explain" in output_state(widget)[1]))
    except TimeoutException:
        pass
    seconds = time.perf_counter() - start
    time.sleep(0.5)   # let the last message land
    output = widget.find_element(By.CSS_SELECTOR, ".widget-output")
    text, n_images = output.text, len(output.find_elements(By.TAG_NAME, "img"))
    print(f"  click '{label}': {seconds:.1f} s, {n_images} image(s); output: {text.strip()[-200:]!r}",
          flush=True)
    return seconds, text, n_images


def verdict_of(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("evaluator:")]
    return lines[-1] if lines else ""


def check_notebook_07(driver, port, token, workdir: Path, checks: Checks, timings: dict) -> None:
    """Set-up cells and the explorer cell of the copy of notebook 07; the controls; four clicks."""
    import jdm
    from jdm.data import load_tensors
    from jdm.evaluator import load_evaluator
    from jdm.explorer import default_scale, explain

    open_notebook(driver, port, token, NOTEBOOK)
    cells = driver.execute_script(JS_CELLS, NOTEBOOK)
    code = [i for i, (kind, _) in enumerate(cells) if kind == "code"]
    explorer = [i for i, (kind, source) in enumerate(cells) if kind == "code" and EXPLORER_MARK in source]
    if not checks("notebook 07 has one explorer cell", len(explorer) == 1, f"cells {explorer}"):
        return
    for index in code[:SETUP_CELLS] + explorer:
        timings[f"notebook 07 cell {index}"] = round(run_cell(driver, NOTEBOOK, index), 1)
        print(f"  ran cell {index} in {timings[f'notebook 07 cell {index}']} s", flush=True)
    widget = find_widget(driver, NOTEBOOK, explorer[0], checks)
    if widget is None:
        return
    driver.save_screenshot(str(workdir / "explorer_page_rendered.png"))
    widget.screenshot(str(workdir / "explorer_rendered.png"))

    found = {}
    for kind, label in (("text", "test image"), ("dropdown", "target"), ("dropdown", "sampler"),
                        ("checkbox", "t* auto (per image)"), ("slider", "t*"), ("slider", "γ or s")):
        try:
            found[label] = control(widget, kind, label)
        except LookupError as err:
            checks(f"control {label!r} present", False, str(err))
    buttons = widget.find_elements(By.XPATH, ".//button[normalize-space()='Explain']")
    if not checks("all six controls and the Explain button render", len(found) == 6 and len(buttons) == 1,
                  f"{sorted(found)} and {len(buttons)} button(s)"):
        return
    checks("t* starts disabled (auto is ticked)", slider_disabled(widget, "t*"))

    model = jdm.load_pretrained("joint-fmnist-small-gpu")
    shown, expected = control(widget, "slider", "γ or s").text, default_scale(model, "representation")
    checks("the scale starts at the sampler's default", shown == f"{expected:g}",
           f"readout {shown}, default_scale {expected:g}")
    clicks = []
    seconds, text, n_images = click_explain(driver, widget, "defaults")
    clicks.append(("defaults: image 0, target Trouser, t* auto, representation", seconds))
    first = verdict_of(text)
    checks("click 1 draws one figure and the verdict", n_images == 1 and "p(Trouser)" in first, first)
    test_x, test_y = load_tensors("fashion_mnist", train=False)   # what notebook 07 passes
    same = explain(model, load_evaluator(), test_x, test_y, index=0, target=1).verdict()
    checks("click 1 shows what explain() gives with the defaults", first == same, f"explain(): {same}")
    widget.screenshot(str(workdir / "explorer_click1.png"))

    Select(control(widget, "dropdown", "target")).select_by_visible_text("Sandal")
    seconds, text, n_images = click_explain(driver, widget, "target Sandal")
    clicks.append(("target Sandal", seconds))
    second = verdict_of(text)
    checks("a new target changes the verdict", n_images == 1 and "p(Sandal)" in second and second != first,
           second)
    widget.screenshot(str(workdir / "explorer_click2.png"))
    driver.save_screenshot(str(workdir / "explorer_page_click2.png"))

    control(widget, "checkbox", "t* auto (per image)").click()
    time.sleep(1)
    checks("unticking auto enables the t* slider", not slider_disabled(widget, "t*"))
    type_into(driver, control(widget, "slider", "t*"), "250")
    type_into(driver, control(widget, "text", "test image"), "3")
    Select(control(widget, "dropdown", "sampler")).select_by_visible_text("representation-x0")
    time.sleep(1.5)
    shown = float(control(widget, "slider", "γ or s").text)
    expected = default_scale(model, "representation-x0")
    checks("a new sampler resets the scale to its default", abs(shown - expected) <= 1e-3 * expected,
           f"readout {shown:g}, default_scale {expected:g}")
    Select(control(widget, "dropdown", "sampler")).select_by_visible_text("classifier")
    time.sleep(1.5)
    seconds, text, n_images = click_explain(driver, widget, "image 3, t* 250, classifier")
    clicks.append(("image 3, t* 250 by hand, classifier guidance", seconds))
    third = verdict_of(text)
    checks("t* typed in reaches the sampler", n_images == 1 and "t* 250," in third and third != second, third)

    step_slider(widget, "γ or s", Keys.ARROW_LEFT, 3)   # 300 → 100 → 30 → 10
    shown = control(widget, "slider", "γ or s").text
    seconds, text, n_images = click_explain(driver, widget, "scale 10")
    clicks.append((f"scale three steps down (readout {shown})", seconds))
    fourth = verdict_of(text)
    checks("a new scale changes the counterfactual",
           n_images == 1 and shown == "10" and fourth and fourth != third,
           f"readout {shown}; {fourth}")
    widget.screenshot(str(workdir / "explorer_click4.png"))
    timings["clicks"] = [{"click": label, "seconds": round(s, 1)} for label, s in clicks]


def check_error_reaches_the_student(driver, port, token, workdir: Path, checks: Checks, timings: dict):
    """A notebook of its own: the explorer with one label too few; a click on the last image."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in ERROR_NOTEBOOK])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, workdir / ERROR_NAME)
    open_notebook(driver, port, token, ERROR_NAME)
    timings["error notebook set-up"] = round(run_cell(driver, ERROR_NAME, 0), 1)
    run_cell(driver, ERROR_NAME, 1)
    widget = find_widget(driver, ERROR_NAME, 1, checks)
    if widget is None:
        return
    type_into(driver, control(widget, "text", "test image"), "5")
    seconds, text, _ = click_explain(driver, widget, "image 5 without a label")
    timings["error click"] = round(seconds, 1)
    checks("an error in a click is shown in the widget's output", "IndexError" in text,
           text.strip().splitlines()[-1] if text.strip() else "empty output")
    widget.screenshot(str(workdir / "explorer_error.png"))


def versions(chromium: str) -> dict:
    from importlib.metadata import version
    browser = subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()
    found = {"chromium": re.sub(r"\s+built on.*", "", browser)}
    for package in ("jupyterlab", "ipywidgets", "jupyterlab_widgets", "selenium", "torch"):
        found[package] = version(package)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/explorer-check"))
    parser.add_argument("--port", type=int, default=8899)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for name in (NOTEBOOK, "NOTATION.md"):
        shutil.copy(ROOT / "notebooks" / name, workdir / name)
    token = secrets.token_hex(16)
    checks, timings = Checks(), {}
    try:
        lab = start_lab(workdir, args.port, token, workdir / "jupyterlab.log")
    except RuntimeError as err:
        print(f"cannot start: {err}", file=sys.stderr)
        return 2
    try:
        driver = start_browser(args.chromium, args.chromedriver)
    except Exception as err:   # noqa: BLE001 — nothing was checked: say why and stop
        print(f"cannot start the browser: {err}", file=sys.stderr)
        lab.terminate()
        return 2
    try:
        check_notebook_07(driver, args.port, token, workdir, checks, timings)
        check_error_reaches_the_student(driver, args.port, token, workdir, checks, timings)
    except Exception as err:   # noqa: BLE001 — a page that broke mid-way is a failed check
        checks("the page answered every step", False, f"{type(err).__name__}: {err}")
        driver.save_screenshot(str(workdir / "explorer_failure.png"))
    finally:
        driver.quit()
        lab.terminate()
        lab.wait(30)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "versions": versions(args.chromium),
              "checks": checks.results, "timings_s": timings}
    (workdir / "results.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(json.dumps(report["versions"]), json.dumps(timings, ensure_ascii=False), sep="\n")
    print(f"{len(checks.results) - len(checks.failed)}/{len(checks.results)} checks passed; "
          f"screenshots and results.json in {workdir}")
    return 1 if checks.failed or not checks.results else 0


if __name__ == "__main__":
    sys.exit(main())
