"""The demo page at GET /, driven in headless Chromium against a real `rnnzoo serve` on 127.0.0.1.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them; skipped elsewhere
unless ``RNNZOO_REQUIRE_BROWSER=1``) and Selenium (the ``dev`` extra)."""

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import pytest

from tests.exports import exported_models
from tests.test_service import Server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def require_browser():
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if missing:
        message = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("RNNZOO_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_browser()
    server = Server(exported_models(tmp_path_factory).values())
    yield server
    server.process.kill()
    server.process.wait()


@pytest.fixture(scope="module")
def browser():
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="rnnzoo-chromium-")
    # No sandbox (tests may run as root); no background traffic to Google's hosts, which CI cannot reach.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1100,1600",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def run_form(browser, model: str, values: dict[str, str], expect: str):
    """Fill the model's form, submit it and wait for ``expect`` (a CSS selector) in its result."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    section = browser.find_element(By.ID, f"model-{model}")
    for name, value in values.items():
        field = section.find_element(By.NAME, name)
        if field.get_attribute("type") == "checkbox":
            if field.is_selected() != bool(value):
                field.click()
            continue
        field.clear()
        field.send_keys(value)
    section.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 30).until(lambda _: section.find_elements(By.CSS_SELECTOR, f".result {expect}"))
    return section.find_element(By.CSS_SELECTOR, ".result")


def test_every_form_renders_the_answer_of_the_api(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "section[data-task]")) == 5)
    tasks = {s.get_attribute("id"): s.get_attribute("data-task") for s in browser.find_elements(By.TAG_NAME, "section")}
    assert tasks == {
        "model-sentiment": "classification",
        "model-tagger": "tagging",
        "model-translator": "translation",
        "model-lm": "language_model",
        "model-forecaster": "forecasting",
    }

    # Classifier: one bar per label, the best one marked, widths as the probabilities.
    _, answer = server.post("/v1/models/sentiment/predict", {"texts": ["w1 w2 w3"]})
    result = run_form(browser, "sentiment", {"text": "w1 w2 w3"}, ".bar-row")
    rows = result.find_elements(By.CSS_SELECTOR, ".bar-row")
    assert [row.get_attribute("data-label") for row in rows] == ["neg", "pos"]
    assert (
        result.find_element(By.CSS_SELECTOR, ".best").get_attribute("data-label") == answer["predictions"][0]["label"]
    )
    shown = [float(row.find_element(By.CSS_SELECTOR, ".bar-value").text) for row in rows]
    assert shown == pytest.approx(list(answer["predictions"][0]["probabilities"].values()), abs=1e-3)

    # Tagger: every word shown once, entities marked by type, markup in the input shown as text.
    sentence = "w1 <b>w2</b> w3 w4 w5"
    _, answer = server.post("/v1/models/tagger/predict", {"sentences": [sentence]})
    words, tags = answer["predictions"][0]["words"], answer["predictions"][0]["tags"]
    result = run_form(browser, "tagger", {"sentence": sentence}, ".sentence")
    assert not result.find_elements(By.CSS_SELECTOR, ".sentence b")
    marks = result.find_elements(By.CSS_SELECTOR, "mark.entity")
    assert {mark.get_attribute("data-type") for mark in marks} == {"X"} if set(tags) != {"O"} else not marks
    plain = result.find_element(By.CSS_SELECTOR, ".sentence").text.replace("X", " ").split()
    assert plain == words
    assert [key.text for key in result.find_elements(By.CSS_SELECTOR, ".legend span")] == ["X"]

    # Translator: the translation and its attention heatmap, one row per target token.
    request = {"texts": ["w1 w2 w3"], "beam_size": 2, "attention": True}
    _, answer = server.post("/v1/models/translator/predict", request)
    expected = answer["translations"][0]
    result = run_form(browser, "translator", {"text": "w1 w2 w3", "beam_size": "2", "attention": True}, "table")
    assert result.find_element(By.CSS_SELECTOR, ".translation").text == expected["translation"]
    rows = result.find_elements(By.CSS_SELECTOR, "table.heatmap tbody tr")
    assert [row.find_element(By.TAG_NAME, "th").text for row in rows] == expected["target_tokens"]
    assert all(len(row.find_elements(By.TAG_NAME, "td")) == len(expected["source_tokens"]) for row in rows)

    # Language model: greedy at temperature 0, so the page shows exactly the API's continuation, streamed.
    request = {"prompts": ["w1 w2"], "temperature": 0, "max_new_tokens": 5}
    _, answer = server.post("/v1/models/lm/predict", request)
    values = {"prompt": "w1 w2", "temperature": "0", "max_new_tokens": "5"}
    result = run_form(browser, "lm", values, ".continuation.done")
    assert result.text == answer["generations"][0]

    screenshot = Path(os.environ.get("RNNZOO_DEMO_SCREENSHOT", tmp_path / "demo.png"))
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_from_the_api_appear_on_the_page(server, browser):
    browser.get(server.url + "/")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.ID, "model-translator"))
    message = run_form(browser, "sentiment", {"text": "   "}, ".error").text
    assert "422" in message and "empty" in message
    message = run_form(browser, "translator", {"text": "w1", "beam_size": "99"}, ".error").text
    assert "beam_size" in message and "16" in message


def test_the_forecast_form_draws_the_answer_and_checks_the_paste_first(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.ID, "model-forecaster"))
    section = browser.find_element(By.ID, "model-forecaster")
    hint = section.find_element(By.CSS_SELECTOR, ".hint").text
    assert "8 rows" in hint and "load, OT" in hint and "next 4 rows" in hint
    assert Select(section.find_element(By.NAME, "column")).first_selected_option.text == "OT"
    # The page's requests from here on: a paste the page itself finds wrong must send nothing.
    browser.execute_script(
        "window.sent = []; const fetch = window.fetch;"
        "window.fetch = (...args) => { window.sent.push(String(args[0])); return fetch(...args); };"
    )

    # Example: a header line, then 8 rows of a date and one number per column.
    section.find_element(By.NAME, "example").click()
    lines = section.find_element(By.NAME, "series").get_attribute("value").splitlines()
    assert lines[0] == "date,load,OT"
    window = [[float(value) for value in line.split(",")[1:]] for line in lines[1:]]
    assert len(window) == 8 and all(len(row) == 2 for row in window)
    _, answer = server.post("/v1/models/forecaster/predict", {"series": [window]})
    forecast = answer["predictions"][0]["forecast"]

    section.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 30).until(lambda _: section.find_elements(By.CSS_SELECTOR, ".result svg polyline"))
    result = section.find_element(By.CSS_SELECTOR, ".result")
    assert browser.execute_script("return window.sent") == ["/v1/models/forecaster/predict"]

    def drawn():
        chart = result.find_element(By.CSS_SELECTOR, "svg.forecast-chart")
        lines = {line.get_attribute("data-series"): line for line in chart.find_elements(By.TAG_NAME, "polyline")}
        assert set(lines) == {"history", "forecast"}
        assert lines["history"].get_attribute("stroke") != lines["forecast"].get_attribute("stroke")
        # The history's 8 points, then the forecast's 4 from the last of them.
        points = {name: line.get_attribute("points").split() for name, line in lines.items()}
        assert [len(points["history"]), len(points["forecast"])] == [8, 5]
        assert points["forecast"][0] == points["history"][-1]
        return chart.get_attribute("aria-label")

    assert drawn().startswith("OT")
    keys = result.find_elements(By.CSS_SELECTOR, ".legend [data-series]")
    assert [key.get_attribute("data-series") for key in keys] == ["history", "forecast"]
    rows = result.find_elements(By.CSS_SELECTOR, "table.forecast tbody tr")
    assert len(rows) == 4
    shown = [[float(cell.text) for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    assert shown == [pytest.approx(row, abs=1e-4) for row in forecast]
    Select(section.find_element(By.NAME, "column")).select_by_visible_text("load")
    assert drawn().startswith("load")

    # Pastes the page refuses: an error in the form's result, no request.
    message = run_form(browser, "forecaster", {"series": "1,2\n3,4\n5,6"}, ".error").text
    assert "3 rows" in message and "8 rows of 2 values" in message
    assert not result.find_elements(By.TAG_NAME, "svg")
    message = run_form(browser, "forecaster", {"series": "\n".join(["1,2"] * 7 + ["1,two"])}, ".error").text
    assert "line 8" in message and "OT" in message and "not a number" in message
    assert browser.execute_script("return window.sent") == ["/v1/models/forecaster/predict"]
    # One the service refuses (beyond float32): its status and detail.
    message = run_form(browser, "forecaster", {"series": "\n".join(["1,2"] * 7 + ["1,1e39"])}, ".error").text
    assert "422" in message and "window 0" in message
    assert len(browser.execute_script("return window.sent")) == 2


def test_the_page_loads_nothing_but_its_own_files(server):
    with urllib.request.urlopen(server.url + "/") as response:
        page, policy = response.read().decode(), response.headers["Content-Security-Policy"]
    assert '<script src="/demo/demo.js"' in page and "default-src 'self'" in policy
    for asset in ("/demo/demo.js", "/demo/demo.css"):
        assert server.get(asset)[0] == 200
    assert server.get("/demo/%2e%2e/service.py")[0] == 404
