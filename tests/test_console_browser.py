"""The operator console in a real headless Chromium against a real gunicorn: sign in, make a
job, watch a worker's pushes move its progress bar, read its timeline, cancel, remove, a
forged form refused, the API docs rendered, and nothing loaded from beyond 127.0.0.1.

It saves screenshots of the jobs page and of a job page in build/screenshots/, or in the
folder SCREENSHOTS_DIR names (``make screenshots``: docs/screenshots/)."""

from __future__ import annotations

import json
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from conftest import ROOT, skip_without

from jobapi.extensions import db
from jobapi.models import STATES
from jobapi.tokens import create_token

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# build/ is ignored by git, so a test run leaves the tree as it was.
SCREENSHOTS = ROOT / os.environ.get("SCREENSHOTS_DIR", "build/screenshots")

for _program, _package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
    if not os.access(_program, os.X_OK):
        skip_without(Path(_program).name, "the console in a real browser", _package)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.e2e

# The pages refresh every 2 s: anything live shows within a few periods.
LIVE_TIMEOUT = 10
HTTP_TIMEOUT = 10
# URLs the browser asked for during the whole module, from Chromium's network log.
REQUESTED: list[str] = []


@pytest.fixture
def tokens(app) -> dict[str, str]:
    """An operator's and a runner's token (every table is emptied after each test)."""
    with app.app_context():
        made = {
            "operator": create_token(db.session, name="console-ops", role="operator").secret,
            "runner": create_token(db.session, name="console-runner", role="runner").secret,
        }
        db.session.commit()
    return made


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[webdriver.Chrome]:
    """Headless Chromium, offline: every host name fails to resolve, every address but loopback
    goes to a proxy that is not there, and it fetches nothing in the background."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--proxy-server=127.0.0.1:9",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    with pytest.MonkeyPatch.context() as patch:
        # Nothing may be downloaded: the driver's path is given, and Selenium stays offline.
        patch.setenv("SE_OFFLINE", "true")
        patch.setenv("SE_AVOID_STATS", "true")
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(autouse=True)
def _record_requests(browser) -> Iterator[None]:
    yield
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            REQUESTED.append(message["params"]["request"]["url"])


def wait_until(driver, condition: Callable, timeout: float = LIVE_TIMEOUT):
    return WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    ).until(condition)


def click(driver, by: str, value: str) -> None:
    """Click an element, finding it again if a live refresh replaced it meanwhile."""
    wait_until(driver, lambda d: d.find_element(by, value).click() or True)


def sign_in(driver, url: str, token: str) -> None:
    driver.get(f"{url}/console/sign-in")
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    field.submit()


def signed_in(driver, url: str, token: str) -> None:
    driver.get(f"{url}/console/")
    if not driver.find_elements(By.ID, "operator-name"):
        sign_in(driver, url, token)
        wait_until(driver, lambda d: d.find_elements(By.ID, "operator-name"))


class Worker(threading.Thread):
    """A job's worker: pushes each status it is handed, with the job's key, and reports the answer."""

    def __init__(self, url: str, job_id: str, key: str) -> None:
        super().__init__(daemon=True)
        self.endpoint = f"{url}/api/jobs/{job_id}/status"
        self.auth = (f"job-{job_id}", key)
        self.inbox: queue.Queue = queue.Queue()
        self.answers: queue.Queue = queue.Queue()

    def run(self) -> None:
        while (body := self.inbox.get()) is not None:
            try:
                self.answers.put(requests.post(self.endpoint, json=body, auth=self.auth, timeout=HTTP_TIMEOUT))
            except requests.RequestException as error:
                self.answers.put(error)

    def push(self, state: str, stage: str, progress: int, **extra) -> requests.Response:
        self.inbox.put({"state": state, "stage": stage, "progress": progress, **extra})
        answer = self.answers.get(timeout=HTTP_TIMEOUT * 2)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def stop(self) -> None:
        self.inbox.put(None)
        self.join(timeout=HTTP_TIMEOUT)


def push(url: str, job_id: str, key: str, state: str, stage: str, progress: int, **extra) -> requests.Response:
    return requests.post(
        f"{url}/api/jobs/{job_id}/status", auth=(f"job-{job_id}", key), timeout=HTTP_TIMEOUT,
        json={"state": state, "stage": stage, "progress": progress, **extra},
    )


def row_shows(job_id: str, state: str, progress: int) -> Callable:
    def check(driver) -> bool:
        rows = driver.find_elements(By.ID, f"job-{job_id}")
        if not rows:
            return False
        bar = rows[0].find_element(By.TAG_NAME, "progress")
        badge = rows[0].find_element(By.CSS_SELECTOR, ".state")
        return bar.get_attribute("value") == str(progress) and badge.text == state
    return check


def test_sign_in_refuses_a_wrong_token_and_takes_an_operator_token(browser, live_server, tokens):
    browser.delete_all_cookies()
    browser.get(f"{live_server.url}/")
    # / leads to the console, which asks for a token.
    assert urlsplit(browser.current_url).path == "/console/sign-in"
    sign_in(browser, live_server.url, "jobapi_op_" + "0" * 64)
    refusal = wait_until(browser, lambda d: d.find_element(By.ID, "sign-in-refusal"))
    assert refusal.text == "Invalid or revoked token"
    assert not browser.find_elements(By.ID, "operator-name")

    sign_in(browser, live_server.url, tokens["runner"])
    refusal = wait_until(browser, lambda d: d.find_element(By.ID, "sign-in-refusal"))
    assert "operator" in refusal.text and not browser.find_elements(By.ID, "operator-name")

    sign_in(browser, live_server.url, tokens["operator"])
    name = wait_until(browser, lambda d: d.find_element(By.ID, "operator-name"))
    assert name.text == "console-ops"
    assert urlsplit(browser.current_url).path == "/console/"
    cookie = browser.get_cookie("jobapi_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"


def test_make_a_job_and_watch_its_progress_live(browser, live_server, tokens, make_job):
    url = live_server.url
    signed_in(browser, url, tokens["operator"])
    # Other jobs, so the jobs page shows what it looks like with several states.
    others = {
        "waiting": make_job(task="create_subtraction", user="igboyes", proc=2, mem=4),
        "running": make_job(task="build_index", user="carol", args={"ref": "GRCh38"}, proc=8, mem=32),
        "error": make_job(task="pathoscope", user="dave"),
        "cancelled": make_job(task="nuvs", user="erin"),
        "preparing": make_job(task="build_index", user="frank"),
        "terminated": make_job(task="pathoscope", user="grace"),
    }
    assert push(url, others["preparing"].id, others["preparing"].key, "preparing", "download_reference", 5).status_code == 200
    assert push(url, others["terminated"].id, others["terminated"].key, "running", "map_isolates", 70).status_code == 200
    assert push(url, others["terminated"].id, others["terminated"].key, "terminated", "map_isolates", 70).status_code == 200
    assert push(url, others["running"].id, others["running"].key, "running", "bowtie_build", 35).status_code == 200
    assert push(url, others["error"].id, others["error"].key, "running", "map_default", 10).status_code == 200
    assert push(
        url, others["error"].id, others["error"].key, "error", "map_default", 10,
        error="Traceback (most recent call last):\n  File \"workflow.py\", line 12, in map_default\nRuntimeError: bowtie2 exited with 1",
    ).status_code == 200
    assert push(url, others["cancelled"].id, others["cancelled"].key, "cancelled", "", 0).status_code == 200

    browser.find_element(By.LINK_TEXT, "New job").click()
    browser.find_element(By.ID, "task").send_keys("align_reads")
    browser.find_element(By.ID, "user").send_keys("alice")
    args = browser.find_element(By.ID, "args")
    args.clear()
    args.send_keys('{"sample": "S1", "genome": "hg38"}')
    for name, value in (("proc", "4"), ("mem", "16")):
        field = browser.find_element(By.ID, name)
        field.clear()
        field.send_keys(value)
    browser.find_element(By.CSS_SELECTOR, "form.new-job button[type=submit]").click()

    job_id = wait_until(browser, lambda d: d.find_element(By.ID, "new-job-id")).text
    key = browser.find_element(By.ID, "job-key").get_attribute("value")
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert browser.find_element(By.CSS_SELECTOR, "button[data-copy]").is_displayed()
    # Shown once: the job's own page never shows it.
    browser.find_element(By.ID, "open-job").click()
    wait_until(browser, lambda d: d.find_element(By.ID, "job-state").text == "waiting")
    assert key not in browser.page_source

    browser.get(f"{url}/console/")
    wait_until(browser, row_shows(job_id, "waiting", 0))
    browser.execute_script("window.notReloaded = true;")
    worker = Worker(url, job_id, key)
    worker.start()
    try:
        assert worker.push("running", "trim", 20).status_code == 200
        wait_until(browser, row_shows(job_id, "running", 20))
        assert worker.push("running", "align", 60).status_code == 200
        wait_until(browser, row_shows(job_id, "running", 60))
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOTS / "console-jobs.png"))
        assert worker.push("complete", "align", 100).status_code == 200
        wait_until(browser, row_shows(job_id, "complete", 100))
    finally:
        worker.stop()
    # The rows changed in place: the page itself was never reloaded.
    assert browser.execute_script("return window.notReloaded === true;")
    counts = {e.get_attribute("data-count"): int(e.text) for e in browser.find_elements(By.CSS_SELECTOR, "[data-count]")}
    expected = dict.fromkeys(STATES, 0)
    expected.update(waiting=1, preparing=1, running=1, complete=1, cancelled=1, error=1, terminated=1)
    assert counts == expected

    # Its timeline: every record, the time between them, and the bar of stages.
    click(browser, By.CSS_SELECTOR, f"#job-{job_id} a")
    wait_until(browser, lambda d: d.find_element(By.ID, "job-state").text == "complete")
    records = browser.find_elements(By.CSS_SELECTOR, "tr.record")
    assert [r.get_attribute("data-state") for r in records] == ["waiting", "running", "running", "complete"]
    assert [r.find_element(By.CSS_SELECTOR, "[data-label=Stage]").text for r in records] == ["—", "trim", "align", "align"]
    assert [r.find_element(By.CSS_SELECTOR, "[data-label=Progress]").text for r in records] == ["0 %", "20 %", "60 %", "100 %"]
    assert all(r.find_element(By.CSS_SELECTOR, "[data-label='Since previous']").text.endswith("s") for r in records[1:])
    stages = [rect.get_attribute("class") for rect in browser.find_elements(By.CSS_SELECTOR, "svg.stages rect")]
    assert stages == ["state-waiting", "state-running", "state-running"]
    legend = [li.text.split()[0] for li in browser.find_elements(By.CSS_SELECTOR, ".legend li")]
    assert legend == ["waiting", "trim", "align"]
    # A finished job's page stops refreshing.
    assert browser.find_element(By.ID, "job-live").get_attribute("data-live-stop") == "finished"
    browser.set_window_size(1280, 1500)  # the whole timeline in the picture
    try:
        browser.save_screenshot(str(SCREENSHOTS / "console-job.png"))
    finally:
        browser.set_window_size(1280, 900)

    # A job that errored shows its error readably.
    browser.get(f"{url}/console/jobs/{others['error'].id}")
    error = browser.find_element(By.CSS_SELECTOR, ".summary .error-box pre.error-message")
    assert error.text.endswith("RuntimeError: bowtie2 exited with 1")


def test_cancel_a_running_job_from_its_page(browser, live_server, tokens, make_job):
    url = live_server.url
    signed_in(browser, url, tokens["operator"])
    job = make_job(task="align_reads", user="bob")
    assert push(url, job.id, job.key, "running", "align", 30).status_code == 200
    browser.get(f"{url}/console/jobs/{job.id}")
    wait_until(browser, lambda d: d.find_element(By.ID, "job-state").text == "running")
    click(browser, By.ID, "cancel")
    wait_until(browser, lambda d: d.find_element(By.ID, "job-state").text == "cancelled")
    assert "cancelled" in browser.find_element(By.CSS_SELECTOR, ".flash-info").text
    # The worker hears it on its next push.
    refused = push(url, job.id, job.key, "running", "align", 40)
    assert refused.status_code == 409
    assert refused.json()["state"] == "cancelled"


def test_remove_a_finished_job_after_confirming(browser, live_server, tokens, make_job, stored_job):
    url = live_server.url
    signed_in(browser, url, tokens["operator"])
    job = make_job(task="align_reads", user="bob")
    assert push(url, job.id, job.key, "running", "align", 50).status_code == 200
    assert push(url, job.id, job.key, "complete", "align", 100).status_code == 200
    browser.get(f"{url}/console/jobs/{job.id}")
    click(browser, By.ID, "remove")
    confirm = wait_until(browser, lambda d: d.find_element(By.ID, "confirm-remove"))
    assert stored_job(job.id) is not None  # nothing happens before the confirmation
    confirm.click()
    wait_until(browser, lambda d: urlsplit(d.current_url).path == "/console/")
    assert f"Job {job.id} is removed" in browser.find_element(By.CSS_SELECTOR, ".flash-info").text
    assert not browser.find_elements(By.ID, f"job-{job.id}")
    assert stored_job(job.id) is None


def test_a_post_without_the_csrf_token_is_refused(browser, live_server, tokens, make_job, stored_job):
    url = live_server.url
    signed_in(browser, url, tokens["operator"])
    job = make_job(task="align_reads", user="bob")
    # The signed-in browser itself posts the form, with its cookie but without the token.
    status = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {method: "POST", credentials: "same-origin",
                             headers: {"Content-Type": "application/x-www-form-urlencoded"}, body: ""})
          .then(r => done(r.status), e => done(String(e)));
        """,
        f"{url}/console/jobs/{job.id}/cancel",
    )
    assert status == 400
    # So does a script outside the browser that stole the cookie but has no token.
    cookie = browser.get_cookie("jobapi_session")
    forged = requests.post(
        f"{url}/console/jobs/{job.id}/remove", data={"force": "1"},
        cookies={"jobapi_session": cookie["value"]}, timeout=HTTP_TIMEOUT, allow_redirects=False,
    )
    assert forged.status_code == 400 and "Form refused" in forged.text
    assert stored_job(job.id).state == "waiting"


