"""Chat backends: a local causal LM through transformers and an OpenAI-compatible server.

The local model is `build_tiny_causal_lm`'s: its weights are RANDOM, so its replies are noise
and only the plumbing is tested here (shapes, sampling, seeding, padding), never quality.
The server tests run a real HTTP server on 127.0.0.1, so the request really goes through
httpx, headers, JSON and retries.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dlgpr_core.llm.chat import (
    ChatBackendError,
    OpenAIChat,
    TransformersChat,
    create_chat_model,
)
from dlgpr_core.llm.tiny import build_tiny_causal_lm

CONVS = [
    [{"role": "user", "content": "Is there a bank?"}],
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What colour is the cafe on the corner of the street?"},
    ],
]


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> TransformersChat:
    path = build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "causal")
    return TransformersChat(path, device="cpu", batch_size=2)


def test_transformers_sampling_shapes_and_seed(tiny_chat: TransformersChat) -> None:
    out = tiny_chat.generate(CONVS, max_new_tokens=6, temperature=1.0, n=3, seed=7)
    assert len(out) == 2 and all(len(r) == 3 for r in out)
    assert all(isinstance(s, str) for r in out for s in r)
    assert tiny_chat.generate(CONVS, max_new_tokens=6, temperature=1.0, n=3, seed=7) == out
    other = tiny_chat.generate(CONVS, max_new_tokens=6, temperature=1.0, n=3, seed=8)
    assert other != out  # random weights still give a different sample for another seed
    assert tiny_chat._tokenizer.padding_side == "left"


def test_transformers_batches_and_greedy(tiny_chat: TransformersChat) -> None:
    three = [*CONVS, CONVS[0]]  # 3 conversations with batch_size 2: two batches
    greedy = tiny_chat.generate(three, max_new_tokens=5, temperature=0.0, n=2)
    assert len(greedy) == 3 and all(len(r) == 2 and r[0] == r[1] for r in greedy)
    assert greedy[0] == greedy[2]
    # Left padding: every row of a batch ends with its prompt's last token, where generation
    # starts. (Greedy replies of random weights are mostly whitespace, so comparing batched
    # with unbatched replies would prove nothing; the mask does.)
    enc = tiny_chat._tokenizer(
        tiny_chat._prompts(CONVS), return_tensors="pt", padding=True, add_special_tokens=False
    )
    mask = enc["attention_mask"]
    assert mask[:, -1].tolist() == [1, 1] and mask[0, 0].item() == 0
    assert tiny_chat.generate([], 5, 0.0) == []
    with pytest.raises(ValueError):
        tiny_chat.generate(CONVS, max_new_tokens=5, temperature=0.0, n=0)


def test_factory() -> None:
    c = create_chat_model("openai:gpt-4o@http://127.0.0.1:9/v1")
    assert isinstance(c, OpenAIChat)
    assert c.model == "gpt-4o" and c.url == "http://127.0.0.1:9/v1/chat/completions"
    assert isinstance(create_chat_model("openai:gpt-4o"), OpenAIChat)
    bare = create_chat_model("openai:m@http://h:1")
    assert isinstance(bare, OpenAIChat) and bare.url == "http://h:1/v1/chat/completions"
    t = create_chat_model("Qwen/Qwen2.5-7B-Instruct", device="cpu")
    assert isinstance(t, TransformersChat) and t._model is None  # lazy: nothing loaded
    with pytest.raises(ValueError):
        create_chat_model("openai:@http://h:1")


class _Server:
    """A scripted /v1/chat/completions: pops one (status, body) per request, records them."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.script: list[tuple[int, dict[str, Any]]] = []
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                outer.requests.append((self.path, dict(self.headers), body))
                status, reply = outer.script.pop(0)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    thread = threading.Thread(target=s.httpd.serve_forever, daemon=True)
    thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _ok(*texts: str) -> tuple[int, dict[str, Any]]:
    return 200, {"choices": [{"index": i, "message": {"content": t}} for i, t in enumerate(texts)]}


