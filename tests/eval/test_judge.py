"""The judge client against a local chat-completions server (http.server in a thread)."""

import socket

import pytest

from gpt2_scratch.eval.judge import JudgeClient, JudgeConfig, JudgeUnreachable, judge_prompt, parse_score


@pytest.fixture
def server(judge_server):
    return judge_server


def client(server, **kw):
    return JudgeClient(JudgeConfig(url=server.url, model="llama3", backoff=0.0, **kw))


PROMPT_INPUT = "Below is an instruction.\n\n### Instruction:\nName a color.\n\n### Response:\n"


def test_good_reply_is_scored_and_request_is_deterministic(server):
    server.queue.append((200, "85", 0.0))
    result = client(server, api_key="sk-test", seed=7).score(PROMPT_INPUT, "Blue.", "Red.")
    assert (result.score, result.raw, result.error) == (85, "85", False)
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    body = req["body"]
    assert body["model"] == "llama3"
    assert body["temperature"] == 0
    assert body["seed"] == 7
    assert body["messages"] == [{"role": "user", "content": judge_prompt(PROMPT_INPUT, "Blue.", "Red.")}]
    assert req["headers"]["Authorization"] == "Bearer sk-test"


def test_judge_prompt_is_the_reference_pipelines():
    assert judge_prompt("IN", "OUT", "RESP") == (
        "Given the input `IN` and correct output `OUT`, score the model response `RESP` on a scale from 0 to 100, "
        "where 100 is the best score. Respond with the integer number only."
    )


def test_unparseable_reply_is_kept_with_null_score(server):
    server.queue.append((200, "I would say it is quite good.", 0.0))
    result = client(server).score(PROMPT_INPUT, "Blue.", "Red.")
    assert (result.score, result.raw, result.error) == (None, "I would say it is quite good.", False)


def test_server_error_is_retried_then_recorded(server):
    server.queue += [(500, "model crashed", 0.0)] * 3
    result = client(server, retries=2).score(PROMPT_INPUT, "Blue.", "Red.")
    assert result.score is None and result.error
    assert "HTTP 500" in result.raw and "model crashed" in result.raw and "3 attempts" in result.raw
    assert len(server.requests) == 3


def test_server_error_then_success(server):
    server.queue += [(503, "busy", 0.0), (200, "70", 0.0)]
    result = client(server, retries=2).score(PROMPT_INPUT, "Blue.", "Red.")
    assert (result.score, result.error) == (70, False)
    assert len(server.requests) == 2


def test_client_error_is_not_retried(server):
    server.queue.append((404, "model 'llama3' not found", 0.0))
    result = client(server, retries=3).score(PROMPT_INPUT, "Blue.", "Red.")
    assert result.error and "HTTP 404" in result.raw and "not found" in result.raw
    assert len(server.requests) == 1


def test_timeout_is_recorded(server):
    server.queue.append((200, "90", 1.0))
    result = client(server, retries=0, timeout=0.2).score(PROMPT_INPUT, "Blue.", "Red.")
    assert result.score is None and result.error and "timed out" in result.raw


def test_unreachable_server_raises():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = JudgeClient(JudgeConfig(url=f"http://127.0.0.1:{port}/v1", model="llama3", backoff=0.0))
    with pytest.raises(JudgeUnreachable, match="cannot reach the judge"):
        c.score(PROMPT_INPUT, "Blue.", "Red.")


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("85", 85),
        (" 85.\n", 85),
        ("85/100", 85),
        ("0", 0),
        ("100", 100),
        ("101", None),
        ("-5", None),
        ("8 5", None),
        ("Score: 85", None),
        ("85.5", None),
        ("", None),
    ],
)
def test_parse_score(reply, expected):
    assert parse_score(reply) == expected


def test_config_validation():
    with pytest.raises(ValueError, match="http"):
        JudgeConfig(url="localhost:11434/v1", model="llama3")
    with pytest.raises(ValueError, match="model"):
        JudgeConfig(url="http://localhost:11434/v1", model="")
    assert JudgeConfig(url="http://h/v1/", model="m").endpoint == "http://h/v1/chat/completions"
