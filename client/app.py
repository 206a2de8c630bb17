"""The fedtune ClientApp: what runs at a data-owning site (``clientapp = "client.app:app"``)."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.evaluate import evaluate_round
from client.train import train_round

app = ClientApp()


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train one round under DP-SGD within the site's own budget (or refuse)."""
    return train_round(message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Evaluate the global adapter on the site's held-out split, if the site opted in."""
    return evaluate_round(message, context)
