"""Per-request records of the data plane, the source of localcloud's metrics.

The HAProxy log reader appends one RequestRecord per proxied request; the Monitoring server
queries them. Records are kept in memory for fast queries and appended to a JSON-lines file
so that metrics survive a restart of localcloud.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class RequestRecord:
    timestamp: float  # seconds since the epoch, when the response was sent
    service: str  # Cloud Run service id (the last segment of its name)
    revision: str  # revision id (the last segment of its name)
    tag: str | None  # the tag URL the request came through, None for the service URL
    status: int  # HTTP status code returned to the client
    latency_ms: float  # total time from request received to response sent
    project: str = ""  # the Google project of the service: environments differ by project


class RequestLog:
    """Thread-safe, time-ordered store of RequestRecords with a retention period."""

    def __init__(self, path: Path | None = None, retention_s: float = 7 * 24 * 3600):
        self._path = path
        self._retention_s = retention_s
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._times: list[float] = []
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        cutoff = time.time() - self._retention_s
        loaded = []
        with path.open() as fh:
            for line in fh:
                try:
                    rec = RequestRecord(**json.loads(line))
                except (ValueError, TypeError):
                    continue  # a line cut short by a crash
                if rec.timestamp >= cutoff:
                    loaded.append(rec)
        loaded.sort(key=lambda r: r.timestamp)
        self._records = loaded
        self._times = [r.timestamp for r in loaded]

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            # Records arrive almost in order; insort keeps queries correct when they do not.
            if not self._times or record.timestamp >= self._times[-1]:
                self._records.append(record)
                self._times.append(record.timestamp)
            else:
                i = bisect.bisect_right(self._times, record.timestamp)
                self._records.insert(i, record)
                self._times.insert(i, record.timestamp)
            if self._path is not None:
                with self._path.open("a") as fh:
                    fh.write(json.dumps(asdict(record)) + "\n")

    def query(
        self,
        start: float,
        end: float,
        service: str | None = None,
        revision: str | None = None,
        project: str | None = None,
    ) -> list[RequestRecord]:
        """Records with start < timestamp <= end, optionally for one project, service or
        revision."""
        with self._lock:
            lo = bisect.bisect_right(self._times, start)
            hi = bisect.bisect_right(self._times, end)
            window = self._records[lo:hi]
        return [
            r
            for r in window
            if (service is None or r.service == service)
            and (revision is None or r.revision == revision)
            # A record without a project (written before projects were kept) matches any.
            and (project is None or r.project in (project, ""))
        ]

    def prune(self, now: float | None = None) -> int:
        """Drop records older than the retention period; returns how many were dropped."""
        cutoff = (now if now is not None else time.time()) - self._retention_s
        with self._lock:
            i = bisect.bisect_left(self._times, cutoff)
            del self._records[:i]
            del self._times[:i]
            if i and self._path is not None:
                with self._path.open("w") as fh:
                    for rec in self._records:
                        fh.write(json.dumps(asdict(rec)) + "\n")
        return i
