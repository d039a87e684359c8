"""Run localstripe bound to 127.0.0.1 on a free port, without its pickle persistence.

``python tests/stripe_extract/localstripe_runner.py`` prints ``PORT <n>`` once it listens.
localstripe's own command binds every interface and rewrites /tmp/localstripe.pickle
(shared by all instances) on every write; both are wrong for parallel tests.
"""

from __future__ import annotations

import logging
import socket
import sys

from aiohttp import web
from localstripe import resources, server


def main() -> None:
    # Persistence off: the store lives in this process only.
    resources.Store.dump_to_disk = lambda self: None  # type: ignore[method-assign]
    resources.Store.try_load_from_disk = lambda self: None  # type: ignore[method-assign]
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # Listening before saying so: connections wait in the backlog until aiohttp accepts.
    sock.listen(128)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    web.run_app(server.app, sock=sock, access_log=None, print=None)


if __name__ == "__main__":
    sys.exit(main())