def test_openai_request_and_auth(server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLGPR_TEST_KEY", "sk-test-123")
    chat = OpenAIChat("gpt-4o", server.url + "/v1", api_key_env="DLGPR_TEST_KEY", timeout=5)
    # Second conversation: the server sends one choice for n=2, so the client asks again.
    server.script = [_ok(" yes ", "no"), _ok("maybe"), _ok("again")]
    out = chat.generate(CONVS, max_new_tokens=12, temperature=0.7, n=2, seed=3)
    assert out == [["yes", "no"], ["maybe", "again"]]
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test-123"
    assert body == {
        "model": "gpt-4o",
        "messages": CONVS[0],
        "max_tokens": 12,
        "temperature": 0.7,
        "n": 2,
        "seed": 3,
    }
    assert [r[2]["messages"] for r in server.requests[1:]] == [CONVS[1], CONVS[1]]


def test_openai_short_choices_are_topped_up(server: _Server) -> None:
    chat = OpenAIChat("m", server.url, api_key_env=None, timeout=5)
    server.script = [_ok("a"), _ok("b")]
    assert chat.generate(CONVS[:1], 8, 1.0, n=2, seed=1) == [["a", "b"]]
    assert [r[2]["n"] for r in server.requests] == [2, 1]
    assert [r[2]["seed"] for r in server.requests] == [1, 2]
    assert "Authorization" not in server.requests[0][1]


def test_openai_retries_server_errors(server: _Server) -> None:
    sleeps: list[float] = []
    chat = OpenAIChat("m", server.url, api_key_env=None, backoff=0.5, sleep=sleeps.append)
    server.script = [(500, {"error": {"message": "boom"}}), (429, {}), _ok("fine")]
    assert chat.generate(CONVS[:1], 8, 0.0) == [["fine"]]
    assert len(server.requests) == 3 and sleeps == [0.5, 1.0]


def test_openai_gives_up_and_reports(server: _Server) -> None:
    chat = OpenAIChat("m", server.url, api_key_env=None, max_retries=1, sleep=lambda _: None)
    server.script = [(503, {"error": {"message": "overloaded"}})] * 2
    with pytest.raises(ChatBackendError, match=r"after 2 attempts.*503.*overloaded"):
        chat.generate(CONVS[:1], 8, 0.0)


def test_openai_client_error_is_not_retried(server: _Server) -> None:
    chat = OpenAIChat("m", server.url, api_key_env=None, sleep=lambda _: pytest.fail("retried"))
    server.script = [(400, {"error": {"message": "max_tokens is too large"}})]
    with pytest.raises(ChatBackendError, match=r"HTTP 400: max_tokens is too large"):
        chat.generate(CONVS[:1], 8, 0.0)
    assert len(server.requests) == 1


def test_openai_unreachable_server() -> None:
    chat = OpenAIChat("m", "http://127.0.0.1:9", api_key_env=None, max_retries=1, timeout=2)
    chat._sleep = lambda _: None
    with pytest.raises(ChatBackendError, match="ConnectError"):
        chat.generate(CONVS[:1], 8, 0.0)


# --- hardening: where the key goes, and a total deadline per request ----------------------


def _own_remote_address() -> str | None:
    """An address of this machine that is not loopback (the route to a documentation
    network, never contacted: a UDP socket only picks its source address)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("https://api.openai.com/v1", True),
        ("http://127.0.0.1:8000/v1", True),
        ("http://127.5.0.1:8000", True),
        ("http://localhost:8000", True),
        ("http://[::1]:8000", True),
        ("http://192.0.2.7:8000/v1", False),
        ("http://gpu-box.lan:8000", False),
        ("http://localhost.evil.example:80", False),
    ],
)
def test_the_key_is_sent_only_over_https_or_to_loopback(
    url: str, sent: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DLGPR_TEST_KEY", "sk-secret")
    monkeypatch.delenv("DLGPR_ALLOW_INSECURE_API_KEY", raising=False)
    chat = OpenAIChat("m", url, api_key_env="DLGPR_TEST_KEY")
    assert ("Authorization" in chat._headers()) == sent
    assert ("not sending" in caplog.text) == (not sent)
    allowed = OpenAIChat("m", url, api_key_env="DLGPR_TEST_KEY", allow_insecure_key=True)
    assert allowed._headers()["Authorization"] == "Bearer sk-secret"


def test_a_remote_plain_http_server_never_sees_the_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real request to this machine's own non-loopback address over plain HTTP: the key
    stays home unless explicitly allowed (then with a warning), and a 401 says why."""
    address = _own_remote_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    s = _Server(host="0.0.0.0")
    thread = threading.Thread(target=s.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://{address}:{s.httpd.server_address[1]}"
        monkeypatch.setenv("DLGPR_TEST_KEY", "sk-secret")
        monkeypatch.delenv("DLGPR_ALLOW_INSECURE_API_KEY", raising=False)
        s.script = [_ok("fine"), (401, {"error": {"message": "no key"}})]
        chat = OpenAIChat("m", url, api_key_env="DLGPR_TEST_KEY", timeout=5)
        assert chat.generate(CONVS[:1], 8, 0.0) == [["fine"]]
        assert "Authorization" not in s.requests[0][1]
        with pytest.raises(ChatBackendError, match="withheld"):
            chat.generate(CONVS[:1], 8, 0.0)
        monkeypatch.setenv("DLGPR_ALLOW_INSECURE_API_KEY", "1")
        s.script = [_ok("fine")]
        with caplog.at_level("WARNING"):
            OpenAIChat("m", url, api_key_env="DLGPR_TEST_KEY", timeout=5).generate(
                CONVS[:1], 8, 0.0
            )
        assert s.requests[-1][1]["Authorization"] == "Bearer sk-secret"
        assert "plain HTTP" in caplog.text
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()


class _Trickler:
    """A real TCP server that answers every request with one byte every 50 ms, in the
    status line and headers (`phase="headers"`) or in a body (`phase="body"`): each read
    succeeds, so per-read timeouts never fire."""

    def __init__(self, phase: str) -> None:
        import socket

        self.phase = phase
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: Any) -> None:
        with conn:
            conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            if self.phase == "body":
                conn.sendall(head + b"Content-Length: 100000\r\n\r\n")
                head = b" " * 100000
            else:
                head += b"X-Slow: " + b"a" * 100000
            for i in range(len(head)):
                if self.stop.wait(0.05):
                    return
                try:
                    conn.sendall(head[i : i + 1])
                except OSError:
                    return  # the client gave up

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_trickling_server_is_cut_off_at_the_deadline(phase: str) -> None:
    """Per-read timeouts never fire while a server sends a byte at a time; the total
    deadline per request does, and the retry gets its own."""
    import time

    server = _Trickler(phase)
    try:
        chat = OpenAIChat(
            "m", server.url, api_key_env=None, timeout=5, deadline=1.0, max_retries=1,
            sleep=lambda _: None,
        )  # fmt: skip
        t = time.monotonic()
        with pytest.raises(ChatBackendError, match=r"deadline of 1 s"):
            chat.generate(CONVS[:1], 8, 0.0)
        assert time.monotonic() - t < 5.0  # two attempts of 1 s each, plus slack
        chat.close()
    finally:
        server.close()
