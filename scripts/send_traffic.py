"""Send steady prediction traffic to a model through the gateway (for trying rollouts).

    python scripts/send_traffic.py iris --seconds 120 --concurrency 4
    python scripts/send_traffic.py iris --feedback --label-delay-s 10

Prints, every 5 s, how many answers each version gave and how many failed. Each request
carries a unique X-Request-Id. With ``--feedback`` (iris only: its rows come from the iris
data set with their true class), every answered request's true class is posted, after
``--label-delay-s``, in batches to ``POST /v1/models/iris/feedback``; the label totals are
printed at the end. Bounded in time; talks to 127.0.0.1 only by default.
"""

from __future__ import annotations

import argparse
import os
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import httpx

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
TEXTS = ["modellane serves models", "the registry decides which version serves"]
LABEL_BATCH = 100
# Labels wait at most this long for their batch to fill before they are posted.
LABEL_FLUSH_S = 1.0

Example = tuple[Any, int | None]  # one model input and its true class, where known


def iris_examples() -> list[Example]:
    """The iris data set's rows, each with its true class."""
    from sklearn.datasets import load_iris

    data = load_iris()
    return [
        (dict(zip(IRIS_COLUMNS, map(float, row), strict=True)), int(target))
        for row, target in zip(data.data, data.target, strict=True)
    ]


def label_batches(labels: Iterable[tuple[str, int]], size: int) -> list[dict[str, Any]]:
    """Bodies of POST /v1/models/{name}/feedback, at most ``size`` labels each."""
    rows = [{"request_id": request_id, "label": label} for request_id, label in labels]
    return [{"labels": rows[i : i + size]} for i in range(0, len(rows), size)]


class LabelSender:
    """Posts the true class of answered requests, each once ``delay_s`` has passed since it
    was answered, in batches, from its own thread: waiting for labels never holds up the
    traffic. ``totals`` counts accepted, duplicates and unknown labels (the gateway's
    answer), and ``failed`` batches (an answer other than 202, or no answer) with the
    ``failed_labels`` in them."""

    def __init__(
        self,
        post: Callable[[dict[str, Any]], httpx.Response],
        delay_s: float = 0.0,
        batch_size: int = LABEL_BATCH,
        flush_s: float = LABEL_FLUSH_S,
    ) -> None:
        self._post = post
        self._delay_s = delay_s
        self._batch_size = batch_size
        self._flush_s = flush_s
        # (due time, request id, label); None ends the thread once everything before it went.
        self._queue: queue.Queue[tuple[float, str, int] | None] = queue.Queue()
        self._lock = threading.Lock()
        self.totals: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._run, name="labels", daemon=True)
        self._thread.start()

    def add(self, request_id: str, label: int) -> None:
        self._queue.put((time.monotonic() + self._delay_s, request_id, label))

    def close(self) -> None:
        """Post every label added so far (waiting out its delay), then stop."""
        self._queue.put(None)
        self._thread.join()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.totals)

    def _run(self) -> None:
        pending: list[tuple[str, int]] = []
        oldest = 0.0  # when the first pending label became due
        while True:
            timeout = max(0.0, oldest + self._flush_s - time.monotonic()) if pending else None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                self._send(pending)
                continue
            if item is None:
                break
            due, request_id, label = item
            wait = due - time.monotonic()
            if wait > 0:
                # Labels arrive in order of their due time (near enough): none is due before this.
                self._send(pending)
                time.sleep(wait)
            if not pending:
                oldest = time.monotonic()
            pending.append((request_id, label))
            if len(pending) >= self._batch_size:
                self._send(pending)
        self._send(pending)

    def _send(self, pending: list[tuple[str, int]]) -> None:
        """Post ``pending`` (emptying it) and count the answers."""
        bodies = label_batches(pending, self._batch_size)
        pending.clear()
        for body in bodies:
            try:
                answer = self._post(body)
                counts = answer.json() if answer.status_code == 202 else None
            except (httpx.HTTPError, ValueError):
                counts = None
            with self._lock:
                if not isinstance(counts, dict):
                    self.totals["failed"] += 1
                    self.totals["failed_labels"] += len(body["labels"])
                    continue
                for key in ("accepted", "duplicates", "unknown"):
                    self.totals[key] += int(counts.get(key, 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--gateway", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--key",
        default=os.environ.get("MODELLANE_API_KEY"),
        help="API key with the predict scope, where prediction needs one "
        "(default: $MODELLANE_API_KEY); labels go with the same key",
    )
    parser.add_argument(
        "--feedback",
        action="store_true",
        help="post each answered request's true class to /v1/models/iris/feedback (iris only)",
    )
    parser.add_argument(
        "--label-delay-s",
        type=float,
        default=0.0,
        help="seconds between an answer and its label (default 0)",
    )
    args = parser.parse_args()
    if args.feedback and args.model != "iris":
        parser.error("--feedback needs the iris model: only its rows carry their true class")
    if args.label_delay_s < 0:
        parser.error("--label-delay-s must be 0 or more")
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}

    examples: list[Example] = (
        iris_examples() if args.model == "iris" else [(text, None) for text in TEXTS]
    )
    url = f"{args.gateway}/v1/models/{args.model}/predict"
    feedback_url = f"{args.gateway}/v1/models/{args.model}/feedback"
    label_client = httpx.Client(timeout=30, headers=headers)
    labels = (
        LabelSender(lambda body: label_client.post(feedback_url, json=body), args.label_delay_s)
        if args.feedback
        else None
    )
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + args.seconds

    def worker(offset: int) -> None:
        with httpx.Client(timeout=30, headers=headers) as client:
            i = offset
            while time.monotonic() < deadline:
                row, target = examples[i % len(examples)]
                i += 1
                request_id = uuid.uuid4().hex
                try:
                    answer = client.post(
                        url, json={"inputs": [row]}, headers={"X-Request-Id": request_id}
                    )
                    ok = answer.status_code == 200
                    key = (
                        f"v{answer.headers.get('X-Model-Version')}"
                        if ok
                        else f"failed {answer.status_code}"
                    )
                except httpx.HTTPError as exc:
                    ok, key = False, f"failed {type(exc).__name__}"
                if ok and labels is not None and target is not None:
                    labels.add(request_id, target)
                with lock:
                    counts[key] += 1

    threads = [
        threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.concurrency)
    ]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        time.sleep(5)
        with lock:
            line = str(dict(sorted(counts.items())))
        if labels is not None:
            line += f" labels {dict(sorted(labels.snapshot().items()))}"
        print(line, flush=True)

    if labels is not None:
        if args.label_delay_s:
            print(f"posting the last labels after their {args.label_delay_s:g} s delay", flush=True)
        labels.close()
        totals = labels.snapshot()
        print(
            f"labels: {totals.get('accepted', 0)} accepted, {totals.get('duplicates', 0)} "
            f"duplicates, {totals.get('unknown', 0)} unknown; {totals.get('failed', 0)} "
            f"failed batches ({totals.get('failed_labels', 0)} labels)",
            flush=True,
        )
    label_client.close()


if __name__ == "__main__":
    main()
