"""Wait for a condition by asking again at an interval: the one polling loop every waiting caller shares.

Fedtune waits on things it cannot be notified about: a process to end, a SuperLink to accept connections, a Flower
run to finish, enough SuperNodes to connect. Each of these asks a question (the *probe*) until it has an answer,
with a deadline. Keeping the loop in one place keeps its guarantees in one place:

* the probe is always asked at least once, and once more at (or just after) the deadline, so a condition that
  holds by then is never reported as a timeout;
* the loop never sleeps past the deadline;
* an exception the caller names as transient (``retry_on``) means "not yet"; the last one is kept for the message
  of the timeout; any other exception from the probe ends the wait at once (a final answer, e.g. a certificate
  that does not verify);
* a timeout is :class:`WaitTimeout`, which callers turn into the error of their own domain (they know what was
  awaited); this module raises nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """The probe gave no answer within the time allowed.

    ``waited`` is how long the wait lasted in seconds; ``last_error`` is the last transient exception the probe
    raised (``None`` if its last call simply answered "not yet").
    """

    def __init__(self, waited: float, last_error: BaseException | None) -> None:
        detail = f" (last error: {last_error})" if last_error is not None else ""
        super().__init__(f"no answer after {waited:.1f} s{detail}")
        self.waited = waited
        self.last_error = last_error


def wait_until(
    probe: Callable[[], T | Literal[False] | None],
    *,
    timeout: float | None,
    interval: float,
    retry_on: tuple[type[Exception], ...] = (),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``probe`` every ``interval`` seconds until it answers, and return its answer.

    The probe answers "not yet" by returning ``None`` or ``False`` (or by raising one of ``retry_on``); anything
    else, including ``0`` or an empty list, is the answer. ``timeout=None`` waits for as long as it takes (the probe
    itself must then raise to end a wait that cannot succeed). ``clock`` and ``sleep`` are for tests.

    Raises :class:`WaitTimeout` when ``timeout`` seconds pass without an answer.
    """
    if interval <= 0:
        raise ValueError(f"the polling interval must be positive; got {interval}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"the timeout must be >= 0 seconds; got {timeout}")
    started = clock()
    deadline = None if timeout is None else started + timeout
    last_error: Exception | None = None
    while True:
        try:
            answer = probe()
        except retry_on as exc:
            last_error = exc
        else:
            last_error = None
            if answer is not None and answer is not False:
                return answer
        now = clock()
        if deadline is not None and now >= deadline:
            raise WaitTimeout(now - started, last_error) from last_error
        sleep(interval if deadline is None else min(interval, deadline - now))
