"""inference.client against a server that fails on purpose (tests/model_servers.FaultServer):
every failure has its kind and its words, and the key never appears in them."""

import pytest

from inference import client
from inference.batch import generate_replies
from tests.model_servers import REPLY, RIGHT_KEY, FaultServer, free_port

MESSAGES = [{"role": "user", "content": "hi there"}]


@pytest.fixture(scope="module")
def faults():
    with FaultServer(delay=2.0, fails=2) as server:
        yield server


def spec(server, model, **overrides):
    values = {"name": "fault-" + model, "base_url": server.base_url, "model": model, "timeout": 5.0}
    values.update(overrides)
    return client.EndpointSpec(**values)


def failure(call) -> client.EndpointError:
    with pytest.raises(client.EndpointError) as caught:
        call()
    return caught.value


def test_a_reply_whole_and_streamed(faults):
    assert client.chat(spec(faults, "ok"), MESSAGES).text == REPLY
    assert "".join(client.stream_chat(spec(faults, "ok"), MESSAGES)) == REPLY


def test_the_request_carries_the_endpoints_settings(faults):
    faults.reset()
    endpoint = spec(faults, "ok", temperature=0.3, top_p=0.9, max_tokens=50, stop=("END",), system_prompt="Be brief.")
    client.chat(endpoint, MESSAGES, max_tokens=20, seed=7)
    body = faults.requests[-1]["body"]
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1:] == MESSAGES
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["stop"], body["seed"]) == (0.3, 0.9, 20, ["END"], 7)
    assert faults.requests[-1]["authorization"] == ""  # no key: no header


def test_endpoint_down():
    down = client.EndpointSpec(name="down", base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", timeout=3)
    error = failure(lambda: client.chat(down, MESSAGES))
    assert error.kind == client.UNREACHABLE and error.retryable and "down is unreachable" in error.message
    assert failure(lambda: list(client.stream_chat(down, MESSAGES))).kind == client.UNREACHABLE


def test_endpoint_slow_times_out(faults):
    error = failure(lambda: client.chat(spec(faults, "slow", timeout=0.5), MESSAGES))
    assert error.kind == client.TIMEOUT and "longer than 0.5 s" in error.message


def test_a_stream_that_stalls_mid_reply_times_out(faults):
    pieces = []
    error = failure(lambda: pieces.extend(client.stream_chat(spec(faults, "stall", timeout=0.5), MESSAGES)))
    assert error.kind == client.TIMEOUT
    assert pieces  # some text came before the stall; the caller keeps none of it (it got an error)


def test_429_with_retry_after_is_honoured(faults):
    faults.reset()
    waits = []
    endpoint = spec(faults, "429")
    error = failure(lambda: client.chat(endpoint, MESSAGES))
    assert error.kind == client.RATE_LIMITED and error.retry_after == 1.0 and "Retry-After 1 s" in error.message
    reply = client.with_retries(lambda: client.chat(endpoint, MESSAGES), attempts=4, sleep=waits.append)
    assert reply.text == REPLY
    assert waits == [1.0]  # the first failure was the call above: one more 429, then the reply


def test_500_is_retried_then_reported(faults):
    error = failure(lambda: client.chat(spec(faults, "500"), MESSAGES))
    assert error.kind == client.SERVER_ERROR and error.status == 500 and "the model crashed" in error.message
    waits = []
    error = failure(lambda: client.with_retries(lambda: client.chat(spec(faults, "500"), MESSAGES), attempts=3, sleep=waits.append))
    assert error.kind == client.SERVER_ERROR and len(waits) == 2
    assert all(0 <= wait <= 20 for wait in waits)


def test_a_cut_stream_is_an_error(faults):
    error = failure(lambda: list(client.stream_chat(spec(faults, "cut"), MESSAGES)))
    assert error.kind == client.BAD_RESPONSE and "ended before the reply was complete" in error.message


def test_a_malformed_stream_is_an_error(faults):
    error = failure(lambda: list(client.stream_chat(spec(faults, "malformed"), MESSAGES)))
    assert error.kind == client.BAD_RESPONSE and "malformed stream event" in error.message


def test_a_reply_over_the_size_limit_is_an_error(faults):
    error = failure(lambda: list(client.stream_chat(spec(faults, "huge"), MESSAGES, max_reply_chars=50_000)))
    assert error.kind == client.TOO_LARGE and "longer than 50000 characters" in error.message
    error = failure(lambda: client.chat(spec(faults, "huge"), MESSAGES, max_reply_chars=50_000))
    assert error.kind == client.TOO_LARGE


def test_a_wrong_key_is_refused_and_never_repeated(faults):
    wrong = "sk-wrong-secret-key-999"
    error = failure(lambda: client.chat(spec(faults, "auth", api_key=wrong), MESSAGES))
    assert error.kind == client.AUTH and error.status == 401 and not error.retryable
    assert wrong not in error.message and "[key]" in error.message  # the server echoed it; we did not
    assert wrong not in repr(spec(faults, "auth", api_key=wrong))
    assert client.chat(spec(faults, "auth", api_key=RIGHT_KEY), MESSAGES).text == REPLY
    assert faults.requests[-1]["authorization"] == f"Bearer {RIGHT_KEY}"


def test_batch_keeps_each_endpoint_within_its_concurrency():
    with FaultServer(delay=0.5) as server:
        specs = {1: spec(server, "slow", concurrency=2), 2: spec(server, "echo", concurrency=3)}
        prompts = [[{"role": "user", "content": f"prompt number {i}"}] for i in range(7)]
        outcomes = [o for o in generate_replies(specs, prompts) if o is not None]
        assert sorted(o.index for o in outcomes) == list(range(7))
        assert all(o.ok for o in outcomes)
        by_index = {o.index: o for o in outcomes}
        assert by_index[3].replies[2].text == "echo: 3 number prompt"
        # 7 requests of 0.5 s each to the slow endpoint: two at a time, never three
        assert server.most_in_flight["slow"] == 2


def test_batch_reports_a_prompt_whose_endpoint_failed(faults):
    specs = {"good": spec(faults, "ok"), "bad": spec(faults, "500")}
    outcomes = [o for o in generate_replies(specs, [MESSAGES], attempts=2) if o is not None]
    assert len(outcomes) == 1 and not outcomes[0].ok
    assert set(outcomes[0].replies) == {"good"} and outcomes[0].errors["bad"].kind == client.SERVER_ERROR
