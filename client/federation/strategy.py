"""FedAvg that goes on without failed holders, down to a quorum, and remembers who trained.

Flower's FedAvg logs a reply that carries an error and averages the others, however few
(``min_train_nodes`` only sets how many are asked). A learnware averaged from one holder
would not be the federation's, so ``QuorumFedAvg`` refuses a round in which fewer than
``quorum`` holders trained (``LwmError``), and keeps each holder's accountant history from
its latest train reply: the adapter's DP report is made from exactly the holders whose
updates were averaged, and only they are asked for a spec.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from client.federation.client_app import history_of
from shared.dpsgd import History
from shared.errors import LwmError

_WRAPPED = re.compile(r"^<class '([\w.]+)'>:<'(.*)'>$", re.DOTALL)  # Flower's error reason
_MESSAGE = "occurred. Message: "  # ClientAppException's text before the holder's own


def short_reason(reason: str | None) -> str:
    """The holder's own error message out of the reason Flower reports for a failed reply.

    Flower wraps it as ``<class 'T'>:<'text'>``; under Ray the text is a traceback of
    chained exceptions ending in ``ClientAppException ... Message: <the holder's error>``.
    One line is what an operator needs (the SuperNode's log has the traceback).
    """
    text = str(reason or "").strip()
    wrapped = _WRAPPED.match(text)
    kind = ""
    if wrapped:
        kind, text = wrapped.group(1).rsplit(".", 1)[-1], wrapped.group(2)
    if _MESSAGE in text:
        kind, text = "", text.rsplit(_MESSAGE, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    message = (lines[-1] if lines else "no reason given").removesuffix("'>")
    return f"{kind}: {message}"[:300] if kind else message[:300]


def failures(replies: Iterable[Message]) -> list[str]:
    """``node ID: reason`` for each reply that carries an error."""
    return [
        f"node {r.metadata.src_node_id}: {short_reason(r.error.reason)}"
        for r in replies
        if r.has_error()
    ]


class QuorumFedAvg(FedAvg):
    """FedAvg over every connected holder, weighted by ``num-examples``, with a quorum."""

    def __init__(self, quorum: int) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=quorum,
            min_available_nodes=quorum,
        )
        self.quorum = quorum
        self.histories: dict[int, History] = {}  # node id -> accountant after its last round

    @property
    def trained(self) -> list[int]:
        """The node ids whose update was averaged in at least one round."""
        return sorted(self.histories)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        good = [r for r in replies if not r.has_error()]
        if len(good) < self.quorum:
            reasons = "; ".join(failures(replies)) or "no reply"
            raise LwmError(
                f"round {server_round}: only {len(good)} holder(s) trained, min_holders is "
                f"{self.quorum} ({reasons}); no learnware was made"
            )
        for reply in good:
            record = reply.content.get("accountant")
            self.histories[reply.metadata.src_node_id] = history_of(record)
        return super().aggregate_train(server_round, replies)
