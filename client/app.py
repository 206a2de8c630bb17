"""The fedtune ClientApp: what runs at a data-owning site (``clientapp = "client.app:app"``).

Failures are contained here. When a ClientApp raises, Flower sends the exception's message to the server, and a
site's messages name its files, labels and values: private. So every handler runs inside :func:`contained`, which
writes the full error to the site's own log and to ``<ledger>.errors.log`` beside its ledger, and lets only a fixed
line reach the server: it learns that the site failed, not why.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.evaluate import evaluate_round
from client.train import train_round

log = logging.getLogger(__name__)
Handler = Callable[[Message, Context], Message]
#: All the server learns of a site's failure.
FAILURE = "the site could not complete this request; the reason is in the site's own log"


class SiteFailure(Exception):
    """Raised in place of a site's own exception, so that its message (private detail) never leaves the site."""


def error_log(node_config: Mapping[str, Any]) -> Path | None:
    """The site's error file (beside its ledger), when the node config names the ledger."""
    ledger = node_config.get("ledger-path")
    return Path(str(ledger) + ".errors.log") if ledger else None


def contained(handler: Handler, *, sites: Callable[[Context], Mapping[str, Any]] | None = None) -> Handler:
    """``handler``, with any exception logged at the site and replaced by :class:`SiteFailure` (``FAILURE``).

    ``sites`` gives the node config that names the site's ledger (default: the context's own node config).
    """

    @functools.wraps(handler)
    def run(message: Message, context: Context) -> Message:
        try:
            return handler(message, context)
        except Exception:
            log.exception("this site failed to handle a %s request", message.metadata.message_type)
            try:
                path = error_log(sites(context) if sites is not None else context.node_config)
                if path is not None:
                    with path.open("a", encoding="utf-8") as handle:
                        handle.write(f"--- {dt.datetime.now(dt.UTC).isoformat()}\n{traceback.format_exc()}")
            except Exception:  # the error file is a convenience; the failure is logged above either way
                log.exception("cannot write the site's error log")
            raise SiteFailure(FAILURE) from None

    return run


app = ClientApp()


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train one round under DP-SGD within the site's own budget (or refuse)."""
    return contained(train_round)(message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Evaluate the global adapter on the site's held-out split, if the site opted in."""
    return contained(evaluate_round)(message, context)
