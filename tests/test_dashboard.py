"""The dashboard in a real browser (headless Chromium from Debian, driven by Selenium with the Debian
chromedriver), and `munet graph`: the system graph shows every task, its path and the layers tasks
share; the tasks table and a task's candidates are there; nothing is loaded from outside the server."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from munet_client import MunetClient
from munet_client.cli import main as cli
from tests.helpers import image_folder, make_app

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_vit):
    tmp = tmp_path_factory.mktemp("dashboard")
    app = make_app(tmp / "store", tiny_vit, http_port=0)
    client = MunetClient(f"127.0.0.1:{app.port}", timeout=60)
    for name, classes, seed in (("digits", 3, 0), ("more-digits", 4, 1)):
        folder, _ = image_folder(tmp / name, classes=classes, per_class=10, seed=seed)
        op = client.add_task_from_folder(name, folder, budget={"seconds": 20, "generations": 1}, seed=seed)
        assert client.wait(op.name, timeout=300).state == "SUCCEEDED"
    yield app, client
    client.close()
    app.stop(0)


def test_munet_graph_draws_every_task_and_what_they_share(served, tmp_path, capsys):
    app, _ = served
    out = tmp_path / "system.svg"
    assert cli(["--target", f"127.0.0.1:{app.port}", "graph", "--out", str(out)]) == 0
    assert "2 tasks" in capsys.readouterr().out
    svg = out.read_text()
    assert svg.startswith("<svg") and svg.count('class="path"') == 2
    assert 'data-task="digits"' in svg and 'data-task="more-digits"' in svg
    assert 'data-shared="true"' in svg and "http" not in svg.replace("http://www.w3.org/2000/svg", "")


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs the Debian chromium and chromium-driver packages")
def test_dashboard_in_a_real_browser(served, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app, _ = served
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.get(f"http://127.0.0.1:{app.http_port}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#graph polyline.path")) == 2)
        paths = {e.get_attribute("data-task") for e in driver.find_elements(By.CSS_SELECTOR, "#graph polyline.path")}
        assert paths == {"digits", "more-digits"}
        shared = driver.find_elements(By.CSS_SELECTOR, '#graph g.layer[data-shared="true"]')
        assert shared and any(
            {"digits", "more-digits"} <= set(e.get_attribute("data-users").split(", ")) for e in shared
        )
        rows = driver.find_elements(By.CSS_SELECTOR, "#tasks tr.task")
        assert [r.get_attribute("data-task") for r in rows] == ["digits", "more-digits"]
        assert "%" in rows[0].text  # its validation accuracy
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ops tr.op"))
        ops = driver.find_element(By.ID, "ops").text
        assert "SUCCEEDED" in ops and "add" in ops and "published version" in ops  # kind and result columns
        assert "v1" in rows[0].text  # the serving version and its kind
        assert "Idle improvement is off" in driver.find_element(By.ID, "queue").text
        rows[1].click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail circle.candidate"))
        assert "Task more-digits" in driver.find_element(By.ID, "detail-title").text
        assert "head" in driver.find_element(By.ID, "detail-body").text
        versions = driver.find_elements(By.CSS_SELECTOR, "#detail tr.version")  # AddTask's: the first probe, and any better
        assert versions and sum("(served)" in v.text for v in versions) == 1
        steps = driver.find_elements(By.CSS_SELECTOR, "#detail circle.published")  # accuracy over time, a step a version
        assert len(steps) == len(versions)
        ticks = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#detail text.tick")]
        assert any(t.endswith("%") for t in ticks) and any(t in ("0", "100", "1.0k", "10.0k") for t in ticks)  # axis values
        # Every resource came from the server itself (it must work offline).
        urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert urls and all(u.startswith(f"http://127.0.0.1:{app.http_port}/") for u in urls), urls
        time.sleep(0.5)
        # MUNET_DASHBOARD_SCREENSHOT=docs/dashboard.png refreshes the README's picture.
        shot = Path(os.environ.get("MUNET_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()
