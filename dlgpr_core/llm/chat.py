"""Text chat backends behind one interface: a local causal LM or an OpenAI-compatible server.

Questioners and simulated users only need "continue these conversations", so they take a
`ChatModel` and never know whether GPT-4o (the paper's answerer), a vLLM server or a local
Qwen checkpoint is behind it. Heavy imports (torch, transformers) happen on first use, so
code paths that talk to a server never pay for them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

Message = dict[str, Any]
"""One chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""

Conversation = list[Message]

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"

ALLOW_INSECURE_KEY_ENV = "DLGPR_ALLOW_INSECURE_API_KEY"
"""Set to 1 to send the API key over plain HTTP to a host that is not this machine (a
trusted private network only); the option ``allow_insecure_key`` does the same."""

_T = TypeVar("_T")


class ChatModel(Protocol):
    """Continues chat conversations; `n` independent samples per conversation."""

    def generate(
        self,
        conversations: list[list[dict[str, Any]]],
        max_new_tokens: int,
        temperature: float,
        n: int = 1,
        seed: int | None = None,
    ) -> list[list[str]]:
        """``out[i][j]`` is sample j of the reply to conversation i (temperature 0: greedy).

        With a seed the samples are reproducible as far as the backend allows (exactly for a
        local model on a fixed device; best effort for a server)."""
        ...


class ChatBackendError(RuntimeError):
    """The backend refused or failed a request in a way retrying will not fix."""


def _check_args(max_new_tokens: int, temperature: float, n: int) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")


_DTYPES = ("auto", "float32", "float16", "bfloat16")


class TransformersChat:
    """Any causal LM with a chat template, by hub id or local path, generating in batches.

    Prompts are left-padded so that every row of a batch ends where generation starts;
    that is what makes batched generation give the same replies as one-by-one generation.
    """

    def __init__(
        self,
        model: str | Path,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 8,
        trust_remote_code: bool = False,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_id = str(model)
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def name(self) -> str:
        """The model id or path, for logs and result files."""
        return self.model_id

    def load(self) -> None:
        """Load tokenizer and model now (otherwise the first `generate` does)."""
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.dtype == "auto":
            # Half precision only where it is fast and safe; CPUs get float32.
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        else:
            dtype = getattr(torch, self.dtype)
        tok = AutoTokenizer.from_pretrained(self.model_id, trust_remote_code=self.trust_remote_code)
        if getattr(tok, "chat_template", None) is None:
            raise ChatBackendError(f"{self.model_id} has no chat template; use a chat model")
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model: Any = AutoModelForCausalLM.from_pretrained(
            self.model_id, dtype=dtype, trust_remote_code=self.trust_remote_code
        )
        model.to(device)
        model.eval()
        self.device = device
        self._tokenizer, self._model = tok, model

    def _prompts(self, conversations: Sequence[Conversation]) -> list[str]:
        return [
            self._tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
            for conv in conversations
        ]

    def generate(
        self,
        conversations: list[list[dict[str, Any]]],
        max_new_tokens: int,
        temperature: float,
        n: int = 1,
        seed: int | None = None,
    ) -> list[list[str]]:
        """See `ChatModel.generate`; greedy decoding repeats its one reply n times."""
        _check_args(max_new_tokens, temperature, n)
        if not conversations:
            return []
        self.load()
        import torch

        prompts = self._prompts(conversations)
        sample = temperature > 0
        per_prompt = n if sample else 1
        out: list[list[str]] = []
        device = str(self.device)
        devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):
            # Forked so that seeding here never changes the caller's random stream.
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(prompts), self.batch_size):
                chunk = prompts[start : start + self.batch_size]
                enc = self._tokenizer(
                    chunk, return_tensors="pt", padding=True, add_special_tokens=False
                ).to(self.device)
                kwargs: dict[str, Any] = {
                    "max_new_tokens": max_new_tokens,
                    "do_sample": sample,
                    "num_return_sequences": per_prompt,
                    "pad_token_id": self._tokenizer.pad_token_id,
                }
                if sample:
                    kwargs.update(temperature=temperature, top_p=1.0, top_k=0)
                else:
                    kwargs.update(temperature=None, top_p=None, top_k=None)
                with torch.inference_mode():
                    ids = self._model.generate(**enc, **kwargs)
                new = ids[:, enc["input_ids"].shape[1] :]
                texts = self._tokenizer.batch_decode(new, skip_special_tokens=True)
                for i in range(len(chunk)):
                    replies = [t.strip() for t in texts[i * per_prompt : (i + 1) * per_prompt]]
                    out.append(replies if sample else replies * n)
        return out


