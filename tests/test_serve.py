"""python -m zoo.serve as a user runs it: the real server on a free port with tiny exported
checkpoints made here, called over HTTP, and its page driven in headless Chromium (Playwright
with Debian's /usr/bin/chromium; skipped with the reason where either is missing).

ZOO_SCREENSHOT=1 saves the page to docs/serving-page.png."""

import concurrent.futures
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from exported import export_file, tiny_workdir

import zoo
from zoo.serving import load_exported

httpx = pytest.importorskip("httpx", reason="the server tests need httpx (pip install 'zoo[test]')")
pytest.importorskip("fastapi", reason="the server needs FastAPI and uvicorn (pip install 'zoo[serve]')")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m zoo.serve`` in a subprocess on a free port."""

    def __init__(self, model: Path, *flags: str):
        self.model, self.url = model, f"http://127.0.0.1:{free_port()}"
        self.process = subprocess.Popen([sys.executable, "-m", "zoo.serve", "--model", str(model),
                                         "--port", self.url.rsplit(":", 1)[1], *flags], cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait(self, timeout: float = 180) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with {self.process.returncode}: {self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        pytest.fail(f"the server did not answer in {timeout} s")

    def post(self, body, **kwargs) -> httpx.Response:
        kwargs = {"json": body} if not kwargs else kwargs
        return httpx.post(f"{self.url}/translate", timeout=120, **kwargs)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A Transformer (2 decoder layers of 2 heads, beam sizes 1 and 2) and a Sutskever model (no
    attention, greedy only), each exported and served; the Transformer's server waits 200 ms to
    batch and takes 4 sentences a request."""
    folder = tmp_path_factory.mktemp("serve")
    files = {name: export_file(zoo.load(tiny_workdir(folder / name, name)), folder / f"{name}.zoo", beam_sizes=beams)
             for name, beams in (("transformer", [1, 2]), ("sutskever", [1]))}
    started = [Server(files["transformer"], "--max-wait-ms", "200", "--max-sentences", "4"), Server(files["sutskever"])]
    try:
        yield {name: server.wait() for name, server in zip(files, started)}
    finally:
        for server in started:
            server.stop()


