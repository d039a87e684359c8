"""Run localstripe bound to 127.0.0.1 on a free port, without its pickle persistence.

``python tests/stripe_extract/localstripe_runner.py`` prints ``PORT <n>`` once it listens.
localstripe's own command binds every interface and rewrites /tmp/localstripe.pickle
(shared by all instances) on every write; both are wrong for parallel tests.

Its clock can be shifted (``POST /_config/churn_clock`` with ``{"offset": seconds}``): Stripe
stamps objects and events to the second, so a test that needs a change stamped after a
run's second (or a world stamped before it) moves this clock instead of sleeping until
the wall clock's second turns.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from types import SimpleNamespace

from aiohttp import web
from localstripe import resources, server


class ShiftedClock(SimpleNamespace):
    """The ``time`` module as localstripe's resources see it: ``time()`` is the wall clock
    plus ``offset`` seconds (localstripe reads the time only through ``time.time()``)."""

    offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset


CLOCK = ShiftedClock()


async def set_clock(request: web.Request) -> web.Response:
    """``POST /_config/churn_clock`` ``{"offset": seconds}``: localstripe's time from now on."""
    CLOCK.offset = float((await request.json())["offset"])
    return web.json_response({"offset": CLOCK.offset, "now": int(CLOCK.time())})


def main() -> None:
    # Persistence off: the store lives in this process only.
    resources.Store.dump_to_disk = lambda self: None  # type: ignore[method-assign]
    resources.Store.try_load_from_disk = lambda self: None  # type: ignore[method-assign]
    resources.time = CLOCK  # type: ignore[attr-defined]
    server.app.router.add_post("/_config/churn_clock", set_clock)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # Listening before saying so: connections wait in the backlog until aiohttp accepts.
    sock.listen(128)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    web.run_app(server.app, sock=sock, access_log=None, print=None)


if __name__ == "__main__":
    sys.exit(main())
