"""Text chat backends behind one interface: a local causal LM or an OpenAI-compatible server.

Questioners and simulated users only need "continue these conversations", so they take a
`ChatModel` and never know whether GPT-4o (the paper's answerer), a vLLM server or a local
Qwen checkpoint is behind it. Heavy imports (torch, transformers) happen on first use, so
code paths that talk to a server never pay for them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

Message = dict[str, Any]
"""One chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""

Conversation = list[Message]

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"


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
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.model = model
        root = base_url.rstrip("/")
        # Accept both "http://host:8000" and "http://host:8000/v1" (OpenAI's own spelling).
        self.url = root + ("/chat/completions" if root.endswith("/v1") else "/v1/chat/completions")
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
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
            if key:
                headers["Authorization"] = f"Bearer {key}"
        return headers

    def _client_or_new(self) -> httpx.Client:
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=self.timeout)
        return self._client

    def close(self) -> None:
        """Close the HTTP connection pool."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx

        client = self._client_or_new()
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                resp = client.post(
                    self.url, json=payload, headers=self._headers(), timeout=self.timeout
                )
            except httpx.TransportError as exc:  # timeouts, refused connections
                last = f"{type(exc).__name__}: {exc}"
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
                    if resp.status_code in (401, 403) and self.api_key_env:
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
