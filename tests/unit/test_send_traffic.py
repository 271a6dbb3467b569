"""scripts/send_traffic.py's pure parts: the iris rows keep their true class, labels go out
in batches after their delay, and the gateway's answers add up. No network: the sender
posts through a fake."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "send_traffic.py"


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("send_traffic", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


send_traffic = _load_script()


class FakeGateway:
    """Answers each feedback post with ``status`` and counts every label as accepted."""

    def __init__(self, status: int = 202) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.lock = threading.Lock()

    def post(self, body: dict[str, Any]) -> httpx.Response:
        with self.lock:
            self.bodies.append(body)
            self.times.append(time.monotonic())
        n = len(body["labels"])
        return httpx.Response(self.status, json={"accepted": n, "duplicates": 0, "unknown": 0})


def test_iris_rows_keep_their_true_class() -> None:
    examples = send_traffic.iris_examples()
    assert len(examples) == 150
    first_row, first_class = examples[0]
    assert first_row == {
        "sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2,
    }  # fmt: skip
    assert first_class == 0 and type(first_class) is int
    assert {label for _, label in examples} == {0, 1, 2}
    assert examples[-1][1] == 2


def test_label_batches_hold_at_most_size_labels_in_order() -> None:
    labels = [(f"r{i}", i % 3) for i in range(7)]
    batches = send_traffic.label_batches(labels, 3)
    assert [len(b["labels"]) for b in batches] == [3, 3, 1]
    assert batches[0]["labels"][0] == {"request_id": "r0", "label": 0}
    flat = [row["request_id"] for b in batches for row in b["labels"]]
    assert flat == [f"r{i}" for i in range(7)]
    assert send_traffic.label_batches([], 3) == []


def test_the_sender_posts_every_label_in_batches_and_adds_up_the_answers() -> None:
    gateway = FakeGateway()
    sender = send_traffic.LabelSender(gateway.post, batch_size=4, flush_s=60)
    for i in range(10):
        sender.add(f"r{i}", i % 3)
    sender.close()
    sent = [row["request_id"] for b in gateway.bodies for row in b["labels"]]
    assert sent == [f"r{i}" for i in range(10)]
    assert all(len(b["labels"]) <= 4 for b in gateway.bodies)
    assert sender.snapshot() == {"accepted": 10, "duplicates": 0, "unknown": 0}


def test_labels_wait_out_their_delay_without_holding_up_add() -> None:
    gateway = FakeGateway()
    sender = send_traffic.LabelSender(gateway.post, delay_s=0.2)
    start = time.monotonic()
    sender.add("r0", 1)
    assert time.monotonic() - start < 0.1  # add never waits
    sender.close()
    assert gateway.times and gateway.times[0] - start >= 0.2
    assert gateway.bodies == [{"labels": [{"request_id": "r0", "label": 1}]}]


def test_a_part_filled_batch_goes_out_after_flush_s() -> None:
    gateway = FakeGateway()
    sender = send_traffic.LabelSender(gateway.post, batch_size=100, flush_s=0.05)
    sender.add("r0", 2)
    deadline = time.monotonic() + 5
    while not gateway.bodies and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gateway.bodies == [{"labels": [{"request_id": "r0", "label": 2}]}]
    sender.close()
    assert len(gateway.bodies) == 1


@pytest.mark.parametrize("status", [200, 400, 503])
def test_an_answer_other_than_202_is_a_failure(status: int) -> None:
    gateway = FakeGateway(status)
    sender = send_traffic.LabelSender(gateway.post, batch_size=2)
    for i in range(3):
        sender.add(f"r{i}", 0)
    sender.close()
    assert sender.snapshot() == {"failed": 2, "failed_labels": 3}


def test_no_answer_is_a_failure() -> None:
    def unreachable(body: dict[str, Any]) -> httpx.Response:
        raise httpx.ConnectError("refused")

    sender = send_traffic.LabelSender(unreachable)
    sender.add("r0", 0)
    sender.close()
    assert sender.snapshot() == {"failed": 1, "failed_labels": 1}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["minilm", "--feedback"], "--feedback needs the iris model"),
        (["iris", "--feedback", "--label-delay-s", "-1"], "--label-delay-s must be 0 or more"),
    ],
)
def test_feedback_is_refused_where_it_cannot_work(
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "argv", ["send_traffic.py", *argv])
    with pytest.raises(SystemExit) as exited:
        send_traffic.main()
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
