"""Text generation: time to first token and tokens/s streamed through the gateway, against
``generate`` in one process with the same torch threads.

Called by ``scripts/bench.py`` (section 12) on the stack it brought up; or alone against
the stack ``scripts/up.sh`` started (``python scripts/bench_generation.py``: gateway
127.0.0.1:8000, the admin key in ``.run/admin.key``, MLflow at $MLFLOW_TRACKING_URI). In
order, on ``textgen``'s champion (a 2-layer GPT-2 of 64 dimensions, greedy, no stop):

1. in this process, at the replica's torch threads (a Ray replica gets one per whole CPU
   it holds, at least one): transformers' ``generate`` and modellane's own token loop
   (``app.generation.engine``, what the replica runs), time to first token (one token
   generated) and tokens/s;
2. through the gateway, ``/v1/completions`` with ``stream: true``: one stream at a time,
   then 4 at once. Time to first token is from sending the request to the first text
   chunk; tokens/s is the tokens after the first over the time from the first chunk to
   the last (per stream; the 4 streams' sum as well).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
MODEL = "textgen"
PROMPT = "the registry decides"
TOKENS = 128
#: A replica with num_cpus below 1 gets one torch thread (Ray's OMP_NUM_THREADS).
REPLICA_THREADS = 1


def _stream(gateway: str, key: str, tokens: int) -> dict[str, float]:
    """One streamed completion: time to first token, tokens/s after it, tokens."""
    body = {
        "model": MODEL, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    sent = time.perf_counter()
    first = last = 0.0
    generated = 0
    with httpx.stream(
        "POST", f"{gateway}/v1/completions", json=body, timeout=120,
        headers={"Authorization": f"Bearer {key}"},
    ) as response:  # fmt: skip
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                generated = chunk["usage"]["completion_tokens"]
            elif chunk["choices"][0]["text"]:
                last = time.perf_counter()
                first = first or last
    return {
        "ttft_ms": (first - sent) * 1000,
        "tokens": generated,
        "tokens_per_s": (generated - 1) / (last - first) if last > first else 0.0,
    }


def in_process(tracking_uri: str, version: str, runs: int = 5) -> dict[str, Any]:
    """``generate`` and the replica's own loop in this process, at the replica's threads."""
    import mlflow
    import torch

    from app.generation.engine import TextGenerator
    from app.generation.params import GenerationParams

    torch.set_num_threads(REPLICA_THREADS)
    mlflow.set_tracking_uri(tracking_uri)
    pipeline = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}").get_raw_model()
    model, tokenizer = pipeline.model, pipeline.tokenizer
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    # min_new_tokens: as many tokens as the streams below generate (no early end of text)
    hf: dict[str, list[float]] = {"ttft": [], "rate": []}
    for _ in range(runs):
        with torch.inference_mode():
            started = time.perf_counter()
            model.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0)
            hf["ttft"].append(time.perf_counter() - started)
            started = time.perf_counter()
            out = model.generate(ids, max_new_tokens=TOKENS, min_new_tokens=TOKENS,
                                 do_sample=False, pad_token_id=0)  # fmt: skip
            hf["rate"].append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - started))
    loop: dict[str, list[float]] = {"ttft": [], "rate": []}
    generator = TextGenerator(model, tokenizer, model.config.n_positions)
    for _ in range(runs):
        generation = generator.start(
            GenerationParams(prompt=PROMPT, max_tokens=TOKENS, temperature=0)
        )
        started = time.perf_counter()
        generation.step()
        first = time.perf_counter()
        generation.run()
        loop["ttft"].append(first - started)
        loop["rate"].append((generation.completion_tokens - 1) / (time.perf_counter() - first))
    return {
        "threads": torch.get_num_threads(),
        "generate_ttft_ms": round(statistics.median(hf["ttft"]) * 1000, 2),
        "generate_tokens_per_s": round(statistics.median(hf["rate"]), 1),
        "loop_ttft_ms": round(statistics.median(loop["ttft"]) * 1000, 2),
        "loop_tokens_per_s": round(statistics.median(loop["rate"]), 1),
    }


def through_gateway(gateway: str, key: str, runs: int = 10) -> dict[str, Any]:
    """Streams through the gateway: one at a time, then 4 at once."""
    _stream(gateway, key, 8)  # warm: the version's metadata, the connections
    one = [_stream(gateway, key, TOKENS) for _ in range(runs)]
    with ThreadPoolExecutor(4) as pool:
        started = time.perf_counter()
        four = list(pool.map(lambda _: _stream(gateway, key, TOKENS), range(4)))
        wall_s = time.perf_counter() - started
    return {
        "tokens": statistics.median(s["tokens"] for s in one),
        "stream_ttft_ms": round(statistics.median(s["ttft_ms"] for s in one), 2),
        "stream_ttft_p90_ms": round(sorted(s["ttft_ms"] for s in one)[int(runs * 0.9) - 1], 2),
        "stream_tokens_per_s": round(statistics.median(s["tokens_per_s"] for s in one), 1),
        "four_streams_ttft_ms": round(statistics.median(s["ttft_ms"] for s in four), 2),
        "four_streams_tokens_per_s_each": round(
            statistics.median(s["tokens_per_s"] for s in four), 1
        ),
        "four_streams_tokens_per_s_total": round(sum(s["tokens"] for s in four) / wall_s, 1),
    }


def measure(found: dict[str, Any], gateway: str, key: str, tracking_uri: str) -> None:
    """Both halves into ``found``, with the ratios."""
    models = httpx.get(
        f"{gateway}/v1/models", timeout=30, headers={"Authorization": f"Bearer {key}"}
    )
    models.raise_for_status()
    version = next(m for m in models.json()["models"] if m["name"] == MODEL)["champion"]
    found["version"] = version
    found["in_process"] = local = in_process(tracking_uri, version)
    found["gateway"] = served = through_gateway(gateway, key)
    found["ratios"] = {
        "stream_vs_generate_tokens_per_s": round(
            served["stream_tokens_per_s"] / local["generate_tokens_per_s"], 3
        ),
        "stream_vs_loop_tokens_per_s": round(
            served["stream_tokens_per_s"] / local["loop_tokens_per_s"], 3
        ),
        "stream_ttft_over_generate_ttft": round(
            served["stream_ttft_ms"] / local["generate_ttft_ms"], 2
        ),
    }


def markdown(results: dict[str, Any]) -> list[str]:
    """The section's lines for bench/results.md (none where it did not run)."""
    out = results.get("generation")
    if not out:
        return []
    if "error" in out:
        return ["", f"Text generation: **failed**: {out['error']}"]
    local, served, ratios = out["in_process"], out["gateway"], out["ratios"]
    return [
        "",
        f"Text generation (textgen v{out['version']}, greedy, {TOKENS} tokens, "
        f"{local['threads']} torch thread in process and in the replica):",
        "",
        "| path | time to first token | tokens/s |",
        "|---|---:|---:|",
        f"| `generate` in one process | {local['generate_ttft_ms']} ms | "
        f"{local['generate_tokens_per_s']} |",
        f"| the replica's token loop in one process | {local['loop_ttft_ms']} ms | "
        f"{local['loop_tokens_per_s']} |",
        f"| streamed through the gateway, 1 stream | {served['stream_ttft_ms']} ms (p90 "
        f"{served['stream_ttft_p90_ms']}) | {served['stream_tokens_per_s']} |",
        f"| streamed through the gateway, 4 streams | {served['four_streams_ttft_ms']} ms | "
        f"{served['four_streams_tokens_per_s_each']} each, "
        f"{served['four_streams_tokens_per_s_total']} in all |",
        "",
        f"Streamed / `generate` tokens/s: {ratios['stream_vs_generate_tokens_per_s']}; "
        f"streamed / the loop in one process: {ratios['stream_vs_loop_tokens_per_s']}.",
    ]


def main() -> int:
    """Alone, against the stack of scripts/up.sh."""
    sys.path.insert(0, str(REPO))
    gateway = os.environ.get("MODELLANE_GATEWAY", "http://127.0.0.1:8000")
    key = (REPO / ".run" / "admin.key").read_text().strip()
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    found: dict[str, Any] = {}
    measure(found, gateway, key, tracking_uri)
    print(json.dumps(found, indent=1))
    print("\n".join(markdown({"generation": found})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
