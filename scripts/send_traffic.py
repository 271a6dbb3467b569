"""Send steady prediction traffic to a model through the gateway (for trying rollouts).

    python scripts/send_traffic.py iris --seconds 120 --concurrency 4

Prints, every 5 s, how many answers each version gave and how many failed.
Bounded in time; talks to 127.0.0.1 only by default.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import Counter

import httpx

IRIS_ROWS = [
    {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    {"sepal_length": 6.3, "sepal_width": 2.9, "petal_length": 5.6, "petal_width": 1.8},
    {"sepal_length": 5.9, "sepal_width": 3.0, "petal_length": 4.2, "petal_width": 1.5},
]
TEXTS = ["modellane serves models", "the registry decides which version serves"]


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
        "(default: $MODELLANE_API_KEY)",
    )
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}

    inputs = IRIS_ROWS if args.model in ("iris",) else TEXTS
    url = f"{args.gateway}/v1/models/{args.model}/predict"
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + args.seconds

    def worker(offset: int) -> None:
        with httpx.Client(timeout=30, headers=headers) as client:
            i = offset
            while time.monotonic() < deadline:
                body = {"inputs": [inputs[i % len(inputs)]]}
                i += 1
                try:
                    answer = client.post(url, json=body)
                    key = (
                        f"v{answer.headers.get('X-Model-Version')}"
                        if answer.status_code == 200
                        else f"failed {answer.status_code}"
                    )
                except httpx.HTTPError as exc:
                    key = f"failed {type(exc).__name__}"
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
            print(dict(sorted(counts.items())), flush=True)


if __name__ == "__main__":
    main()
