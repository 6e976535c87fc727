"""``revjax serve`` against an attacker: the API key, the Host allow-list, the Content-Type rule, OpenAI-shaped 4xx
for every bad request, limits cut to the model, slow and too many connections on a real uvicorn, and the port and
bind checks that come before the model loads."""

import contextlib
import json
import socket
import threading
import time

import httpx
import portpicker
import pytest

from revjax.chat import server as chat_server
from revjax.chat.protocol import Limits
from revjax.chat.session import ChatError
from tests.helpers import SEQ, model, run_dir  # noqa: F401  (the tiny chat run's fixtures)

KEY = "s3cret-key"
HELLO = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 2}


@pytest.fixture(scope="module")
def client(model):
    """A TestClient on an app that needs ``KEY`` (Host: localhost)."""
    from fastapi.testclient import TestClient

    app = chat_server.create_app(model, Limits(max_body_bytes=1 << 20), api_key=KEY)
    with TestClient(app, base_url="http://localhost", headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def error_of(response, status: int) -> dict:
    """The OpenAI error object of ``response``, which must have ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


# ---- the API key --------------------------------------------------------------------------------------------------

def test_api_key_guards_every_route_but_the_page_and_health(client, monkeypatch):
    bare = {"Authorization": ""}
    assert client.get("/", headers=bare).status_code == 200
    assert client.get("/health", headers=bare).json()["status"] == "ok"
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/v1/nope")]:
        missing = client.request(method, path, headers=bare, json=HELLO)
        assert error_of(missing, 401)["code"] == "missing_api_key" and missing.headers["www-authenticate"] == "Bearer"
    assert error_of(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)["code"] == \
        "invalid_api_key"
    assert error_of(client.get("/v1/models", headers={"Authorization": f"Basic {KEY}"}), 401)["type"] == \
        "authentication_error"
    compared = []
    original = chat_server.hmac.compare_digest
    monkeypatch.setattr(chat_server.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or original(a, b))
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny-chat"
    assert compared == [(KEY.encode(), KEY.encode())]  # the key is checked in constant time
    reply = client.post("/v1/chat/completions", json=HELLO)  # no model named: the served one answers
    assert reply.status_code == 200 and reply.json()["model"] == "tiny-chat"


PAGE_HARNESS = """
const seen = [], stored = {}, answers = [401, 200, 200];
const sessionStorage = { getItem: (k) => stored[k] ?? null, setItem: (k, v) => { stored[k] = v; } };
const window = { prompt: () => "  typed-key " };
async function fetch(path, options) { seen.push([path, options.headers]); return { status: answers.shift() }; }
%s
(async () => {
  const first = await api("/v1/models");
  const second = await api("/v1/chat/completions", { method: "POST", headers: { "Content-Type": "application/json" } });
  console.log(JSON.stringify({ seen, stored, statuses: [first.status, second.status] }));
})();
"""


def test_page_asks_for_the_key_once_and_sends_it(client, tmp_path):
    """The page's ``api()`` under Node with stand-ins for fetch, prompt and sessionStorage: a 401 asks for the key,
    the request is sent again with it, and later requests carry it without asking."""
    import shutil
    import subprocess

    page = client.get("/", headers={"Authorization": ""}).text
    assert page.count('await api("/v1/') == 2 and 'fetch("/v1/' not in page  # both calls go through api()
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed; the page's key handling is run under Node")
    source = page[page.index("let apiKey"):page.index("async function failure")]
    (tmp_path / "page.js").write_text(PAGE_HARNESS % source)
    out = json.loads(subprocess.run([node, str(tmp_path / "page.js")], capture_output=True, text=True, check=True,
                                    timeout=30).stdout)
    assert out["statuses"] == [200, 200]
    assert out["seen"] == [["/v1/models", {}], ["/v1/models", {"Authorization": "Bearer typed-key"}],
                           ["/v1/chat/completions", {"Content-Type": "application/json",
                                                     "Authorization": "Bearer typed-key"}]]
    assert out["stored"] == {"revjax-api-key": "typed-key"}


# ---- Host and Content-Type ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("host,ok", [
    ("localhost:8000", True), ("LOCALHOST", True), ("127.0.0.1:1", True), ("[::1]:8000", True), ("[::1]", True),
    ("evil.example", False), ("localhost.evil.example", False), ("127.0.0.1.nip.io:8000", False), ("", False),
    ("localhost:80@evil", False), ("[::1]evil", False),
])
def test_host_outside_the_allow_list_is_refused(client, host, ok):
    response = client.get("/health", headers={"Host": host})
    if ok:
        assert response.status_code == 200
    else:
        error = error_of(response, 400)
        assert error["code"] == "invalid_host" and "--allowed-host" in error["message"]
        assert error_of(client.post("/v1/chat/completions", headers={"Host": host}, json=HELLO), 400)


def test_allowed_hosts_add_the_bound_host_and_the_extra_names(model):
    from fastapi.testclient import TestClient

    assert chat_server.allowed_hosts("0.0.0.0") == {"localhost", "127.0.0.1", "[::1]"}
    hosts = chat_server.allowed_hosts("10.1.2.3", ["Chat.LAN", "::2"])
    assert hosts == {"localhost", "127.0.0.1", "[::1]", "10.1.2.3", "chat.lan", "[::2]"}
    with TestClient(chat_server.create_app(model, hosts=hosts)) as client:
        assert [client.get("/health", headers={"Host": h}).status_code for h in
                ("10.1.2.3:8000", "chat.lan", "[::2]:1", "10.1.2.4", "testserver")] == [200, 200, 200, 400, 400]
    with TestClient(chat_server.create_app(model, hosts=chat_server.allowed_hosts("127.0.0.1", ["*"]))) as client:
        assert client.get("/health", headers={"Host": "anything.example"}).status_code == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/json; charset=utf-16",
                                          "application/jsonp"])
def test_post_without_json_content_type_is_415_and_runs_nothing(client, content_type):
    batcher = client.app.state.batcher
    before = batcher.stats["requests"]
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/v1/chat/completions", content=json.dumps(HELLO).encode(), headers=headers)
    assert error_of(response, 415)["code"] == "unsupported_media_type"
    assert batcher.stats["requests"] == before
    fine = client.post("/v1/chat/completions", content=json.dumps({**HELLO, "n": 2}).encode(),
                       headers={"Content-Type": "Application/JSON; charset=UTF-8"})
    assert "only n=1" in error_of(fine, 400)["message"]  # passed the gate, refused by the request checks


# ---- every bad request is an OpenAI-shaped 4xx ----------------------------------------------------------------------

DEEP = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize("body,status,param,words", [
    ({**HELLO, "top_k": 2**31}, 400, "top_k", "between 0 and 2147483647"),
    ({**HELLO, "top_k": -1}, 400, "top_k", "between 0 and"),
    ({**HELLO, "seed": 2**63}, 400, "seed", "between -9223372036854775808 and 9223372036854775807"),
    ({**HELLO, "seed": -(2**63) - 1}, 400, "seed", "between"),
    (b'{"seed": ' + b"9" * 5000 + b"}", 400, None, "not valid JSON"),  # past Python's int-digit limit
    ({**HELLO, "max_tokens": -5}, 400, "max_tokens", "between 1 and"),
    ({**HELLO, "temperature": -1}, 400, "temperature", "between 0 and"),
    ({**HELLO, "model": "gpt-4o"}, 404, "model", "not served here"),
    ({**HELLO, "model": ["tiny-chat"]}, 400, "model", "must be a string"),
    ({**HELLO, "messages": [{"role": "x" * 100_000, "content": "a"}]}, 400, "messages[0].role", "only system"),
    (DEEP, 400, None, "nests JSON too deeply"),
    (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None, "not UTF-8"),
    ('{"messages": [{"role": "user", "content": "hi"}]}'.encode("utf-16"), 400, None, "not UTF-8"),
    (b"[" * 10 + b"1" + b"]" * 10, 400, None, "JSON object"),
])
def test_bad_values_are_4xx_with_openai_error(client, body, status, param, words):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    error = error_of(client.post("/v1/chat/completions", content=raw,
                                 headers={"Content-Type": "application/json"}), status)
    assert words in error["message"] and error["param"] == param and len(error["message"]) < 400
    if status == 404:
        assert error["code"] == "model_not_found"


def test_routes_and_methods_not_served_are_openai_404_and_405(client):
    error = error_of(client.get("/v1/completions"), 404)
    assert "GET /v1/completions" in error["message"] and error["type"] == "not_found_error"
    wrong = client.get("/v1/chat/completions")
    assert "takes POST" in error_of(wrong, 405)["message"] and wrong.headers["allow"] == "POST"
    assert error_of(client.delete("/v1/models"), 405)
    assert error_of(client.options("/v1/chat/completions"), 405)  # no CORS preflight: cross-site JSON POSTs fail


def test_extreme_values_inside_the_ranges_are_served(client):
    for extra in ({"top_k": 2**31 - 1, "seed": 2**63 - 1}, {"seed": -(2**63), "model": "tiny-chat"}):
        reply = client.post("/v1/chat/completions", json={**HELLO, "temperature": 1.0, **extra})
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] <= 2


def test_models_reports_limits_that_fit_the_context(client, model):
    info = client.get("/v1/models").json()["data"][0]
    assert info["context_length"] == model.max_len == SEQ
    assert info["limits"]["max_tokens"] == SEQ - 1 < Limits().max_tokens  # 1024 asked, the context holds 255
    assert info["limits"]["max_prompt_tokens"] == SEQ - 1
    error = error_of(client.post("/v1/chat/completions", json={**HELLO, "max_tokens": SEQ}), 400)
    assert f"between 1 and {SEQ - 1}" in error["message"]


# ---- a real uvicorn: slow heads, slow bodies, too many connections --------------------------------------------------

@contextlib.contextmanager
def real_server(app, **options):
    """``app`` behind :func:`chat_server.make_server` on a bound loopback socket, in a thread; yields the port."""
    sock = chat_server.bind("127.0.0.1", portpicker.pick_unused_port())
    server = chat_server.make_server(app, sock, log_level="warning", **options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def raw(port: int, data: bytes = b"") -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    if data:
        conn.sendall(data)
    return conn


def closed_after(conn: socket.socket) -> float:
    """Seconds until the server closes ``conn`` (reading and dropping whatever it answered first)."""
    started = time.monotonic()
    with conn:
        while conn.recv(4096):
            pass
    return time.monotonic() - started


@pytest.fixture(scope="module")
def quick(model):
    """A real server with a 0.5 s head timeout and a 0.5 s body timeout; yields its port."""
    app = chat_server.create_app(model, Limits(body_timeout_s=0.5))
    with real_server(app, head_timeout_s=0.5, max_connections=50) as port:
        yield port


def test_connection_without_a_complete_head_is_closed(quick):
    half = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
    opened = time.monotonic()
    conns = [raw(quick), raw(quick, half), raw(quick, half)]
    time.sleep(0.2)
    conns[2].sendall(b"still-coming")  # trickling bytes does not extend the deadline
    for conn in conns:
        closed_after(conn)
        assert 0.4 < time.monotonic() - opened < 5
    # after a response on a keep-alive connection, a half-sent second head is closed too
    conn = raw(quick, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert conn.recv(4096).startswith(b"HTTP/1.1 200")
    conn.sendall(half)
    assert closed_after(conn) < 5
    # a body nobody reads any more (the route answered without it) cannot hold the connection either
    conn = raw(quick, b"GET /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\nab")
    assert conn.recv(4096).startswith(b"HTTP/1.1 200")
    for _ in range(3):
        time.sleep(0.1)
        with contextlib.suppress(OSError):
            conn.sendall(b"x")
    assert closed_after(conn) < 5
    assert httpx.get(f"http://127.0.0.1:{quick}/health").status_code == 200  # a prompt client is served


def test_body_not_sent_in_time_is_408(quick):
    conn = raw(quick, b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 500\r\n\r\n{\"messages\": ")
    started = time.monotonic()
    answer = b""
    with conn:
        while chunk := conn.recv(4096):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                break
    assert answer.startswith(b"HTTP/1.1 408") and b'"code":"request_timeout"' in answer
    assert 0.4 < time.monotonic() - started < 5


def test_connections_above_the_cap_get_503(model):
    app = chat_server.create_app(model)
    with real_server(app, head_timeout_s=30, max_connections=3) as port:
        idle = [raw(port) for _ in range(3)]
        time.sleep(0.2)
        refused = httpx.get(f"http://127.0.0.1:{port}/health")
        error = error_of(refused, 503)
        assert error["code"] == "too_many_connections" and refused.headers["connection"] == "close"
        for conn in idle:
            conn.close()
        deadline = time.monotonic() + 10
        while (status := httpx.get(f"http://127.0.0.1:{port}/health").status_code) == 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert status == 200


# ---- revjax serve: what is checked before the model loads ----------------------------------------------------------

@pytest.fixture
def no_load(monkeypatch):
    """``load_model`` replaced by one that records its call and stops the command there."""
    calls = []

    def load(*args, **kwargs):
        calls.append(args)
        raise ChatError("the model would load here")

    monkeypatch.setattr("revjax.chat.session.load_model", load)
    monkeypatch.delenv("REVJAX_API_KEY", raising=False)
    return calls


def test_port_in_use_is_one_line_before_the_model_loads(run_dir, no_load, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert chat_server.main([str(run_dir), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err == (f"revjax serve: error: port {port} on 127.0.0.1 is already in use; stop what is listening "
                   "there or choose another with --port\n")
    assert no_load == []


@pytest.mark.parametrize("args,env,reaches_load,words", [
    (["--host", "0.0.0.0"], None, False, "needs --api-key (or REVJAX_API_KEY); pass --no-auth"),
    (["--host", "0.0.0.0", "--no-auth"], None, True, ""),
    (["--host", "0.0.0.0"], "k", True, ""),
    (["--host", "127.0.0.1", "--api-key", "k", "--no-auth"], None, False, "contradict"),
    (["--api-key", " "], None, False, "--api-key is empty"),
    (["--head-timeout", "0"], None, False, "--head-timeout must be a positive"),
    (["--host", "no-such-host.invalid"], None, False, "needs --api-key"),
    (["--host", "no-such-host.invalid", "--no-auth"], None, False, "cannot bind --host"),
])
def test_bind_rules_before_the_model_loads(run_dir, no_load, monkeypatch, capsys, args, env, reaches_load, words):
    if env:
        monkeypatch.setenv("REVJAX_API_KEY", env)
    assert chat_server.main([str(run_dir), "--port", str(portpicker.pick_unused_port()), *args]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (no_load != []) == reaches_load
    assert (words or "the model would load here") in err


def test_help_documents_each_option(capsys):
    with pytest.raises(SystemExit):
        chat_server.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--api-key", "REVJAX_API_KEY", "--no-auth", "--allowed-host NAME", "rebinding",
                  "--head-timeout SECONDS", "--max-connections", "checked before the model loads"):
        assert words in text


def test_serve_end_to_end_with_key_and_flags(run_dir, model, monkeypatch):
    """``revjax serve`` itself (model load replaced by the loaded fixture): key, extra Host name, head timeout."""
    monkeypatch.delenv("REVJAX_API_KEY", raising=False)
    monkeypatch.setattr("revjax.chat.session.load_model", lambda *a, **k: model)
    servers = []
    make = chat_server.make_server
    monkeypatch.setattr(chat_server, "make_server", lambda *a, **k: servers.append(make(*a, **k)) or servers[-1])
    port = portpicker.pick_unused_port()
    codes = []
    thread = threading.Thread(target=lambda: codes.append(chat_server.main([
        str(run_dir), "--port", str(port), "--api-key", KEY, "--allowed-host", "chat.lan", "--head-timeout", "0.5",
        "--max-batch", "1"])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (servers and servers[0].started):
        assert time.monotonic() < deadline and thread.is_alive(), "revjax serve did not start"
        time.sleep(0.05)
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/v1/models").status_code == 401
        authorized = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(f"{url}/v1/models", headers={**authorized, "Host": "chat.lan:80"}).status_code == 200
        assert httpx.get(f"{url}/v1/models", headers={**authorized, "Host": "evil.example"}).status_code == 400
        assert 0.3 < closed_after(raw(port, b"GET / HTTP/1.1\r\n")) < 5
    finally:
        servers[0].should_exit = True
        thread.join(30)
    assert codes == [0]
