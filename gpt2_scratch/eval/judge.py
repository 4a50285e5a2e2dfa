"""An LLM judge over any OpenAI-compatible chat-completions endpoint (Ollama, vLLM, llama.cpp, OpenAI).

Entry point: ``JudgeClient(JudgeConfig(url, model))``: ``POST {url}/chat/completions`` through the
standard library's ``urllib`` (no dependency), scoring a response 0-100 against the reference with
the LLMs-from-scratch prompt, at temperature 0 with a fixed seed (a rerun asks the same question).
Invariant: nothing is dropped: a reply that is not an integer in [0, 100], or a request that still
fails after the retries, gives ``score=None`` with the reply or the error kept; only an endpoint
that cannot be reached at all raises ``JudgeUnreachable``. Design: docs/design.md.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

JUDGE_API_KEY_ENV = "JUDGE_API_KEY"
DEFAULT_JUDGE_SEED = 123

_PROMPT = (
    "Given the input `{input}` and correct output `{output}`, "
    "score the model response `{response}` on a scale from 0 to 100, where 100 is the best score. "
    "Respond with the integer number only."
)

# The whole reply must be one integer; we tolerate surrounding whitespace, a final
# period and a "/100" suffix, which instruction-tuned judges often add.
_SCORE_RE = re.compile(r"^\s*(\d{1,3})\s*(?:/\s*100)?\s*\.?\s*$")


def judge_prompt(formatted_input: str, output: str, response: str) -> str:
    """The judge's question: ``formatted_input`` is the prompt style's formatted prompt."""
    return _PROMPT.format(input=formatted_input, output=output, response=response)


def parse_score(reply: str) -> int | None:
    """The integer score in ``reply``, or None when the reply is not a lone integer in [0, 100]."""
    m = _SCORE_RE.match(reply)
    if m is None:
        return None
    score = int(m.group(1))
    return score if 0 <= score <= 100 else None


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge lives and how to ask it.

    ``url`` is the API base (the part before ``/chat/completions``), e.g.
    ``http://localhost:11434/v1``. ``retries`` counts extra attempts after a
    server error (HTTP 5xx, 429), a timeout or a dropped connection; the waits
    between attempts are ``backoff``, ``2 * backoff``, ``4 * backoff``, ... seconds.
    """

    url: str
    model: str
    api_key: str | None = None
    seed: int = DEFAULT_JUDGE_SEED
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"judge url must start with http:// or https://, got {self.url!r}")
        if not self.model:
            raise ValueError("judge model must be a non-empty name")
        if self.timeout <= 0:
            raise ValueError(f"judge timeout must be > 0 seconds, got {self.timeout!r}")
        if self.retries < 0 or self.backoff < 0:
            raise ValueError("judge retries and backoff must be >= 0")

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/chat/completions"

    def fingerprint(self) -> dict:
        """The settings that decide the judge's answers (saved with the results; no API key)."""
        return {"url": self.url, "model": self.model, "seed": self.seed, "temperature": 0}


@dataclass(frozen=True)
class JudgeResult:
    """One judgement: ``score`` (None when unparseable or failed), ``raw`` reply or error text."""

    score: int | None
    raw: str
    error: bool = False


class JudgeUnreachable(RuntimeError):
    """The endpoint could not be reached at all (connection refused, unknown host)."""


class JudgeClient:
    """Sends chat-completions requests to the judge; see ``JudgeConfig``."""

    def __init__(self, config: JudgeConfig):
        self.config = config

    def request_body(self, prompt: str) -> dict:
        return {
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "seed": self.config.seed,
            "stream": False,
        }

    def complete(self, prompt: str) -> str:
        """The judge's reply text to ``prompt``.

        Raises ``JudgeUnreachable`` when no connection can be made, and
        ``RuntimeError`` (with the server's message) when the request fails for
        another reason after the retries.
        """
        cfg = self.config
        data = json.dumps(self.request_body(prompt)).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        last_error = ""
        for attempt in range(cfg.retries + 1):
            if attempt:
                time.sleep(cfg.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(cfg.endpoint, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=cfg.timeout) as resp:
                    body = resp.read().decode("utf-8", errors="replace")
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", errors="replace")[:500].strip()
                last_error = f"HTTP {e.code} from {cfg.endpoint}: {detail or e.reason}"
                if e.code >= 500 or e.code == 429:
                    continue  # overloaded or crashed: worth another try
                raise RuntimeError(last_error) from None  # 4xx: our request is wrong, retrying will not help
            except urllib.error.URLError as e:
                if isinstance(e.reason, (ConnectionRefusedError, socket.gaierror)):
                    raise JudgeUnreachable(f"cannot reach the judge at {cfg.endpoint} ({e.reason})") from None
                last_error = f"request to {cfg.endpoint} failed: {e.reason}"
                continue
            except (TimeoutError, socket.timeout, ConnectionError) as e:
                last_error = f"request to {cfg.endpoint} failed: {type(e).__name__}: {e}"
                continue
            return _reply_text(body, cfg.endpoint)
        raise RuntimeError(f"{last_error} (after {cfg.retries + 1} attempts)")

    def score(self, formatted_input: str, output: str, response: str) -> JudgeResult:
        """Judge ``response`` against the reference ``output``; never raises except ``JudgeUnreachable``."""
        try:
            reply = self.complete(judge_prompt(formatted_input, output, response))
        except JudgeUnreachable:
            raise
        except RuntimeError as e:
            return JudgeResult(None, str(e), error=True)
        return JudgeResult(parse_score(reply), reply)


def _reply_text(body: str, endpoint: str) -> str:
    """``choices[0].message.content`` of a chat-completions response body."""
    try:
        content = json.loads(body)["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        raise RuntimeError(f"{endpoint} did not return a chat completion: {body[:200]!r}") from None
    if not isinstance(content, str):
        raise RuntimeError(f"{endpoint} returned non-text content: {content!r}"[:300])
    return content
