"""The /ui dashboard in a real headless browser (Debian's chromium via Selenium) against a real server."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from torch import nn

from graft import Client
from graft.local_server import LocalServer

CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with LocalServer(tmp_path_factory.mktemp("ui") / "data") as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and DRIVER):
        pytest.fail("Debian's chromium and chromium-driver are needed: `make install` installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    yield driver
    driver.quit()


def _world(c: Client) -> tuple[str, str]:
    """A native teacher pair, a student task module, and a long transplant left running."""
    category = f"ui-{uuid.uuid4().hex[:6]}"
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    x = torch.randn(64, 6)
    feats = f(x[:2])
    c.push_module(f, x[:2], kind="category", name=f"{category}-f", category=category)
    c.push_module(nn.Linear(8, 3), feats, kind="task", name=f"{category}-cls", task="cls", category=category,
                  trained_on=[category])  # the teacher's own head: a native cell
    c.push_module(nn.Linear(8, 3), feats, kind="task", name="ui-generic-cls", task="cls")
    ds = c.push_dataset(x, name="ui-x", category=category)
    job = c.transplant(category_module=f"{category}-f@1", teacher_task_module=f"{category}-cls@1",
                       student_task_module="ui-generic-cls@1", dataset=ds["id"], method="distillation",
                       epochs=5000, train={"val_fraction": 0.0, "steps_per_epoch": 1})
    return category, job.id


def test_dashboard_renders_the_grid_and_live_job_progress(server: LocalServer, browser) -> None:
    assert httpx.get(server.url + "/ui").status_code == 200  # the page shell needs no token
    with Client(server.url, server.token) as c:
        category, job_id = _world(c)
        try:
            _check_page(browser, server, c, category, job_id)
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))  # also when the test failed
            if c.job_data(job_id)["status"] in ("queued", "running"):
                c.cancel(job_id)


def _check_page(browser, server: LocalServer, c: Client, category: str, job_id: str) -> None:
    # The page re-renders its tables every second: an element found a moment ago may be gone.
    wait = WebDriverWait(browser, 60, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException])
    browser.get(server.url + "/ui")
    wait.until(lambda d: "token" in d.find_element(By.ID, "status").text)  # 401 until a token is given
    browser.find_element(By.ID, "token").send_keys(server.token)
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()

    # The grid renders exactly the cells the API reports, each with its status.
    grid = c.grid()
    want = {(cell["category"], cell["task"]): cell["status"] for cell in grid["cells"]}
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .cell")) ==
               len(grid["categories"]) * len(grid["tasks"]))
    shown = {(e.get_attribute("data-category"), e.get_attribute("data-task")): e.get_attribute("data-status")
             for e in browser.find_elements(By.CSS_SELECTOR, "#grid .cell")}
    assert {k: v for k, v in shown.items() if k in want} == want
    assert shown[(category, "cls")] in ("native", "running", "transplanted")

    # The running job's progress moves on the page without a reload.
    row = f'tr.job[data-job-id="{job_id}"]'
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, row)
               and d.find_element(By.CSS_SELECTOR, row).get_attribute("data-status") == "running"
               and d.find_element(By.CSS_SELECTOR, row + " .progress-text").text)
    first = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, row + " .progress-text").text)
    later = wait.until(lambda d: (t := d.find_element(By.CSS_SELECTOR, row + " .progress-text").text)
                       not in ("", first) and t)
    assert int(later.split("/")[0]) > int(first.split("/")[0]) and later.endswith("/5000")

    # Clicking the job shows its loss curve.
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, row).click() or True)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#job-detail svg.curve polyline"))

    # Once the job has ended the cell is the teacher's own pair again; clicking it shows the pieces.
    if c.job_data(job_id)["status"] == "running":
        c.cancel(job_id)
    cell = f'#grid .cell[data-category="{category}"][data-task="cls"]'
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, cell).get_attribute("data-status") != "running")
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, cell).click() or True)
    wait.until(lambda d: f"{category}-f@1" in d.find_element(By.ID, "cell-detail").text)
    module = f'#modules tr.module[data-name="{category}-f"]'
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, module).click() or True)
    wait.until(lambda d: "torch_export" in d.find_element(By.ID, "module-detail").text)
    time.sleep(0.3)  # let the last repaint land in the screenshot taken by the caller


def test_dashboard_shows_an_adapters_lineage_and_why_the_cell_serves_it(server: LocalServer, browser) -> None:
    category = f"ul-{uuid.uuid4().hex[:6]}"
    torch.manual_seed(1)
    f = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    x = torch.randn(40, 6)
    feats = f(x[:2])
    with Client(server.url, server.token) as c:
        c.push_module(f, x[:2], kind="category", name=f"{category}-f", category=category)
        c.push_module(nn.Linear(8, 3), feats, kind="task", name=f"{category}-cls", task="cls",
                      category=category, trained_on=[category])
        c.push_module(nn.Linear(8, 3), feats, kind="task", name=f"{category}-generic", task="cls")
        ds = c.push_dataset(x, name="ul-x", category=category)
        job = c.transplant(category_module=f"{category}-f@1", teacher_task_module=f"{category}-cls@1",
                           student_task_module=f"{category}-generic@1", dataset=ds["id"],
                           method="distillation", steps=20, result_module=f"{category}-adapter")
        job.wait(progress=False)
        comp = c.compose(category, "cls")
    assert comp["adapter"] == {"name": f"{category}-adapter", "version": 1}

    wait = WebDriverWait(browser, 60, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException])
    browser.get(server.url + "/ui")  # the token is kept in the page's storage from the first test
    if not browser.find_element(By.ID, "token").get_attribute("value"):
        browser.find_element(By.ID, "token").send_keys(server.token)
        browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    cell = f'#grid .cell[data-category="{category}"][data-task="cls"]'
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, cell)
               and d.find_element(By.CSS_SELECTOR, cell).get_attribute("data-status") == "transplanted")
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, cell).click() or True)
    view = "#cell-detail .lineage-view"
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, view + ' dd[data-field="compositions"]'))

    def field(name: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, f'{view} dd[data-field="{name}"]').text

    assert field("adapter") == f"{category}-adapter@1"
    assert field("teacher") == f"{category}-cls@1" and field("student task module") == f"{category}-generic@1"
    assert field("dataset") == ds["id"] and job.id[:8] in field("job") and "distillation" in field("job")
    assert "teacher agreement" in field("metrics") and "held-out inputs" in field("metrics")
    assert comp["id"][:8] in field("compositions")
    selection = browser.find_element(By.CSS_SELECTOR, "#cell-detail .selection").text
    assert "picked by best held-out metric" in selection
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "dashboard-lineage.png"))
