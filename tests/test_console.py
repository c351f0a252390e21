"""The web console in a real browser (Debian's headless Chromium, driven by Selenium)
through the running stack: HTTP, both workers, Redis, milvus-lite and PostgreSQL.

Screenshots of each page go to ``UMARVEL_SCREENSHOTS`` when set (the README's come from
there), else to the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.stack import Stack
from devkit.samples import shape_image
from tests.conftest import live_stack

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium and chromium-driver (.ci/run installs them)")
    pytest.skip("no chromium/chromedriver on this machine", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def stack(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with live_stack(tiny_models, tmp_path_factory.mktemp("console"), heartbeat_seconds="0.5") as s:
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("UMARVEL_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for colour, shape in (("red", "circle"), ("green", "triangle"), ("blue", "square")):
        path = folder / f"{colour}-{shape}.png"
        path.write_bytes(shape_image(colour, shape, size=128))
        paths[path.stem] = path
    (folder / "red-circle.txt").write_text("a red circle on white")
    return paths


def wait(driver: Any, condition: Callable[[Any], Any], timeout: float = 90) -> Any:
    # The console re-renders lists after each fetch: an element found a moment ago may be
    # replaced, so a stale one means "look again".
    waiting = WebDriverWait(
        driver, timeout, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]
    )
    return waiting.until(condition)


def visible(driver: Any, selector: str) -> bool:
    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return bool(found) and found[0].is_displayed()


def click(driver: Any, selector: str) -> None:
    """Click the element once it is there, as a user would, whatever re-renders meanwhile."""

    def clicked(d: Any) -> bool:
        d.find_element(By.CSS_SELECTOR, selector).click()
        return True

    wait(driver, clicked)


def errors_in_console(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_sign_in_create_ingest_search_delete(
    stack: Stack, browser: Any, shots: Path, images: dict[str, Path]
) -> None:
    driver = browser
    driver.get(f"{stack.api_url}/console/")
    wait(driver, lambda d: visible(d, "#api-key"))
    driver.save_screenshot(str(shots / "sign-in.png"))

    # A wrong key is refused where the user can read it (the browser logs the 401).
    driver.find_element(By.ID, "api-key").send_keys("not-a-key", Keys.ENTER)
    wait(driver, lambda d: "Sign-in failed" in d.find_element(By.ID, "status").text)
    driver.get_log("browser")  # consumed: only the expected 401 is in it

    # Keyboard only: type the key, Enter.
    key = stack.create_key(("admin",))
    field = driver.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key, Keys.ENTER)
    wait(driver, lambda d: visible(d, "#view-collections"))
    assert driver.execute_script("return sessionStorage.getItem('umarvel.key')") == key
    assert driver.execute_script("return localStorage.length") == 0

    # Every form control has a label a screen reader or a keyboard user can find.
    unlabelled = driver.execute_script(
        """return [...document.querySelectorAll('main input, main select')]
             .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
             .map(e => e.id || e.outerHTML)"""
    )
    assert unlabelled == []

    # Create a collection with a metadata field, submitted with Enter.
    driver.find_element(By.ID, "add-field").send_keys(Keys.ENTER)
    driver.find_element(By.CSS_SELECTOR, ".field-name").send_keys("colour")
    driver.find_element(By.ID, "create-description").send_keys("my three images")
    driver.find_element(By.ID, "create-name").send_keys("gallery", Keys.ENTER)
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "tr[data-name='gallery']").text)

    # Upload three images (one with a caption) and watch the job reach done.
    click(driver, "tr[data-name='gallery'] button[data-action=ingest]")
    wait(driver, lambda d: visible(d, "#view-ingest"))
    assert driver.find_element(By.ID, "ingest-collection").get_attribute("value") == "gallery"
    caption = images["red-circle"].with_suffix(".txt")
    upload = "\n".join(str(p) for p in [*images.values(), caption])
    driver.find_element(By.ID, "ingest-files").send_keys(upload)
    driver.find_element(By.CSS_SELECTOR, "#ingest-form button[type=submit]").click()
    wait(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#ingest-progress .progress[data-state=done]"),
    )
    progress = driver.find_element(By.CSS_SELECTOR, "#ingest-progress .progress-text").text
    assert progress.startswith("done: 3 done, 0 failed of 3")
    driver.save_screenshot(str(shots / "ingest.png"))

    # Search by an uploaded image: thumbnails (fetched with the key) and all three scores.
    driver.find_element(By.LINK_TEXT, "Search").click()
    wait(driver, lambda d: visible(d, "#view-search"))
    driver.find_element(By.ID, "search-image").send_keys(str(images["blue-square"]))
    wait(driver, lambda d: visible(d, "#search-preview"))
    driver.find_element(By.CSS_SELECTOR, "#search-form button[type=submit]").click()
    hits = _finished_hits(driver)
    assert hits[0].get_attribute("data-document") == "blue-square.png"
    assert len(hits) == 3
    for hit in hits:
        assert "cosine" in hit.text
        assert "P(Yes)" in hit.text
        assert "score" in hit.text
    _thumbnails_loaded(driver, 3)
    assert "a red circle on white" in driver.find_element(By.ID, "results").text
    assert "rerank" in driver.find_element(By.ID, "search-state").text
    driver.save_screenshot(str(shots / "search-image.png"))

    # Text and image together (a composed query).
    driver.find_element(By.ID, "search-text").send_keys("the same shape in red")
    driver.find_element(By.CSS_SELECTOR, "#search-form button[type=submit]").click()
    hits = _finished_hits(driver)
    assert len(hits) == 3
    _thumbnails_loaded(driver, 3)
    driver.save_screenshot(str(shots / "search-image-text.png"))

    # More like this: the example's neighbours, the example itself left out.
    liked = hits[0].get_attribute("data-document")
    hits[0].find_element(By.CSS_SELECTOR, "button[data-action=like]").click()
    wait(driver, lambda d: d.find_element(By.ID, "search-like-id").text == liked)
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .hit")) == 2)
    shown = {h.get_attribute("data-document") for h in _finished_hits(driver)}
    assert liked not in shown
    click(driver, "#clear-like")
    wait(driver, lambda d: not visible(d, "#search-like"))

    # Keyword mode: only the captioned image holds the words; nothing is embedded.
    click(driver, "#clear-image")
    Select(driver.find_element(By.ID, "search-mode")).select_by_value("keyword")
    driver.find_element(By.ID, "search-text").clear()
    driver.find_element(By.ID, "search-text").send_keys("red circle", Keys.ENTER)
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .hit")) == 1)
    hit = _finished_hits(driver)[0]
    assert hit.get_attribute("data-document") == "red-circle.png"
    assert "keyword" in hit.text
    assert "cosine —" in hit.text

    # Pages of one ranking: one hit a page, the next page from the same ranking.
    Select(driver.find_element(By.ID, "search-mode")).select_by_value("dense")
    top_k = driver.find_element(By.ID, "search-top-k")
    top_k.clear()
    top_k.send_keys("1", Keys.ENTER)
    wait(driver, lambda d: d.find_element(By.ID, "page-range").text == "1\u20131 of 3")
    first_page = _finished_hits(driver)[0].get_attribute("data-document")
    click(driver, "#next-page")
    wait(driver, lambda d: d.find_element(By.ID, "page-range").text == "2\u20132 of 3")
    assert _finished_hits(driver)[0].get_attribute("data-document") != first_page
    assert "(cached)" in driver.find_element(By.ID, "search-state").text
    driver.save_screenshot(str(shots / "search-pages.png"))
    top_k.clear()
    top_k.send_keys("10")  # as it was, for the next test in this browser

    # The document browser: every document, a filter, and "more like this" from a row.
    driver.find_element(By.LINK_TEXT, "Documents").click()
    wait(driver, lambda d: visible(d, "#view-documents"))
    Select(driver.find_element(By.ID, "documents-collection")).select_by_value("gallery")
    click(driver, "#documents-form button[type=submit]")
    wait(driver, lambda d: d.find_element(By.ID, "documents-state").text == "3 documents")
    assert not visible(driver, "#documents-more")
    driver.find_element(By.ID, "documents-filter").send_keys('{"colour": "red"}', Keys.ENTER)
    wait(driver, lambda d: d.find_element(By.ID, "documents-state").text == "0 documents")
    driver.find_element(By.ID, "documents-filter").clear()
    click(driver, "#documents-form button[type=submit]")
    row = "#documents-table tr[data-document='red-circle.png']"
    wait(driver, lambda d: visible(d, row))
    click(driver, f"{row} button[data-action=like]")
    wait(driver, lambda d: visible(d, "#view-search") and visible(d, "#search-like"))
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .hit")) == 2)
    assert "red-circle.png" not in {
        h.get_attribute("data-document") for h in _finished_hits(driver)
    }
    click(driver, "#clear-like")

    # Images are fetched with the key, never with it in a URL.
    urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(key not in url for url in urls)
    assert any("/v1/media/" in url for url in urls)

    # Delete through the confirmation dialog.
    driver.find_element(By.LINK_TEXT, "Collections").click()
    wait(driver, lambda d: visible(d, "tr[data-name='gallery']"))
    wait(driver, lambda d: "3" in d.find_element(By.CSS_SELECTOR, "tr[data-name='gallery']").text)
    driver.save_screenshot(str(shots / "collections.png"))
    click(driver, "tr[data-name='gallery'] button[data-action=delete]")
    wait(driver, lambda d: visible(d, "#delete-dialog"))
    driver.find_element(By.ID, "delete-confirm").click()
    wait(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, "tr[data-name='gallery']"))
    assert errors_in_console(driver) == []


def test_a_video_is_ingested_found_by_text_and_played_from_its_segment(
    stack: Stack, browser: Any, shots: Path, tmp_path: Path
) -> None:
    import requests

    from devkit.clips import make_clip

    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {stack.create_key(('admin',))}"
    assert http.post(f"{stack.api_url}/v1/collections", json={"name": "clips"}).status_code == 201
    clip = tmp_path / "square.webm"  # 70 s: four segments; VP9, which Chromium plays
    clip.write_bytes(make_clip(96, 64, 140, 2, codec="libvpx-vp9", container="webm"))
    (tmp_path / "square.txt").write_text("a yellow square crossing a blue screen")

    driver = browser
    driver.get(f"{stack.api_url}/console/#ingest")
    wait(driver, lambda d: visible(d, "#view-ingest"))
    Select(driver.find_element(By.ID, "ingest-collection")).select_by_value("clips")
    upload = "\n".join([str(clip), str(tmp_path / "square.txt")])
    driver.execute_script("document.getElementById('ingest-files').value = ''")  # earlier picks
    driver.find_element(By.ID, "ingest-files").send_keys(upload)
    driver.find_element(By.CSS_SELECTOR, "#ingest-form button[type=submit]").click()
    text = "#ingest-progress .progress-text"
    wait(driver, lambda d: "of 1" in d.find_element(By.CSS_SELECTOR, text).text)
    wait(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#ingest-progress .progress[data-state=done]"),
    )
    assert driver.find_element(By.CSS_SELECTOR, text).text.startswith("done: 1 done, 0 failed")

    # Text -> video: the hit's player stands at its segment's start (its poster frame).
    driver.find_element(By.LINK_TEXT, "Search").click()
    wait(driver, lambda d: visible(d, "#view-search"))
    Select(driver.find_element(By.ID, "search-collection")).select_by_value("clips")
    Select(driver.find_element(By.ID, "search-candidates")).select_by_value("video")
    driver.find_element(By.ID, "search-text").clear()
    driver.find_element(By.ID, "search-text").send_keys("a yellow square", Keys.ENTER)
    video_hit = "#results .hit[data-document='square.webm']"
    wait(driver, lambda d: visible(d, video_hit))
    hit = _finished_hits(driver)[0]
    assert hit.get_attribute("data-document") == "square.webm"
    start = float(hit.find_element(By.CSS_SELECTOR, "video").get_attribute("data-start"))
    assert start in (0.0, 15.0, 30.0, 40.0)
    label = hit.find_element(By.CSS_SELECTOR, "button[data-action=play-segment]").text
    assert label.startswith(f"\u25b6 {start:.1f}\u2013")
    at_start = (
        "const v = document.querySelector('#results video');"
        "return v && v.readyState >= 1 && Math.abs(v.currentTime - Number(v.dataset.start)) < 0.6"
    )
    wait(driver, lambda d: d.execute_script(at_start), timeout=30)
    driver.save_screenshot(str(shots / "search-video.png"))

    # Video -> video: the clip itself as the query finds it first.
    driver.find_element(By.ID, "search-text").clear()
    driver.find_element(By.ID, "search-image").send_keys(str(clip))
    wait(driver, lambda d: d.find_element(By.ID, "search-media-name").text == "square.webm")
    driver.execute_script("document.getElementById('results').replaceChildren()")
    driver.find_element(By.CSS_SELECTOR, "#search-form button[type=submit]").click()
    wait(driver, lambda d: visible(d, video_hit))
    assert _finished_hits(driver)[0].get_attribute("data-document") == "square.webm"
    click(driver, "#clear-image")
    Select(driver.find_element(By.ID, "search-candidates")).select_by_value("")
    assert errors_in_console(driver) == []
    driver.get("about:blank")  # the next test's page loads afresh


def test_partial_results_show_while_the_rerank_runs(
    stack: Stack, browser: Any, images: dict[str, Path]
) -> None:
    import requests

    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {stack.create_key(('admin',))}"
    base = f"{stack.api_url}/v1/collections"
    assert http.post(base, json={"name": "later"}).status_code == 201
    docs = [{"id": f"t{i}", "text": f"a text document {i}"} for i in range(4)]
    job = http.post(f"{base}/later/documents", json={"documents": docs}).json()
    wait(None, lambda _: http.get(stack.api_url + job["url"]).json()["state"] == "done")

    driver = browser
    driver.get(f"{stack.api_url}/console/#search")
    wait(driver, lambda d: visible(d, "#view-search"))
    driver.find_element(By.ID, "search-collection").send_keys("later")
    stack.kill("worker-rerank")  # the rerank step now waits in its queue
    driver.find_element(By.ID, "search-text").send_keys("a text document", Keys.ENTER)
    wait(driver, lambda d: "rerank running" in d.find_element(By.ID, "search-state").text)
    # The partial answer is drawn again at each poll: read the cards' texts in one go.
    cards = "return [...document.querySelectorAll('#results .hit')].map(h => h.innerText)"
    texts = wait(driver, lambda d: d.execute_script(cards))
    assert len(texts) == 4
    assert all("cosine" in t and "P(Yes)" not in t for t in texts)
    assert errors_in_console(driver) == []


def _finished_hits(driver: Any) -> list[Any]:
    wait(
        driver,
        lambda d: d.find_element(By.ID, "search-state").get_attribute("data-status") == "done",
    )
    return list(driver.find_elements(By.CSS_SELECTOR, "#results .hit"))


def _thumbnails_loaded(driver: Any, n: int) -> None:
    script = (
        "return [...document.querySelectorAll('#results img.thumbnail')]"
        ".filter(i => i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:')).length"
    )
    wait(driver, lambda d: d.execute_script(script) >= n, timeout=30)
