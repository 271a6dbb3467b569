"""The client-facing retry policy: which failed prediction a client may safely send again.

A prediction (``/v1/models/*/predict``, ``/v2/models/*/infer``, ``/v1/embeddings``) reads
nothing but its body and changes no state, so sending it twice is harmless. What matters is
whether a second try can succeed:

- The gateway already retries on its own, inside one request, when the model replica it
  called dies under it (``deployments.backends``), so a model replica's death reaches no
  client unless every try fails.
- 502, 503 and 504 say the service could not answer *now* (a model not loaded yet, a
  replica being replaced, back-pressure): retry, after ``Retry-After`` where it is given.
- A 500 **without** modellane's error body comes from Ray Serve's HTTP proxy itself, when the
  gateway replica it picked died with the request in flight: retry; the proxy routes the
  next try to a live gateway replica.
- A 500 **with** the error body (``model_failed``, ``internal_error``) is the model's or the
  gateway's own answer to this input: the same input fails the same way, do not retry.
- 4xx never (429 is the caller's rate limit: wait ``Retry-After``, which is not a retry of a
  failure but the caller's pacing).
- No answer at all (connection refused or reset): retry.

Three tries in all, 0.1 s then 0.4 s apart (or ``Retry-After``, capped at 5 s).
``tests/load.py`` follows this policy where a test asks it to, and the fault tests show that
with it no request is lost when a model or gateway replica is killed.
"""

from __future__ import annotations

import json

MAX_ATTEMPTS = 3
BACKOFF_S = (0.1, 0.4)
MAX_RETRY_AFTER_S = 5.0
RETRY_STATUSES = frozenset({502, 503, 504})


def is_modellane_error(body: bytes | str) -> bool:
    """Whether ``body`` is modellane's common error body (``{"error": {...}}``, or the
    Open Inference Protocol's ``{"error": "..."}``)."""
    try:
        parsed = json.loads(body)
    except (ValueError, TypeError):
        return False
    return isinstance(parsed, dict) and "error" in parsed


def should_retry(status: int | None, body: bytes | str = b"") -> bool:
    """Whether a prediction that got ``status`` (None: no answer at all) may be retried."""
    if status is None:
        return True
    if status in RETRY_STATUSES:
        return True
    return status == 500 and not is_modellane_error(body)


def delay_s(attempt: int, retry_after: str | None = None) -> float:
    """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 1)."""
    if retry_after:
        try:
            return min(MAX_RETRY_AFTER_S, max(0.0, float(retry_after)))
        except ValueError:
            pass  # an HTTP date: fall back to the fixed backoff
    return BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)]