def test_translate_over_http_is_the_exported_models_translation(servers):
    server = servers["transformer"]
    expected = load_exported(server.model).translate_tokens(["Ein Hund.", "Ein Mann läuft im Park."], 2)
    response = server.post({"sentences": ["Ein Hund.", "Ein Mann läuft im Park."], "beam_size": 2, "all_heads": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["has_attention"] and body["beam_size"] == 2
    assert body["translations"] == [t.text for t in expected]
    assert body["source_tokens"] == [t.source_tokens for t in expected]
    assert body["source_tokens"][0] == ["ein", "hund", ".", "<eos>"]
    assert body["tokens"] == [t.tokens for t in expected]
    for t, attention, weights in zip(expected, body["attention"], body["weights"], strict=True):
        np.testing.assert_allclose(attention, t.attention, atol=1e-6)
        np.testing.assert_allclose(weights, t.heads, atol=1e-6)
        assert np.array(weights).shape == (2, 2, len(t.tokens), len(t.source_tokens))


def test_concurrent_requests_are_batched_and_answered_as_alone(servers):
    server = servers["transformer"]
    sentences = ["Ein Hund.", "Ein Mann.", "Eine Frau.", "Ein Kind.", "Ein Junge.", "Eine Katze.", "Ein Hund läuft.", "Ein Mann."]
    alone = {s: server.post({"sentences": [s]}).json() for s in sorted(set(sentences))}
    before = server.health()
    with concurrent.futures.ThreadPoolExecutor(len(sentences)) as pool:
        answers = list(pool.map(lambda s: server.post({"sentences": [s]}).json(), sentences))
    after = server.health()
    assert after["requests"] - before["requests"] == len(sentences)
    assert after["batches"] - before["batches"] <= 2  # 8 requests within the 200 ms wait: one batch, two if a thread is late
    for s, answer in zip(sentences, answers, strict=True):  # same tokens; weights to float32 rounding (B 8 vs 1)
        assert {k: v for k, v in answer.items() if k != "attention"} == {k: v for k, v in alone[s].items() if k != "attention"}
        np.testing.assert_allclose(answer["attention"], alone[s]["attention"], atol=3e-6)


@pytest.mark.parametrize("kwargs, status, message", [
    ({"content": b"not json"}, 400, "the body is not valid JSON (Expecting value: line 1 column 1 (char 0))"),
    ({"json": ["Ein Hund."]}, 400, "body: Input should be a valid dictionary or instance of TranslateRequest"),
    ({"json": {"sentences": "Ein Hund."}}, 400, "sentences: Input should be a valid list"),
    ({"json": {"sentences": ["Ein Hund.", 3]}}, 400, "sentences.1: Input should be a valid string"),
    ({"json": {"sentences": ["Ein Hund."], "beam": 2}}, 400, "beam: Extra inputs are not permitted"),
    ({"json": {"sentences": []}}, 422, "sentences: give at least one sentence"),
    ({"json": {"sentences": ["Ein Hund."] * 5}}, 422, "sentences: 5 sentences; at most 4 a request"),
    ({"json": {"sentences": ["Ein Hund.", "ein " * 40]}}, 422, "sentences.1: 40 tokens; at most 31 a sentence"),
    ({"json": {"sentences": ["Ein Hund."], "beam_size": 3}}, 422, "beam_size=3: this model decodes with beam sizes 1,2"),
    ({"json": {"sentences": ["Ein Hund."], "beam_size": 0}}, 422, "beam_size=0: this model decodes with beam sizes 1,2"),
])
def test_bad_input_is_one_line_and_the_server_keeps_serving(servers, kwargs, status, message):
    server = servers["transformer"]
    response = server.post(None, **kwargs)
    assert (response.status_code, response.json()) == (status, {"error": message})
    assert server.health()["status"] == "ok"


def test_serve_cli_refuses_bad_flags_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "zoo.serve", "--model", str(tmp_path / "x.zoo")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr == f"zoo.serve: error: {tmp_path / 'x.zoo'}: no such file\n"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium (Debian's)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright drives the browser: pip install playwright")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def heatmap(page) -> tuple[int, list[list[float]]]:
    """The number of cells of the heatmap table (headers included) and its weights, row by row."""
    cells = page.locator("#heatmap th, #heatmap td").count()
    weights = page.locator("#heatmap tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.querySelectorAll('td')].map(td => Number(td.dataset.weight)))")
    return cells, weights


def test_page_draws_the_apis_attention_per_layer_and_head(servers, browser):
    server = servers["transformer"]
    sentence = "Ein Mann läuft im Park."
    api = server.post({"sentences": [sentence], "beam_size": 2, "all_heads": True}).json()
    source, target, weights = api["source_tokens"][0], api["tokens"][0], np.array(api["weights"][0])
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(server.url)
    page.wait_for_function("document.querySelectorAll('#beam option').length == 2")
    page.fill("#sentence", sentence)
    page.select_option("#beam", value="2")
    page.click("#submit")
    page.wait_for_selector("#heatmap td")
    assert page.text_content("#translation") == api["translations"][0]
    cells, shown = heatmap(page)
    assert cells == (len(target) + 1) * (len(source) + 1)
    np.testing.assert_allclose(shown, weights[-1].mean(axis=0), atol=2e-6)  # the last layer, heads averaged
    assert page.locator("#heatmap thead th").all_text_contents() == ["", *source]
    assert page.locator("#heatmap tbody th").all_text_contents() == target
    page.select_option("#layer", value="0")
    page.select_option("#head", value="1")
    cells, shown = heatmap(page)
    np.testing.assert_allclose(shown, weights[0, 1], atol=0)
    cell = page.locator("#heatmap tbody tr").nth(1).locator("td").nth(2)
    cell.hover()
    assert page.text_content("#hover") == f"{target[1]} ← {source[2]}: {weights[0, 1, 1, 2]:.4f}"
    if os.environ.get("ZOO_SCREENSHOT"):
        page.screenshot(path=str(ROOT / "docs" / "serving-page.png"), full_page=True)
    page.close()


def test_page_says_a_model_without_attention_has_none(servers, browser):
    page = browser.new_page()
    page.goto(servers["sutskever"].url)
    page.wait_for_function("document.querySelectorAll('#beam option').length == 1")
    page.fill("#sentence", "Ein Hund.")
    page.click("#submit")
    page.wait_for_selector("#no-attention:not([hidden])")
    assert page.text_content("#no-attention").startswith("sutskever has no attention")
    assert page.locator("#panel").is_hidden() and page.locator("#heatmap td").count() == 0
    page.close()