_RETRY_STATUS = frozenset({408, 409, 429})


def key_safe_url(url: str) -> bool:
    """True when a bearer key may travel to `url`: over HTTPS, or to this machine itself
    (a loopback address or ``localhost``), where no one on the network can read it."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "https":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _EventLoopThread:
    """One asyncio loop on a daemon thread, shared by every `OpenAIChat`: a request runs
    there under `asyncio.timeout`, which cancels it wherever it is (connecting, waiting for
    headers, reading a body a byte at a time), a bound no per-read timeout can give. Callers
    stay synchronous and may call from several threads at once (the teacher does)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def _running(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            # After a fork the child has the loop object but not its thread: start anew.
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="dlgpr-http", daemon=True).start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run `coro` on the loop and wait for its result (or its exception)."""
        return asyncio.run_coroutine_threadsafe(coro, self._running()).result()


_HTTP_LOOP = _EventLoopThread()


def _error_detail(response: httpx.Response) -> str:
    """The server's own error message when it sent one (OpenAI: {"error": {"message"}})."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if body.get("message"):
            return str(body["message"])
    return response.text[:500]


class OpenAIChat:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp, ...).

    Rate limits (429) and server errors (5xx) are retried with exponential backoff, honouring
    a numeric Retry-After; other refusals raise `ChatBackendError` with the server's message,
    because retrying a bad request only hides the bug.

    The API key (``$<api_key_env>``) is sent only over HTTPS or to this machine: over plain
    HTTP to another host anyone on the path could read it, so it is withheld (with a
    warning) unless `allow_insecure_key` (or ``$DLGPR_ALLOW_INSECURE_API_KEY=1``) says
    otherwise. `timeout` bounds each network operation; `deadline` bounds a whole request
    (a server trickling a byte at a time defeats per-read timeouts), and a request cut off
    by it is retried like a timeout, so a call takes at most about
    ``(max_retries + 1) * deadline`` plus the backoff.
    """

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_OPENAI_BASE_URL,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], None] = time.sleep,
        deadline: float = 300.0,
        allow_insecure_key: bool | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if not deadline > 0:
            raise ValueError(f"deadline must be > 0 seconds, got {deadline}")
        self.model = model
        root = base_url.rstrip("/")
        # Accept both "http://host:8000" and "http://host:8000/v1" (OpenAI's own spelling).
        self.url = root + ("/chat/completions" if root.endswith("/v1") else "/v1/chat/completions")
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.deadline = deadline
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        if allow_insecure_key is None:
            flag = os.environ.get(ALLOW_INSECURE_KEY_ENV, "").strip().lower()
            allow_insecure_key = flag in ("1", "true", "yes")
        self.allow_insecure_key = allow_insecure_key
        self._key_withheld = False
        self._warned = False
        self._client = client
        self._sleep = sleep

    @property
    def name(self) -> str:
        """``openai:<model>@<url>``, for logs and result files."""
        return f"openai:{self.model}@{self.url}"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            # Local servers need no key, so a missing one is only an error if the server
            # says so (then the 401 message below names the variable).
            if key and not key_safe_url(self.url) and not self.allow_insecure_key:
                self._key_withheld = True
                self._warn_once(
                    f"not sending ${self.api_key_env} to {self.url}: plain HTTP to a host "
                    "that is not this machine, where anyone on the path could read it; use "
                    f"https, or allow_insecure_key=True / {ALLOW_INSECURE_KEY_ENV}=1 on a "
                    "trusted network"
                )
            elif key:
                if not key_safe_url(self.url):
                    self._warn_once(
                        f"sending ${self.api_key_env} over plain HTTP to {self.url}, as "
                        "allowed: anyone on the path can read it"
                    )
                headers["Authorization"] = f"Bearer {key}"
        return headers

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s", message)

    async def _attempt(self, payload: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        """One request on the shared loop, cut off at `deadline` wherever it is."""
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        async with asyncio.timeout(self.deadline):
            return await self._client.post(
                self.url, json=payload, headers=headers, timeout=self.timeout
            )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        if self._client is not None:
            client, self._client = self._client, None
            _HTTP_LOOP.run(client.aclose())

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx

        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                resp = _HTTP_LOOP.run(self._attempt(payload, self._headers()))
            except httpx.TransportError as exc:  # timeouts, refused connections
                last = f"{type(exc).__name__}: {exc}"
            except TimeoutError:
                last = f"no complete reply within the deadline of {self.deadline:g} s"
            else:
                if resp.status_code == 200:
                    try:
                        body = resp.json()
                    except ValueError as exc:
                        raise ChatBackendError(f"{self.url} sent invalid JSON: {exc}") from exc
                    if not isinstance(body, dict):
                        raise ChatBackendError(
                            f"{self.url} sent {type(body).__name__}, not an object"
                        )
                    return body
                detail = _error_detail(resp)
                last = f"HTTP {resp.status_code}: {detail}"
                if resp.status_code not in _RETRY_STATUS and resp.status_code < 500:
                    hint = ""
                    if resp.status_code in (401, 403) and self._key_withheld:
                        hint = (
                            f" (the key in ${self.api_key_env} was withheld: plain HTTP to "
                            f"another host; use https or {ALLOW_INSECURE_KEY_ENV}=1)"
                        )
                    elif resp.status_code in (401, 403) and self.api_key_env:
                        hint = f" (API key read from ${self.api_key_env})"
                    raise ChatBackendError(f"{self.url} refused the request: {last}{hint}")
                header = resp.headers.get("retry-after")
                if header is not None:
                    try:
                        retry_after = float(header)
                    except ValueError:
                        retry_after = None
            if attempt == self.max_retries:
                break
            delay = min(self.max_backoff, self.backoff * 2**attempt)
            if retry_after is not None:
                delay = min(self.max_backoff, max(delay, retry_after))
            log.warning("%s: %s; retry %d in %.1f s", self.url, last, attempt + 1, delay)
            self._sleep(delay)
        raise ChatBackendError(
            f"{self.url} failed after {self.max_retries + 1} attempts; last error: {last}"
        )

    def generate(
        self,
        conversations: list[list[dict[str, Any]]],
        max_new_tokens: int,
        temperature: float,
        n: int = 1,
        seed: int | None = None,
    ) -> list[list[str]]:
        """See `ChatModel.generate`; one request per conversation, more if a server caps n."""
        _check_args(max_new_tokens, temperature, n)
        out: list[list[str]] = []
        for conv in conversations:
            replies: list[str] = []
            while len(replies) < n:
                payload: dict[str, Any] = {
                    "model": self.model,
                    "messages": conv,
                    "max_tokens": max_new_tokens,
                    "temperature": temperature,
                    "n": n - len(replies),
                }
                if seed is not None:
                    payload["seed"] = seed + len(replies)
                body = self._post(payload)
                choices = body.get("choices")
                if not isinstance(choices, list) or not choices:
                    raise ChatBackendError(f"{self.url} sent no choices: {str(body)[:300]}")
                for choice in choices:
                    message = choice.get("message") if isinstance(choice, dict) else None
                    content = message.get("content") if isinstance(message, dict) else None
                    replies.append(content.strip() if isinstance(content, str) else "")
            out.append(replies[:n])
        return out


def create_chat_model(spec: str, **kwargs: Any) -> ChatModel:
    """``openai:<model>@<base_url>`` (or ``openai:<model>`` for OpenAI itself) -> `OpenAIChat`;
    anything else is a hub id or local path for `TransformersChat`. Extra keyword arguments go
    to the backend's constructor."""
    if spec.startswith("openai:"):
        rest = spec[len("openai:") :]
        model, sep, base_url = rest.partition("@")
        if not model:
            raise ValueError(f"no model name in {spec!r}; expected openai:<model>@<base_url>")
        return OpenAIChat(
            model, base_url if sep and base_url else DEFAULT_OPENAI_BASE_URL, **kwargs
        )
    if not spec:
        raise ValueError("empty chat model spec")
    return TransformersChat(spec, **kwargs)
