"""Chat: session prompts and replies in every direction, ``revjax chat``, and ``revjax serve`` through an HTTP client,
the official ``openai`` client against a real uvicorn server, and a real headless Chromium."""

import contextlib
import importlib.util
import io
import json
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import portpicker
import pytest

from revjax.chat import cli as chat_cli
from revjax.chat import server as chat_server
from revjax.chat.batcher import wait_idle
from revjax.chat.protocol import Limits
from revjax.chat.session import ChatModel, ChatSession, TextStream
from tests.helpers import SEQ, model, run_dir  # noqa: F401  (the tiny chat run's fixtures)

PY, PE, OS, OE = 2042, 2043, 2044, 2045

# the golden tokenizer's specials and a few encodings, checked by hand
BOS, US, UE, AS, AE, FWD, BWD = 2037, 2038, 2039, 2040, 2041, 2046, 2047
Q, HI, FOUR = "What is 2+2?", "hi", "Four"
Q_IDS, HI_IDS, FOUR_IDS = [528, 327, 32, 50, 43, 50, 63], [383], [70, 324]
GREEDY = {"temperature": 0.0, "top_k": 0, "max_tokens": 4, "seed": 0}


def variant(model: ChatModel, direction: str, mode: str) -> ChatModel:
    """The same weights read as another direction / conversation mode (what the prompts look like is the point)."""
    return ChatModel(model.graphdef, model.params, model.tokenizer, direction, mode, model.max_len, name=model.name)


# ---- session ---------------------------------------------------------------------------------------------------

# (model direction, mode, generation way, typed text, first prompt, second prompt given reply R (reading order))
CASES = [
    ("forward", "sequence", None, Q, [BOS, US, *Q_IDS, UE, AS],
     lambda r: [BOS, US, *Q_IDS, UE, AS, *r, AE, US, *HI_IDS, UE, AS]),
    ("backward", "turn", None, Q, [BOS, US, *Q_IDS[::-1], UE, AS],
     lambda r: [BOS, US, *Q_IDS[::-1], UE, AS, *r[::-1], AE, US, *HI_IDS, UE, AS]),
    ("backward", "sequence", None, FOUR, [BOS, AE, *FOUR_IDS[::-1], AS],
     lambda r: [BOS, AE, *FOUR_IDS[::-1], AS, UE, *r[::-1], US, AE, *HI_IDS, AS]),
    ("bidirectional", "sequence", "forward", Q, [BOS, FWD, US, *Q_IDS, UE, AS],
     lambda r: [BOS, FWD, US, *Q_IDS, UE, AS, *r, AE, US, *HI_IDS, UE, AS]),
    ("bidirectional", "sequence", "backward", FOUR, [BOS, BWD, AE, *FOUR_IDS[::-1], AS],
     lambda r: [BOS, BWD, AE, *FOUR_IDS[::-1], AS, UE, *r[::-1], US, AE, *HI_IDS, AS]),
    ("bidirectional", "turn", "backward", Q, [BOS, BWD, US, *Q_IDS[::-1], UE, AS],
     lambda r: [BOS, BWD, US, *Q_IDS[::-1], UE, AS, *r[::-1], AE, US, *HI_IDS, UE, AS]),
]


