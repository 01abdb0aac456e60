"""Shared pieces of the HTTP-invoked backends (``openwhisk``; later the others).

This module owns two things that every backend reaching its platform over plain HTTP
needs and that are easy to get subtly wrong when written again per backend:

- ``SenderPool``: a queue of invocations and the threads that send them, started on
  demand up to a bound, so the manager's ``invoke`` only queues and never waits on the
  network; queued work can be withdrawn (``remove``) until a thread picked it up.
- ``send_with_backoff``: one request repeated while the platform answers "busy"
  (429, or a quota status the caller names) or cannot be reached, with jittered
  exponential back-off and ``Retry-After`` honoured, for at most ``retry_seconds`` --
  then ``GaveUp`` says what the last answer was. A request that may have reached the
  platform is never repeated here (it might run twice).
"""
from __future__ import annotations

import collections
import logging
import random
import threading
import time
from typing import Any, Callable, Collection, Deque, List, Optional

import requests
from urllib3 import exceptions as urllib3_exceptions

LOGGER = logging.getLogger("cloudpool")

BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
RETRY_AFTER_MAX = 5.0


class GaveUp(Exception):
    """The platform stayed busy or unreachable for the whole retry budget."""

    def __init__(self, message: str, tries: int) -> None:
        super().__init__(message)
        self.tries = tries


def backoff_delay(attempt: int) -> float:
    """Jittered exponential delay before try ``attempt + 1`` (attempt counts from 1)."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * (2 ** attempt)) * random.uniform(0.5, 1.5)


def retry_after(resp: requests.Response) -> Optional[float]:
    """The answer's ``Retry-After`` in seconds (bounded), or None (absent, or an HTTP date)."""
    raw = resp.headers.get("Retry-After")
    try:
        return min(max(float(raw), 0.0), RETRY_AFTER_MAX) if raw is not None else None
    except ValueError:
        return None


def surely_not_sent(exc: BaseException) -> bool:
    """True if ``exc`` happened before any byte of the request reached the server."""
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.InvalidURL)):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason = exc.args[0] if exc.args else None
        reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
        return isinstance(reason, (urllib3_exceptions.NewConnectionError,
                                   urllib3_exceptions.ConnectTimeoutError))
    return False


def short(exc: BaseException) -> str:
    """``Type: message`` of ``exc``, unwrapping urllib3's reason, bounded in length."""
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    return f"{type(exc).__name__}: {reason if reason is not None else exc}"[:300]


def error_text(resp: requests.Response) -> str:
    """The server's own explanation: its JSON ``error`` field, else the start of the body."""
    try:
        body = resp.content[:2000]
    except requests.RequestException as exc:
        return f"(no body: {short(exc)})"
    try:
        message = requests.models.complexjson.loads(body).get("error")
        if message:
            return str(message)
    except (ValueError, AttributeError):
        pass
    return body.decode("utf-8", "replace").strip()[:300] or resp.reason or ""


def send_with_backoff(send: Callable[[], requests.Response], *, retry_seconds: float, what: str,
                      busy_codes: Collection[int] = (429,),
                      closing: Callable[[], bool] = lambda: False) -> requests.Response:
    """Call ``send`` until it answers something other than "busy"; return that answer.

    Raises ``GaveUp`` after ``retry_seconds`` of busy answers or refused connections
    (``what`` names the request in its message), and lets any other
    ``requests.RequestException`` through: it may have reached the server.
    """
    started = time.monotonic()
    give_up = started + retry_seconds
    tries = 0
    while True:
        tries += 1
        hint: Optional[float] = None
        try:
            resp = send()
        except requests.RequestException as exc:
            if not surely_not_sent(exc):
                raise
            problem = f"cannot connect ({short(exc)})"
        else:
            if resp.status_code not in busy_codes:
                return resp
            problem = f"HTTP {resp.status_code}: {error_text(resp)}"
            hint = retry_after(resp)
            resp.close()
        now = time.monotonic()
        if now >= give_up or closing():
            raise GaveUp(f"{what} kept failing for {now - started:.1f} s ({tries} tries, retry_seconds="
                         f"{retry_seconds:g}); last: {problem}", tries)
        delay = backoff_delay(tries)
        if hint is not None and tries > 2:
            delay = max(delay, hint * random.uniform(0.8, 1.2))
        time.sleep(min(delay, max(0.0, give_up - now)))


class SenderPool:
    """Invocations queued by the manager, sent by up to ``max_threads`` threads.

    ``run(item)`` is called on a pool thread for each item; it must report the item's
    outcome itself (an exception escaping it is logged and passed to ``on_crash``).
    """

    def __init__(self, name: str, max_threads: int, run: Callable[[Any], None],
                 on_crash: Callable[[Any, BaseException], None]) -> None:
        self._name = name
        self._max = max_threads
        self._run = run
        self._on_crash = on_crash
        self._cond = threading.Condition()
        self._queue: Deque[Any] = collections.deque()
        self._threads: List[threading.Thread] = []
        self._idle = 0
        self.closing = False

    def put(self, item: Any) -> None:
        with self._cond:
            if self.closing:
                raise RuntimeError(f"the {self._name} backend is shut down")
            self._queue.append(item)
            self._cond.notify()
            # Threads start on demand: as many as there is queued work, up to the bound.
            while self._idle < len(self._queue) and len(self._threads) < self._max:
                t = threading.Thread(target=self._loop, name=f"cloudpool-{self._name}-{len(self._threads)}",
                                     daemon=True)
                self._threads.append(t)
                self._idle += 1
                t.start()

    def remove(self, item: Any) -> bool:
        """Withdraw ``item`` if no thread picked it up yet."""
        with self._cond:
            try:
                self._queue.remove(item)
            except ValueError:
                return False
            return True

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self.closing:
                    self._cond.wait()
                if self.closing:
                    return
                self._idle -= 1
                item = self._queue.popleft()
            try:
                self._run(item)
            except Exception as exc:  # noqa: BLE001 - a bug here must not leave futures hanging
                LOGGER.exception("cloudpool: the %s backend failed while sending an invocation", self._name)
                self._on_crash(item, exc)
            with self._cond:
                self._idle += 1

    def close(self, wait: bool = True, timeout: float = 1.0) -> None:
        with self._cond:
            self.closing = True
            self._queue.clear()
            self._cond.notify_all()
            threads = list(self._threads)
        if wait:
            deadline = time.monotonic() + timeout
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
