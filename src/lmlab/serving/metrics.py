"""The server's counters and histograms, written in the Prometheus text format (version 0.0.4).

Counters: requests by route and HTTP status, prompt and generated tokens. Gauges come from the
engine's ``stats()`` when ``/metrics`` is read (queue depth, running requests, batch size).
Histograms: time to first token and the latency of each later token, in seconds.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from typing import Callable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """Cumulative buckets, a sum and a count, as Prometheus histograms keep them."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts):
            running += count
            out.append(f'{name}_bucket{{le="{bound}"}} {running}')
        return out + [f"{name}_sum {self.total}", f"{name}_count {running}"]


class Metrics:
    """What ``GET /metrics`` reports; safe to update from several threads."""

    def __init__(self, engine_stats: Callable[[], dict] | None = None):
        self.engine_stats = engine_stats
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.token_latency = Histogram(TOKEN_BUCKETS)
        self._lock = threading.Lock()

    def count_request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] += 1

    def count_tokens(self, prompt: int, completion: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion

    def observe_first_token(self, seconds: float) -> None:
        with self._lock:
            self.ttft.observe(seconds)

    def observe_next_token(self, seconds: float) -> None:
        with self._lock:
            self.token_latency.observe(seconds)

    def render(self) -> str:
        """The exposition text."""
        with self._lock:
            lines = ["# HELP lmlab_requests_total HTTP requests by route and status.",
                     "# TYPE lmlab_requests_total counter"]
            lines += [f'lmlab_requests_total{{route="{_label(route)}",status="{status}"}} {count}'
                      for (route, status), count in sorted(self.requests.items())]
            lines += _counter("lmlab_prompt_tokens_total", "Prompt tokens read.", self.prompt_tokens)
            lines += _counter("lmlab_generation_tokens_total", "Tokens generated.", self.completion_tokens)
            lines += ["# HELP lmlab_time_to_first_token_seconds From request to its first token.",
                      "# TYPE lmlab_time_to_first_token_seconds histogram",
                      *self.ttft.lines("lmlab_time_to_first_token_seconds"),
                      "# HELP lmlab_time_per_output_token_seconds Between consecutive tokens of a request.",
                      "# TYPE lmlab_time_per_output_token_seconds histogram",
                      *self.token_latency.lines("lmlab_time_per_output_token_seconds")]
        stats = self.engine_stats() if self.engine_stats else {}
        for key, help_text in (("queue_depth", "Requests waiting for a batch slot."),
                               ("running", "Requests in the running batch (the batch size)."),
                               ("max_batch", "The most requests decoded together.")):
            if key in stats:
                lines += [f"# HELP lmlab_{key} {help_text}", f"# TYPE lmlab_{key} gauge", f"lmlab_{key} {stats[key]}"]
        return "\n".join(lines) + "\n"


def _counter(name: str, help_text: str, value: int) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
