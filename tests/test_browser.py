"""The workbook as a reader meets it: JupyterLab served on a free local port, notebook 01 (on a small area)
opened and run in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium), every
cell run without an error output and its figures rendered. CI installs the browser (``.ci/run``)."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                 "(apt-get install chromium chromium-driver; .ci/run installs them)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(port: int, proc, timeout: float = 90) -> None:
    import urllib.request

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("jupyter lab did not answer")


def test_notebook_01_runs_in_jupyterlab_in_a_real_browser(tmp_path, small_manifest):
    import papermill as pm
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    params = yaml.safe_load((ROOT / "tests" / "notebook_params.yaml").read_text())["synthetic"]
    params = {k: v for k, v in params.items() if k in ("synthetic_height", "synthetic_width", "seed")}
    work = tmp_path / "lab"
    work.mkdir()
    # the notebook as a reader would open it, with the small area's parameters filled in (not executed)
    pm.execute_notebook(str(ROOT / "notebooks" / "01_load_data.ipynb"), str(work / "01_load_data.ipynb"),
                        parameters=dict(params, study_area=str(small_manifest), run_dir=str(tmp_path / "run")),
                        prepare_only=True, progress_bar=False)
    port, token = _free_port(), "lithocore-browser-test"
    t_start = time.time()
    lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
                            "--ServerApp.open_browser=False", "--LabApp.news_url=None",
                            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
                           + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
                           cwd=work, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"),
                           env=dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config")))
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = None
    try:
        _wait_for_server(port, lab)
        driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
        driver.get(f"http://127.0.0.1:{port}/lab/tree/01_load_data.ipynb?token={token}")
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"))
        wait.until(lambda d: "Idle" in d.find_element(By.ID, "jp-main-statusbar").text)  # the kernel has started
        # Run > Run All Cells, through the menu as a reader would
        menus = [m for m in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel") if m.text.strip() == "Run"]
        menus[0].click()
        items = WebDriverWait(driver, 20).until(lambda d: [i for i in d.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel")
                                                            if i.text.strip() == "Run All Cells"])
        items[0].click()
        n_code = len(driver.find_elements(By.CSS_SELECTOR, ".jp-CodeCell"))

        def finished(d):
            prompts = [p.text.strip() for p in d.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputPrompt")]
            return len(prompts) == n_code and all(p.startswith("[") and p[1:-2].strip().isdigit() for p in prompts)

        WebDriverWait(driver, 300, poll_frequency=1).until(finished)
        errors = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        bad = [e.text[:300] for e in errors if any(w in e.text for w in ("Error", "Traceback", "Warning"))]
        assert not bad, f"error or warning outputs in the browser: {bad}"
        images = driver.find_elements(By.CSS_SELECTOR, ".jp-RenderedImage img")
        assert len(images) >= 2, "the notebook's figures did not render"
        assert all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 100", img)
                   for img in images), "an image failed to load"
        print(f"browser test: {n_code} code cells, {len(images)} figures, {time.time() - t_start:.0f} s")
    except Exception:
        if driver is not None:
            driver.save_screenshot(str(tmp_path / "browser_failure.png"))
        raise
    finally:
        if driver is not None:
            driver.quit()
        lab.terminate()
        try:
            lab.wait(timeout=20)
        except subprocess.TimeoutExpired:
            lab.kill()
