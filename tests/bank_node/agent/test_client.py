"""The consortium client: typed errors from the contract's JSON, bounded retries, no leaked token."""

from __future__ import annotations

import socket

import pytest

from bank_node.agent.client import ConsortiumClient
from bank_node.agent.errors import (
    AuthError,
    ConflictError,
    NotFoundError,
    UnavailableError,
    ValidationError,
)
from bank_node.agent.retry import RetryPolicy
from tests.bank_node.agent.conftest import Bank
from tests.bank_node.agent.fake_consortium import FakeConsortium


def test_retries_503_with_growing_pauses_then_succeeds(fake: FakeConsortium, url: str, banks: list[Bank]) -> None:
    pauses: list[float] = []
    client = ConsortiumClient(
        base_url=url, token=banks[0].token, sleep=pauses.append,
        retry=RetryPolicy(max_attempts=5, base_delay_s=0.1, max_delay_s=10.0, jitter=False),
    )
    fake.fail_next("GET", "/v1/runs", 503, times=2)
    fake.open_run("logreg", {})

    runs = client.list_runs()

    assert [r.run_id for r in runs] == ["run-1"]
    assert pauses == [0.1, 0.2]
    assert fake.count("GET", "/v1/runs", 503) == 2


def test_retry_after_header_lengthens_the_pause(fake: FakeConsortium, url: str, banks: list[Bank]) -> None:
    pauses: list[float] = []
    client = ConsortiumClient(
        base_url=url, token=banks[0].token, sleep=pauses.append,
        retry=RetryPolicy(base_delay_s=0.1, max_delay_s=3.0, jitter=False),
    )
    fake.fail_next("GET", "/v1/banks", 502, retry_after=2.0)

    assert len(client.list_banks()) == 3
    assert pauses == [2.0]


def test_gives_up_after_the_bounded_attempts(fake: FakeConsortium, url: str, banks: list[Bank]) -> None:
    pauses: list[float] = []
    client = ConsortiumClient(
        base_url=url, token=banks[0].token, sleep=pauses.append,
        retry=RetryPolicy(max_attempts=3, base_delay_s=0.01, jitter=True),
    )
    fake.fail_next("GET", "/v1/runs", 500, times=10)

    with pytest.raises(UnavailableError) as caught:
        client.list_runs()

    assert caught.value.status == 500 and caught.value.retryable
    assert "gave up after 3 attempts" in str(caught.value)
    assert len(pauses) == 2 and all(0.005 <= p <= 0.02 for p in pauses)


def test_total_time_bounds_the_retries(fake: FakeConsortium, url: str, banks: list[Bank]) -> None:
    now = [0.0]
    client = ConsortiumClient(
        base_url=url, token=banks[0].token,
        sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0],
        retry=RetryPolicy(max_attempts=100, base_delay_s=1.0, max_delay_s=4.0, total_timeout_s=10.0, jitter=False),
    )
    fake.fail_next("GET", "/v1/runs", 504, times=100)

    with pytest.raises(UnavailableError):
        client.list_runs()
    assert now[0] <= 10.0
    assert fake.count("GET", "/v1/runs", 504) == 4  # after pauses of 1, 2 and 4 s, another 4 s would pass 10 s


@pytest.mark.parametrize(
    ("status", "error"),
    [(404, NotFoundError), (409, ConflictError), (422, ValidationError), (401, AuthError), (403, AuthError)],
)
def test_client_errors_are_typed_and_never_retried(
    fake: FakeConsortium, url: str, banks: list[Bank], status: int, error: type[Exception]
) -> None:
    pauses: list[float] = []
    client = ConsortiumClient(base_url=url, token=banks[0].token, sleep=pauses.append)
    fake.fail_next("GET", "/v1/models", status, times=3)

    with pytest.raises(error) as caught:
        client.list_models()

    assert caught.value.status == status and caught.value.message == "injected fault"  # type: ignore[attr-defined]
    assert pauses == []
    assert fake.count("GET", "/v1/models", status) == 1


def test_the_contract_error_message_reaches_the_caller(fake: FakeConsortium, url: str, banks: list[Bank]) -> None:
    with pytest.raises(NotFoundError, match="no share for 'bank-2' yet"):
        banks[1].client.get_share("bank-2")


def test_unreachable_consortium_is_retryable_and_does_not_leak_the_token() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pauses: list[float] = []
    token = "secret-token-do-not-print"
    client = ConsortiumClient(
        base_url=f"http://127.0.0.1:{port}", token=token, sleep=pauses.append,
        retry=RetryPolicy(max_attempts=3, base_delay_s=0.01), timeout=(0.5, 0.5),
    )

    with pytest.raises(UnavailableError) as caught:
        client.list_runs()

    assert caught.value.status is None and len(pauses) == 2
    assert token not in str(caught.value) and token not in repr(client)


def test_wrong_token_is_an_auth_error(url: str, banks: list[Bank]) -> None:
    client = ConsortiumClient(base_url=url, token="not-a-token")
    with pytest.raises(AuthError, match="unknown token"):
        client.list_runs()
