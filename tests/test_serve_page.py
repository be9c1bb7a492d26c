"""The web page in a real headless Chromium (Debian's `chromium`, driven by Playwright), with screenshots.

Needs the system's Chromium at /usr/bin/chromium (or $CHROMIUM): `make browser` (apt-get install chromium)
installs it and `make test` runs that first. Playwright never downloads a browser here; it drives that one.
Without it these tests skip, saying why.
"""

import io
import os
import shutil

import pytest
from PIL import Image, ImageDraw

from florence_vl.serve.server import BackgroundServer, build_app
from florence_vl.serve.settings import ServeSettings
from vl_tiny import tiny_vl

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium: run `make browser` "
                                "(apt-get install chromium) to run the web page tests")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RED = (220, 30, 30)


@pytest.fixture(scope="module")
def vl(tiny_florence2):
    return tiny_vl(tiny_florence2)


@pytest.fixture(scope="module")
def server(tiny_florence2, vl):
    settings = ServeSettings(api_key="page-key", max_new_tokens=24, default_beams=1, model_name="tiny-f2",
                             chat_model_name="tiny-vl")
    with BackgroundServer(build_app(tiny_florence2, settings, vl)) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    failures = []
    page.on("pageerror", lambda error: failures.append(str(error)))
    page.on("requestfailed", lambda request: failures.append(f"request failed: {request.url}"))
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready=true]")
    page.fill("#key-input", "page-key")
    yield page
    page.close()
    assert not failures, failures  # no script errors, nothing fetched from outside


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("page") / "photo.png"
    image = Image.new("RGB", (200, 150), RED)  # red on purpose: easy to find in the screenshot
    ImageDraw.Draw(image).rectangle([120, 30, 180, 120], fill=(30, 60, 220))
    image.save(path)
    return path


def run_and_wait(page):
    page.click("#run-button")
    page.wait_for_selector("body[data-result]", timeout=60_000)
    return page.get_attribute("body", "data-result")


def test_upload_run_and_see_the_drawing_and_json(page, photo, tmp_path):
    assert page.is_visible("#key-row") and "API key required" in page.inner_text("#server-status")
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#preview:not([hidden])")
    assert "200×150" in page.inner_text("#image-info")
    page.select_option("#task-select", "OD")
    assert not page.is_visible("#text-row") and not page.is_visible("#region-row")
    assert run_and_wait(page) == "done", page.inner_text("#error")

    import json

    answer = json.loads(page.inner_text("#result-json"))
    assert answer["task"] == "<OD>" and answer["image_size"] == [200, 150] and answer["model"] == "tiny-f2"
    drawn = page.eval_on_selector("#result-image", "img => [img.complete, img.naturalWidth, img.naturalHeight]")
    assert drawn == [True, 200, 150]

    shot_path = tmp_path / "page.png"
    page.screenshot(path=str(shot_path), full_page=True)
    box = page.locator("#result-image").bounding_box()
    with Image.open(shot_path) as shot:
        shot = shot.convert("RGB")
        assert shot.width >= 1000 and len(set(shot.resize((64, 64)).getdata())) > 20  # a rendered page
        crop = shot.crop((int(box["x"]) + 2, int(box["y"]) + 2, int(box["x"] + box["width"]) - 2,
                          int(box["y"] + box["height"]) - 2))
        pixels = list(crop.getdata())
    red = sum(1 for r, g, b in pixels if r > 180 and g < 80 and b < 80)
    assert red > 0.4 * len(pixels)  # the drawn result shows the uploaded (red) picture


def test_region_is_drawn_by_dragging_on_the_image(page, photo, tmp_path):
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#preview:not([hidden])")
    page.select_option("#task-select", "REGION_TO_CATEGORY")
    assert page.is_visible("#region-row") and not page.is_visible("#text-row")
    box = page.locator("#preview").bounding_box()
    scale = box["width"] / 200
    page.mouse.move(box["x"] + 20 * scale, box["y"] + 10 * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + 100 * scale, box["y"] + 80 * scale, steps=5)
    page.mouse.up()
    region = [float(v) for v in page.input_value("#region-input").split(",")]
    assert region == pytest.approx([20, 10, 100, 80], abs=2)
    page.screenshot(path=str(tmp_path / "region.png"))
    with Image.open(tmp_path / "region.png") as shot:  # the dragged box is drawn on the preview (amber)
        crop = shot.convert("RGB").crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]),
                                         int(box["y"] + box["height"])))
        assert any(r > 200 and 130 < g < 190 and b < 60 for r, g, b in crop.getdata())
    assert run_and_wait(page) == "done", page.inner_text("#error")
    assert "<REGION_TO_CATEGORY>" in page.inner_text("#result-status")


def test_a_mistake_shows_the_servers_message(page, photo):
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#preview:not([hidden])")
    page.select_option("#task-select", "CAPTION_TO_PHRASE_GROUNDING")
    assert page.is_visible("#text-row")
    assert run_and_wait(page) == "error"  # no phrase typed
    assert 'needs "text"' in page.inner_text("#error")
    page.fill("#key-input", "wrong")
    page.fill("#text-input", "a red circle")
    assert run_and_wait(page) == "error"
    assert "API key" in page.inner_text("#error")