def test_api_docs_render_the_operations(browser, live_server):
    browser.get(f"{live_server.url}/api/docs")
    wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 8)
    paths = {
        (block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text,
         block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"))
        for block in browser.find_elements(By.CSS_SELECTOR, ".opblock")
    }
    assert ("POST", "/api/jobs/{job_id}/status") in paths
    assert ("GET", "/api/jobs/{job_id}") in paths
    assert not any(path.startswith("/console") for _, path in paths)
    # The bar above it is the console's: white links on its dark ground.
    links = browser.find_elements(By.CSS_SELECTOR, "header.top a")
    assert [link.text for link in links] == ["jobapi console", "Jobs", "openapi.json"]
    assert {link.value_of_css_property("color") for link in links} == {"rgba(255, 255, 255, 1)"}
    bar = browser.find_element(By.CSS_SELECTOR, "header.top")
    assert bar.value_of_css_property("background-color") == "rgba(16, 42, 67, 1)"
    browser.save_screenshot(str(SCREENSHOTS / "api-docs.png"))


def test_nothing_was_loaded_from_beyond_loopback(browser, live_server):
    # Runs last: every page the tests above opened is in the log by now.
    assert any(url.endswith("/api/docs/swagger-ui-bundle.js") for url in REQUESTED)
    assert any("/console/jobs/_rows" in url for url in REQUESTED)
    # chrome:// pages are the browser's own (its new-tab page), never fetched over a network.
    outside = [
        url for url in REQUESTED
        if urlsplit(url).scheme not in ("data", "blob", "about", "chrome") and urlsplit(url).hostname != "127.0.0.1"
    ]
    assert not outside, outside