@pytest.mark.parametrize("direction,mode,way,typed,first,second", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_session_prompts_and_reading_order(model, direction, mode, way, typed, first, second):
    chat = variant(model, direction, mode)
    session = ChatSession(chat, generate=way)
    seen = []
    original = chat.engine.stream

    def spy(prompts, *args, **kwargs):
        seen.append([list(p) for p in prompts])
        return original(prompts, *args, **kwargs)

    chat.engine.stream = spy
    reply = session.reply(typed, **GREEDY)
    assert reply.prompt == first
    pieces = list(reply)
    assert seen == [[first]]
    # the engine's own output for the same prompt, restored by hand: reversed when generated backward
    raw = chat.engine.generate([first], 4, stop_ids=[US if reply.task == "reverse" else AE], max_len=SEQ).tokens[0]
    backward = (way or direction) == "backward"
    if reply.task == "reverse" and raw and raw[0] == UE:
        raw = raw[1:]
    raw = raw[:next((i for i, t in enumerate(raw) if t in (BOS, US, UE, AS, AE, FWD, BWD)), len(raw))]  # turn's end
    expected = raw[::-1] if backward else raw
    assert reply.tokens == expected
    assert reply.text == chat.tokenizer.decode(expected) and "<|" not in reply.text
    text = ""
    for piece in pieces:
        assert piece.prepend == backward
        text = piece.text + text if piece.prepend else text + piece.text
    assert text == reply.text
    assert reply.finish_reason in ("stop", "length")
    assert reply.task == ("reverse" if backward and mode == "sequence" else "answer")
    # the next turn rebuilds the prompt from the reading-order history: earlier backward turns go at the end
    assert session.reply(HI, **GREEDY).prompt == second(reply.tokens)


def test_reverse_task_is_labelled_and_history_grows_at_the_start(model):
    session = ChatSession(variant(model, "backward", "sequence"))
    assert session.task == "reverse"
    reply = session.reply(FOUR, **GREEDY)
    assert reply.label == "question (reverse task)"
    reply.run()
    assert [(m.role, m.content) for m in session.history] == [("user", reply.text), ("assistant", FOUR)]
    later = session.reply(HI, **GREEDY)
    later.run()
    assert [m.role for m in session.history] == ["user", "assistant", "user", "assistant"]
    assert session.history[1].content == HI and session.history[3].content == FOUR
    abandoned = session.reply(Q, **GREEDY)
    next(iter(abandoned), None)  # stopped after the first piece: nothing is added
    assert len(session.history) == 4


def test_long_history_drops_the_farthest_turns_and_refuses_a_too_long_message(model):
    session = ChatSession(variant(model, "forward", "sequence"))
    from revjax.chat.session import Message
    session.history = [Message("user", "x", [383] * 100), Message("assistant", "y", [70] * 100)] * 2
    prompt = session.reply(HI, **GREEDY).prompt
    assert len(prompt) < SEQ and prompt[-4:] == [US, *HI_IDS, UE, AS] and len(prompt) == 1 + 204 + 4
    with pytest.raises(Exception, match="too long for this model"):
        session.reply("hi " * 300, **GREEDY)
    with pytest.raises(Exception, match="generates forward only"):
        session.set_direction("backward")


def test_text_stream_holds_split_characters(model):
    tok = model.tokenizer
    ids = tok.encode("héllo")  # é is two byte tokens
    forward = TextStream(tok, backward=False)
    assert [forward.feed(ids[:2]), forward.feed(ids[2:]), forward.finish()] == ["h", "éllo", ""]
    backward = TextStream(tok, backward=True)  # model order is reversed; pieces arrive right to left
    rev = ids[::-1]
    assert [backward.feed(rev[:3]), backward.feed(rev[3:]), backward.finish()] == ["llo", "hé", ""]


# ---- CLI -------------------------------------------------------------------------------------------------------

def test_cli_prompt_prints_the_reply(run_dir, model, capsys):
    expected = ChatSession(model).reply(Q, **GREEDY).run()
    assert chat_cli.main([str(run_dir), "-p", Q, "--temperature", "0", "--max-tokens", "4", "--seed", "0"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    reverse = ChatSession(model, generate="backward").reply(FOUR, **GREEDY).run()
    assert chat_cli.main([str(run_dir), "-p", FOUR, "--direction", "backward", "--temperature", "0",
                          "--max-tokens", "4"]) == 0
    assert capsys.readouterr().out == reverse + "\n"


def typing(monkeypatch, *lines):
    """Answer ``input()`` with ``lines``, then end of input."""
    pending = iter(lines)

    def read(prompt=""):
        try:
            return next(pending)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", read)


def test_cli_repl_commands_and_labels(model, monkeypatch, capsys):
    typing(monkeypatch, "/backward", FOUR, "/forward", Q, "/clear", "/nonsense", "/quit")
    session = ChatSession(model)
    chat_cli.repl(session, dict(GREEDY), out=sys.stdout)
    out = capsys.readouterr().out
    assert "a bidirectional model (sequence conversations)" in out
    assert "generating backward (reverse task" in out and "Question (reverse task): " in out
    assert "generating forward" in out and "Assistant: " in out
    assert "conversation cleared" in out and "unknown command /nonsense" in out
    assert session.history == []
    forward_only = ChatSession(variant(model, "forward", "sequence"))
    typing(monkeypatch, "/backward")
    chat_cli.repl(forward_only, dict(GREEDY), out=sys.stdout)  # ends at end of input
    assert "generates forward only, not backward" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert chat_cli.main([str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("revjax chat: error:") and "is not a folder" in err and "Traceback" not in err


# ---- server through an HTTP client ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(model):
    from fastapi.testclient import TestClient

    limits = Limits(max_body_bytes=4000, max_messages=5, max_prompt_tokens=100, max_tokens=64, max_temperature=1.5)
    with TestClient(chat_server.create_app(model, limits), base_url="http://localhost") as client:
        yield client


def events(text: str) -> list:
    out = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert out[-1] == "[DONE]"
    return [json.loads(x) for x in out[:-1]]


def ask(messages, **extra):
    return {"model": "tiny-chat", "messages": messages, "temperature": 0, "max_tokens": 6, **extra}


def test_health_and_models(client):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/v1/models").json()["data"][0]
    assert info["id"] == "tiny-chat" and info["direction"] == "bidirectional"
    assert info["ways"] == ["forward", "backward"] and info["tasks"] == {"forward": "answer", "backward": "reverse"}
    page = client.get("/")
    assert page.status_code == 200 and "<title>revjax chat</title>" in page.text


@pytest.mark.parametrize("direction,messages", [
    ("forward", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": Q}]),
    ("backward", [{"role": "assistant", "content": FOUR}, {"role": "user", "content": HI},
                  {"role": "assistant", "content": [{"type": "text", "text": "Yes"}]}]),
])
def test_completions_stream_and_not(client, model, direction, messages):
    plain = client.post("/v1/chat/completions", json=ask(messages, direction=direction))
    assert plain.status_code == 200, plain.text
    body = plain.json()
    assert body["object"] == "chat.completion" and body["direction"] == direction
    assert body["task"] == ("reverse" if direction == "backward" else "answer")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] <= 6
    session = ChatSession(model, generate=direction)  # the same turn through the session: the same greedy text
    if direction == "forward":
        assert choice["message"]["content"] == session.reply(f"Be brief.\n\n{Q}", **{**GREEDY, "max_tokens": 6}).run()
    streamed = client.post("/v1/chat/completions", json=ask(messages, direction=direction, stream=True,
                                                            stream_options={"include_usage": True}))
    assert streamed.headers["content-type"].startswith("text/event-stream")
    chunks = events(streamed.text)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["usage"] == body["usage"] and chunks[-1]["choices"] == []
    content, growing = "", ""
    for chunk in chunks[:-1]:
        delta = chunk["choices"][0]["delta"]
        content += delta.get("content", "")
        growing = delta.get("prepend", "") + growing
    assert content == choice["message"]["content"]
    if direction == "backward":  # pieces arrive right to left; the reading-order text comes whole at the end
        assert growing == content and chunks[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]


@pytest.mark.parametrize("change,status,words", [
    (lambda b: {**b, "pad": "x" * 5000}, 413, "at most 4000"),
    (lambda b: {**b, "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 3
                + [{"role": "user", "content": "c"}]}, 400, "at most 5"),
    (lambda b: {**b, "messages": [{"role": "user", "content": "word " * 150}]}, 400, "at most 100"),
    (lambda b: {**b, "max_tokens": 65}, 400, "between 1 and 64"),
    (lambda b: {**b, "max_tokens": 0}, 400, "between 1 and 64"),
    (lambda b: {**b, "temperature": 1.6}, 400, "between 0 and 1.5"),
    (lambda b: {**b, "temperature": "hot"}, 400, "must be a number"),
    (lambda b: {**b, "direction": "sideways"}, 400, "unknown direction"),
    (lambda b: {**b, "messages": [{"role": "assistant", "content": "a"}]}, 400, "alternate user/assistant"),
    (lambda b: {**b, "direction": "backward", "messages": [{"role": "user", "content": "a"}] * 2}, 400,
     "start and end with an assistant message"),
    (lambda b: {**b, "messages": [{"role": "tool", "content": "a"}]}, 400, "only system"),
    (lambda b: {**b, "n": 2}, 400, "only n=1"),
    (lambda b: {**b, "stop": ["x"]}, 400, "stop sequences"),
    (lambda b: [1, 2], 400, "JSON object"),
])
def test_limits_give_openai_style_errors(client, change, status, words):
    response = client.post("/v1/chat/completions", json=change(ask([{"role": "user", "content": Q}])))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    not_json = client.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]["message"]


def test_missing_fastapi_names_the_serve_extra(run_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert chat_server.main([str(run_dir)]) == 1
    assert "pip install 'revjax[serve]'" in capsys.readouterr().err


# ---- a real server on loopback ----------------------------------------------------------------------------------

@contextlib.contextmanager
def uvicorn_thread(app):
    """``app`` served by uvicorn on 127.0.0.1 in a thread; yields its base url."""
    import uvicorn

    port = portpicker.pick_unused_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def served(model):
    """A uvicorn server on 127.0.0.1 in a thread: (base url, app)."""
    app = chat_server.create_app(model, Limits(max_queue=2, max_batch=2, batch_window_s=0.05))
    with uvicorn_thread(app) as url:
        yield url, app


def paced(monkeypatch, model, *, gate=None, delay=0.0):
    """Make the engine wait for ``gate`` before generating and ``delay`` seconds per chunk (to act mid-stream)."""
    original = model.engine.stream

    def stream(*args, **kwargs):
        if gate is not None:
            assert gate.wait(30)
        for chunk in original(*args, **kwargs):
            time.sleep(delay)
            yield chunk

    monkeypatch.setattr(model.engine, "stream", stream)


def test_openai_client_stream_and_not(served):
    import openai

    url, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny-chat"]
    messages = [{"role": "user", "content": Q}]
    whole = client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=6, temperature=0)
    assert whole.choices[0].message.role == "assistant" and whole.usage.completion_tokens <= 6
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny-chat", messages=messages, max_tokens=6, temperature=0, stream=True) if c.choices]
    assert "".join(parts) == whole.choices[0].message.content
    reverse = client.chat.completions.create(model="tiny-chat", messages=[{"role": "assistant", "content": FOUR}],
                                             max_tokens=6, temperature=0, extra_body={"direction": "backward"})
    streamed = client.chat.completions.create(model="tiny-chat", messages=[{"role": "assistant", "content": FOUR}],
                                              max_tokens=6, temperature=0, stream=True,
                                              extra_body={"direction": "backward"})
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == reverse.choices[0].message.content
    assert reverse.model_extra["task"] == "reverse"


def test_full_queue_is_429_and_waiting_requests_are_batched(served, model, monkeypatch):
    url, app = served
    batcher = app.state.batcher
    gate = threading.Event()
    paced(monkeypatch, model, gate=gate)
    before = dict(batcher.stats)
    body = ask([{"role": "user", "content": Q}])
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body, timeout=60)
        deadline = time.monotonic() + 30  # generous: a loaded 2-core machine is slow to start the requests
        while batcher.active != 1:  # the first request is running (held at the gate)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        waiting = [pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body, timeout=60) for _ in range(2)]
        deadline = time.monotonic() + 30
        while batcher.queued != 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        refused = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
        gate.set()
        replies = [f.result() for f in [first, *waiting]]
    assert [r.status_code for r in replies] == [200, 200, 200]
    texts = {r.json()["choices"][0]["message"]["content"] for r in replies}
    assert len(texts) == 1  # greedy: batched rows give what a request alone gives
    assert batcher.stats["batches"] - before["batches"] == 2 and batcher.stats["largest_batch"] == 2


def test_client_disconnect_stops_generation(served, model, monkeypatch):
    url, app = served
    batcher = app.state.batcher
    paced(monkeypatch, model, delay=0.05)
    before = dict(batcher.stats)
    body = ask([{"role": "user", "content": Q}], max_tokens=200, stream=True)
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
        for line in response.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # one piece arrived; hang up
    assert wait_idle(batcher, 10)
    assert batcher.stats["cancelled"] - before["cancelled"] == 1
    assert batcher.stats["tokens"] - before["tokens"] < 100  # well short of the 200 asked for
    assert batcher.stats["stopped_early"] - before["stopped_early"] == 1


def load_script():
    spec = importlib.util.spec_from_file_location("load_serve", Path(__file__).resolve().parents[1] / "scripts" /
                                                  "load_serve.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_serve"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_load_script_gets_every_request_streamed_to_done(model):
    """scripts/load_serve.py's core for ~2 s, 4 clients, both directions: every request sent ends in [DONE], and the
    tokens the clients count are the ones the server generated."""
    load_serve = load_script()
    app = chat_server.create_app(model, Limits(max_queue=8, max_batch=4, batch_window_s=0.02, max_tokens=8))
    batcher = app.state.batcher
    with uvicorn_thread(app) as url:
        report = load_serve.run_load(url, clients=4, seconds=2.0, direction="mixed", max_tokens=8)
        assert wait_idle(batcher, 10)
        refused = load_serve.run_load(url, clients=2, seconds=0.2, max_tokens=9)  # over the server's max_tokens
    assert report.errors == {} and report.lost == 0 and report.sent == report.complete >= 4
    assert batcher.stats["requests"] == report.sent and batcher.stats["cancelled"] == 0
    assert report.tokens == batcher.stats["tokens"] and 0 < report.tokens <= 8 * report.complete
    assert len(report.first_s) == len(report.total_s) == report.complete
    assert all(0 < a <= b for a, b in zip(report.first_s, report.total_s))
    figures = report.figures()
    assert figures["first_p50_s"] <= figures["first_p99_s"] and figures["tokens_per_s"] > 0
    assert refused.complete == 0 and refused.errors == {"HTTP 400": refused.sent} and refused.sent >= 2


# ---- a real browser ---------------------------------------------------------------------------------------------

def _browser():
    """Headless system Chromium through Selenium and the system chromedriver (no downloads)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = os.environ.get("REVJAX_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = os.environ.get("REVJAX_CHROMEDRIVER") or shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail("the browser test needs Chromium and its WebDriver from the system's packages (Debian: "
                    "apt-get install chromium chromium-driver; or set REVJAX_CHROMIUM and REVJAX_CHROMEDRIVER)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,760"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@pytest.mark.slow
def test_browser_streams_stops_edits_and_regenerates(served, model, monkeypatch, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, app = served
    batcher = app.state.batcher
    real = model.engine.stream
    scripted(monkeypatch, model, model.tokenizer.encode("word ") * 200, size=8)  # a long reply, whatever is sampled
    paced(monkeypatch, model, delay=0.15)
    browser = _browser()
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(url)
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert "bidirectional" in browser.find_element(By.ID, "model").text
        find = browser.find_element
        cancelled = batcher.stats["cancelled"]
        find(By.ID, "max-tokens").clear()
        find(By.ID, "max-tokens").send_keys("200")
        find(By.ID, "input").send_keys("Hello there")
        find(By.ID, "send").click()
        reply = lambda b: b.find_elements(By.CSS_SELECTOR, ".message.generated .content")  # noqa: E731
        wait.until(lambda b: reply(b) and reply(b)[-1].text.strip())  # streamed text appears while writing
        node = reply(browser)[-1]
        seen = node.text
        wait.until(lambda b: len(node.text) > len(seen))  # in place: the same node grows, nothing is rebuilt
        assert find(By.CSS_SELECTOR, ".message.generated").get_attribute("class").count("streaming")
        find(By.ID, "stop").click()
        wait.until(lambda b: b.find_element(By.ID, "status").text == "stopped")
        assert "(stopped)" in find(By.CSS_SELECTOR, ".message.generated .who").text
        wait.until(lambda b: batcher.stats["cancelled"] == cancelled + 1)

        # the reverse task, backward: the question the model writes goes above the typed answer
        monkeypatch.setattr(model.engine, "stream", real)
        Select(find(By.ID, "direction")).select_by_value("backward")
        assert "Reverse task" in find(By.ID, "task").text
        find(By.ID, "max-tokens").clear()
        find(By.ID, "max-tokens").send_keys("24")
        find(By.ID, "input").send_keys(FOUR)
        find(By.ID, "send").click()
        wait.until(lambda b: b.find_element(By.ID, "status").text.startswith("done"))
        first = browser.find_elements(By.CSS_SELECTOR, ".message")[0]
        assert "reverse task" in first.text and "generated" in first.get_attribute("class")
        assert find(By.TAG_NAME, "footer").location["y"] < first.location["y"]  # the input next to the newest
        assert browser.find_elements(By.CSS_SELECTOR, ".message")[1].text.endswith(FOUR + "\nEdit")
        browser.save_screenshot(str(tmp_path / "ui.png"))
        if os.environ.get("REVJAX_UI_SCREENSHOT"):
            shutil.copy(tmp_path / "ui.png", os.environ["REVJAX_UI_SCREENSHOT"])

        requests = batcher.stats["requests"]
        first.find_element(By.CSS_SELECTOR, "button.regenerate").click()
        wait.until(lambda b: batcher.stats["requests"] == requests + 1 and
                   b.find_element(By.ID, "status").text.startswith("done"))
        assert len(browser.find_elements(By.CSS_SELECTOR, ".message")) == 4
        browser.find_elements(By.CSS_SELECTOR, "button.edit")[-1].click()  # the first typed message: rewinds all
        area = find(By.CSS_SELECTOR, ".message textarea")
        area.clear()
        area.send_keys("Hi again")
        find(By.CSS_SELECTOR, "button.save").click()
        wait.until(lambda b: batcher.stats["requests"] == requests + 2 and
                   b.find_element(By.ID, "status").text.startswith("done"))
        messages = browser.find_elements(By.CSS_SELECTOR, ".message")
        assert len(messages) == 2 and "Hi again" in messages[0].text
    finally:
        browser.quit()


# ---- text for people: every front end renders the same ids the same way ---------------------------------------

def scripted(monkeypatch, chat: ChatModel, ids: list[int], size: int = 2):
    """Make ``chat``'s engine write ``ids`` (model order, ``size`` per chunk) for every row, whatever it is asked."""
    from types import SimpleNamespace

    def stream(prompts, *args, **kwargs):
        for i in range(0, len(ids), size):
            yield SimpleNamespace(tokens=[ids[i:i + size]] * len(prompts), done=[i + size >= len(ids)] * len(prompts))

    monkeypatch.setattr(chat.engine, "stream", stream)


def test_tool_calls_and_turn_ends_read_the_same_in_chat_serve_and_the_client(served, model, monkeypatch):
    import openai

    tok = model.tokenizer
    assert [tok.encode_special(n) for n in ("<|python_start|>", "<|python_end|>", "<|output_start|>",
                                            "<|output_end|>")] == [PY, PE, OS, OE]
    e = tok.encode
    written = [*e("So "), PY, *e("7+9-17"), PE, OS, *e("-1"), OE, *e(" ok <|bos|>"), US, *e("more")]
    want = "So [calculator: 7+9-17 = -1] ok <|bos|>"  # the literal text survives; the turn ends at US
    scripted(monkeypatch, model, written)
    session = ChatSession(model)
    assert session.reply(Q, **GREEDY).run() == want
    assert session.history[-1].ids == written[:written.index(US)]  # the next prompt holds what the model wrote
    out = io.StringIO()
    assert chat_cli.show_reply(ChatSession(model), Q, GREEDY, out, label=False) and out.getvalue() == want + "\n"
    url, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": Q}]
    whole = client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=40, temperature=0)
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny-chat", messages=messages, max_tokens=40, temperature=0, stream=True) if c.choices]
    assert whole.choices[0].message.content == "".join(parts) == want and len(parts) > 2  # streamed in pieces
    # backward (reverse task): written right to left, its call's output comes first in reading order
    scripted(monkeypatch, model, [UE, *e("?17-9+7")[::-1], PE, *e("7+9-17")[::-1], PY, OE, *e("-1")[::-1], OS, US])
    reverse = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": FOUR}],
                                             max_tokens=40, temperature=0, extra_body={"direction": "backward"})
    assert reverse.choices[0].message.content == "[calculator: 7+9-17 = -1]?17-9+7"


@pytest.mark.parametrize("direction", ["forward", "backward", "bidirectional"])
def test_openai_client_chats_with_every_model(model, direction):
    """A standard client's chat (user last) works with every model; a sequence-mode backward model answers it with
    the reverse task, and a bidirectional model asked without a direction answers forward."""
    import openai

    from revjax.chat.session import Message

    chat = model if direction == "bidirectional" else variant(model, direction, "sequence")
    messages = [{"role": "user", "content": FOUR}, {"role": "assistant", "content": Q},
                {"role": "user", "content": HI}]
    with uvicorn_thread(chat_server.create_app(chat, Limits(max_batch=1))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        whole = client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=6, temperature=0)
        parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="tiny-chat", messages=messages, max_tokens=6, temperature=0, stream=True) if c.choices]
    reverse = direction == "backward"
    assert whole.model_extra["task"] == ("reverse" if reverse else "answer")
    assert whole.model_extra["direction"] == ("backward" if reverse else "forward")
    content = whole.choices[0].message.content
    assert "".join(parts) == content and "<|" not in content
    session = ChatSession(chat)  # the same chat through the session: reverse reads it newest first
    enc = chat.encode
    session.history = ([Message("user", Q, enc(Q)), Message("assistant", FOUR, enc(FOUR))] if reverse else
                       [Message("user", FOUR, enc(FOUR)), Message("assistant", Q, enc(Q))])
    assert session.reply(HI, **{**GREEDY, "max_tokens": 6}).run() == content


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("direction,head", [("forward", "Assistant: "), ("backward", "Question (reverse task) ← ")])
def test_cli_shows_a_waiting_line_until_the_reply_and_warns_of_a_base_model(model, direction, head):
    chat = variant(model, direction, "sequence")
    assert chat_cli.base_warning(ChatSession(chat)) is None  # the tiny run is an SFT run
    base = ChatModel(chat.graphdef, chat.params, chat.tokenizer, direction, "sequence", chat.max_len, phase="base")
    session = ChatSession(base)
    assert "warning: this is a base model" in chat_cli.describe(session)
    for note in ("compiling…", "thinking…"):
        out = Terminal()
        assert chat_cli.show_reply(session, FOUR, GREEDY, out)
        shown = out.getvalue()
        assert shown.startswith(head + note)
        final = shown.split("\r\033[K")[-1]  # the waiting line is cleared; the reply stands in its place
        written = session.history[0 if direction == "backward" else -1].content
        assert final == f"{head.split(' ←')[0].removesuffix(': ')}: {written}\n"


def test_samples_are_unquoted_reading_order_text(model):
    from revjax.eval.samples import CHAT_SAMPLES, SAMPLE_PROMPTS, chat_samples, greedy_samples

    args = (model.graphdef, model.params, model.tokenizer, "bidirectional")
    chats = chat_samples(*args, "sequence", ["forward", "backward"], SEQ, 6)
    assert chats["forward"][0].startswith(CHAT_SAMPLES[0][0] + " → ")
    assert chats["backward"][0].startswith(CHAT_SAMPLES[0][1] + " → ")
    texts = greedy_samples(*args, ["forward", "backward"], SEQ, 6)
    assert texts["forward"][0].startswith(SAMPLE_PROMPTS["forward"][0])
    assert texts["backward"][0].endswith(SAMPLE_PROMPTS["backward"][0])
    assert all("<|" not in x for out in (chats, texts) for v in out.values() for x in v)