def test_pasted_image_is_taken(page):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 10)).save(buffer, format="PNG")
    page.evaluate("""async (bytes) => {
        const file = new File([new Uint8Array(bytes)], "pasted.png", {type: "image/png"});
        const data = new DataTransfer();
        data.items.add(file);
        document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data}));
    }""", list(buffer.getvalue()))
    page.wait_for_selector("#preview:not([hidden])")
    assert "pasted.png — 64×48" in page.inner_text("#image-info")


# -- chat mode ----------------------------------------------------------------------------------------

QUESTIONS = ["How many shapes are there?", "What color is the star?", "Describe the image in detail.",
             "Is there a red circle?"]


def chat_and_wait(page, question):
    page.fill("#chat-input", question)
    page.click("#chat-send")
    page.wait_for_selector("body[data-chat]", timeout=60_000)
    return page.get_attribute("body", "data-chat")


def test_chat_streams_the_answer_about_the_uploaded_image(page, photo, vl, tmp_path):
    image = Image.open(photo)
    answers = {q: vl.chat(image, q, max_new_tokens=16) for q in QUESTIONS}
    question = max(QUESTIONS, key=lambda q: len(answers[q]))  # the longest answer shows streaming best
    page.wait_for_selector("body[data-chat-ready=true]")
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#preview:not([hidden])")
    page.click("#mode-chat")
    assert page.is_visible("#chat-form") and page.is_visible("#chat-panel")
    assert not page.is_visible("#task-form") and not page.is_visible("#result-panel")
    assert page.input_value("#chat-tokens") == "24"  # the server's limit, from /health
    page.fill("#chat-tokens", "16")

    slow = vl.model.llm.register_forward_pre_hook(lambda module, args: __import__("time").sleep(0.08))
    try:
        page.fill("#chat-input", question)
        page.click("#chat-send")
        page.wait_for_function("() => { const t = document.querySelector('.turn.assistant.streaming .text');"
                               " return t && t.textContent.length > 0; }", timeout=60_000)
        partial = page.eval_on_selector(".turn.assistant .text", "e => e.textContent")
        assert page.get_attribute("body", "data-chat") is None  # seen while still streaming
        page.wait_for_selector("body[data-chat]", timeout=60_000)
    finally:
        slow.remove()
    assert page.get_attribute("body", "data-chat") == "done", page.inner_text("#error")
    answer = page.eval_on_selector(".turn.assistant .text", "e => e.textContent")
    assert answer == answers[question] and answers[question].startswith(partial) and len(partial) < len(answer)
    assert int(page.get_attribute("body", "data-chat-chunks")) > 1
    assert page.inner_text(".turn.user .text") == question

    shot_path = tmp_path / "chat.png"
    page.screenshot(path=str(shot_path), full_page=True)
    thumb = page.locator(".turn.user img").bounding_box()
    bubble = page.locator(".turn.assistant").bounding_box()
    with Image.open(shot_path) as shot:
        shot = shot.convert("RGB")
        crop = shot.crop((int(thumb["x"]) + 2, int(thumb["y"]) + 2, int(thumb["x"] + thumb["width"]) - 2,
                          int(thumb["y"] + thumb["height"]) - 2))
        pixels = list(crop.getdata())
        assert sum(1 for r, g, b in pixels if r > 180 and g < 80 and b < 80) > 0.4 * len(pixels)  # the red photo
        answer_area = shot.crop((int(bubble["x"]), int(bubble["y"]), int(bubble["x"] + bubble["width"]),
                                 int(bubble["y"] + bubble["height"])))
        assert len(set(answer_area.getdata())) > 2  # the bubble holds rendered text, not a blank box

    follow = QUESTIONS[0] if question != QUESTIONS[0] else QUESTIONS[1]
    assert chat_and_wait(page, follow) == "done", page.inner_text("#error")
    want = vl.chat(image, follow, history=[(question, answers[question])], max_new_tokens=16)
    assert page.eval_on_selector_all(".turn.assistant .text", "es => es.map(e => e.textContent)") == \
        [answers[question], want]  # the second answer saw the first turn


def test_chat_errors_show_the_servers_message(page, photo):
    page.wait_for_selector("body[data-chat-ready=true]")
    page.click("#mode-chat")
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#preview:not([hidden])")
    page.fill("#key-input", "wrong")
    assert chat_and_wait(page, "How many shapes are there?") == "error"
    assert "API key" in page.inner_text("#error")
    assert page.locator(".turn.assistant").count() == 0  # no half answer left behind
    page.fill("#key-input", "page-key")
    assert chat_and_wait(page, "How many shapes are there?") == "done", page.inner_text("#error")
    assert page.locator(".turn.assistant").count() == 1 and not page.is_visible("#error")
    page.click("#mode-tasks")
    assert page.is_visible("#task-form") and not page.is_visible("#chat-form")
