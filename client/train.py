"""One training round at a site: check the request, reserve budget, train under DP-SGD, commit, release.

Order is the privacy contract, per round:

1. read the site's own settings (node config) and validate everything the server sent: the run config, the request
   (round, run id, planned rounds, upload precision, witnessed ledger head) and the global adapter. A malformed
   value is a refusal (``bad-request``), never a crash whose message would carry site details to the server;
2. the run's task must be the one the site's data serve (else ``task-differs``); for classification, the run's
   labels must equal the site's own label set, names and order (else ``labels-differ``);
3. if the server witnessed this ledger's head before, the ledger must still contain it (else ``ledger-witness``:
   a rolled-back or forked ledger trains nothing);
4. fix the run's plan (once per run, cached in ``Context.state``, :mod:`client.run_plan`): the recipe's settings
   from public facts, a DP label histogram if class weights are ``balanced``, and sigma so that the run's planned
   rounds fit both the server's per-run target and the site's lifetime limit, given everything already spent;
5. reserve the round in the site's ledger: durable BEFORE training, refused (nothing trained) past the limit;
6. train locally with Opacus DP-SGD, the noise seeded from the site's own seed and the reservation's fresh event
   id (never from anything the server sends); commit in the ledger; only then build the reply;
7. reply with the release whitelist of :mod:`common.federation.protocol` and nothing else: the DP tensors, public
   metadata, the ledger head and its extension proof. Training statistics (loss, realised batch sizes, time) are
   functions of the raw data: they stay in the site's log and ledger.

A refusal carries only its reason code (:data:`~common.federation.protocol.REFUSAL_REASONS`); the full reason is
logged here, at the site. Codes: ``bad-request`` (a malformed run config, request value or global adapter, or a
batch size the data cannot support), ``labels-differ``, ``ledger-witness``, ``budget-exhausted`` (the limit is
spent, or this round would pass it), ``non-private-history`` (records trained without privacy), ``bad-parameters``
(no sigma fits, or the ledger is accounted at another delta or with another accountant).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, Context, Message

from client.run_plan import run_plan
from client.site import resolve_site
from client.work import Refusal, prepare_work
from common.errors import (
    BudgetExhaustedError,
    ConfigError,
    DataValidationError,
    LedgerError,
    LedgerTamperError,
    ModelError,
    PrivacyParameterError,
    UpdateRejectedError,
)
from common.federation import protocol as p
from common.federation.config import FederationConfig, parse_run_config
from common.federation.site import SiteSettings
from common.model.adapter import load_adapter_state
from common.model.lora import lora_a_fan_in, trainable_parameter_count
from common.privacy.accountant import get_accountant
from common.privacy.chain import LedgerHead, is_digest
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import PrivacyLedger
from common.training.device import resolve_device
from common.training.precision import check_precision
from common.training.schedule import LrSchedule
from common.training.trainer import DpSgdParams, train_adapter

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
#: Longest run id or ledger id a request may carry (both end up in the site's ledger and log).
MAX_ID_LENGTH = 256


@dataclass(frozen=True)
class TrainRequest:
    """A server's train request, validated: every value the site uses, typed."""

    server_round: int
    run_id: str
    planned_rounds: int
    upload_precision: str
    witnessed: LedgerHead | None
    global_state: dict[str, torch.Tensor]

    @property
    def upload_dtype(self) -> torch.dtype:
        """The dtype the reply's tensors travel in."""
        import torch

        return torch.float16 if self.upload_precision == "float16" else torch.float32


def train_round(message: Message, context: Context, *, run_config: Mapping[str, Any] | None = None) -> Message:
    """Handle one train message (the ClientApp's ``@app.train()``).

    ``run_config`` stands in for ``context.run_config`` where the caller holds it (Flower's in-process simulation
    API does not fill the context's run config, and does not let a ClientApp change it).
    """
    try:
        config = parse_run_config(context.run_config if run_config is None else run_config)
    except ConfigError as exc:
        return _refuse(message, "bad-request", f"the server's run config is invalid: {exc}")
    site = resolve_site(context.node_config, config)
    try:
        request = parse_train_request(message, config)
    except (ConfigError, UpdateRejectedError) as exc:
        return _refuse(message, "bad-request", f"site {site.site_name}: {exc}")

    work = prepare_work(site, config)
    if isinstance(work, Refusal):
        return _refuse(message, work.code, f"site {site.site_name}: {work.detail}")
    try:
        load_adapter_state(work.runtime.model, request.global_state)  # rejects unexpected keys, shapes, non-finite
    except ModelError as exc:
        return _refuse(message, "bad-request", f"site {site.site_name}: {exc}")

    device = resolve_device(site.device)
    # The site's own hardware settings, checked before anything is reserved (a bad one is the site's error: it
    # crashes this round, visibly in the site's log, and spends nothing).
    precision = check_precision(site.precision, device, private=True)
    ledger = site.budget.open_ledger()
    if request.witnessed is not None:
        try:
            ledger.check_witness(request.witnessed)
        except LedgerTamperError as exc:
            log.error("site %s REFUSES TO TRAIN: its ledger lost a head the server witnessed: %s", site.site_name, exc)
            return _refuse(message, "ledger-witness", str(exc))
    # Charged to exactly the records it trains on; the whole file lets legacy events be attributed to its records.
    dataset = ledger.dataset(work.record_texts, dataset_id=work.dataset_id, source=work.source)
    # A dataset stays with the accountant of its first recorded event, whatever a server asks for.
    status = ledger.status(dataset, delta=site.delta, accountant=config.accountant, limit=site.max_epsilon)
    accountant = status.accountant
    budget_code = "non-private-history" if status.non_private else "budget-exhausted"
    if status.refusal() is not None:  # no round can fit, whatever sigma: refused before calibrating
        return _refuse(message, budget_code, f"site {site.site_name}: {status.refusal()} (ledger {ledger.path})")
    try:
        chosen = run_plan(
            context,
            ledger=ledger,
            dataset=dataset,
            work=work,
            site=site,
            config=config,
            run_id=request.run_id,
            planned_rounds=request.planned_rounds,
            trainable_parameters=trainable_parameter_count(work.runtime.model),
            accountant=accountant,
            lora_a_fan_in=lora_a_fan_in(work.runtime.model),
        )
        plan = chosen.plan
        event = DpSgdEvent(
            noise_multiplier=chosen.sigma,
            sample_rate=plan.sample_rate,
            steps=plan.steps,
            max_grad_norm=chosen.max_grad_norm,
        )
        reservation = ledger.reserve(
            dataset=dataset,
            event=event,
            delta=site.delta,
            limit=site.max_epsilon,
            accountant=accountant,
            run_id=request.run_id,
            round=request.server_round,
        )
    except (ConfigError, DataValidationError) as exc:
        return _refuse(message, "bad-request", f"site {site.site_name}: {exc}")
    except BudgetExhaustedError as exc:
        return _refuse(message, budget_code, f"site {site.site_name}, round {request.server_round}: {exc}")
    except PrivacyParameterError as exc:
        return _refuse(message, "bad-parameters", f"site {site.site_name}, round {request.server_round}: {exc}")

    import torch

    outcome = train_adapter(
        work.runtime.model,
        work.train,
        config=chosen.training,
        plan=plan,
        dp=DpSgdParams(noise_multiplier=chosen.sigma, max_grad_norm=chosen.max_grad_norm),
        device=device,
        seed=round_seed(site, reservation.record.seq),
        # The schedule spans the run's rounds: round r continues where round r-1 left off (a pure function of r).
        schedule=LrSchedule.over(
            chosen.training.lr_schedule, plan.steps * chosen.rounds, chosen.training.warmup_fraction
        ),
        start_step=(request.server_round - 1) * plan.steps,
        class_weights=None if chosen.class_weights is None else torch.tensor(chosen.class_weights),
        task=work.trainer_task,
        precision=precision,
        gradient_checkpointing=site.gradient_checkpointing and work.task == "generate",
    )
    if outcome.event != event:
        raise RuntimeError(f"trained {outcome.event} but reserved {event}")
    ledger.commit(reservation, examples_seen=outcome.examples_seen, empty_batches=outcome.empty_batches)
    # Statistics of the raw data: for the site's own log only.
    log.info(
        "site %s round %d: trained %d steps in %.1f s, %d examples seen, %d empty batches, final loss %s",
        site.site_name,
        request.server_round,
        outcome.steps,
        outcome.seconds,
        outcome.examples_seen,
        outcome.empty_batches,
        outcome.final_loss,
    )
    try:
        head, proof = _ledger_release(ledger, request.witnessed)
    except LedgerTamperError as exc:  # the ledger changed under us since the check: the update does not leave
        log.error("site %s WITHHOLDS its update: %s", site.site_name, exc)
        return _refuse(message, "ledger-witness", str(exc))

    # Only now, with the spend durable in the ledger, may the update leave the site.
    # FFA-LoRA's A matrices are frozen, hence not trainable: every strategy receives exactly the trainable tensors.
    exchanged = [k for k in request.global_state if k in work.runtime.trainable]
    release = p.TrainRelease(
        num_examples=len(work.train),
        epsilon_spent=reservation.epsilon_after,
        epsilon_round=get_accountant(accountant).epsilon([event], delta=site.delta),
        delta=site.delta,
        event=event,
        head=head,
        proof=proof,
    )
    arrays = p.adapter_to_arrays(outcome.adapter, exchanged, dtype=request.upload_dtype)
    return p.train_reply(message, arrays, release)


def parse_train_request(message: Message, config: FederationConfig) -> TrainRequest:
    """Validate what the server sent; raises ConfigError (or UpdateRejectedError for undecodable tensors)."""
    content = message.content
    if p.CONFIG not in content.config_records or p.ARRAYS not in content.array_records:
        raise ConfigError(f"a train request needs a {p.CONFIG!r} and an {p.ARRAYS!r} record")
    record = content.config_records[p.CONFIG]
    run_id = record.get(p.RUN_ID)
    if not isinstance(run_id, str) or not 0 < len(run_id) <= MAX_ID_LENGTH:
        raise ConfigError(f"{p.RUN_ID!r} must be a string of 1 to {MAX_ID_LENGTH} characters; got {run_id!r:.80}")
    precision = record.get(p.UPLOAD_PRECISION, config.upload_precision)
    if not isinstance(precision, str) or precision not in p.UPLOAD_PRECISIONS:
        raise ConfigError(f"{p.UPLOAD_PRECISION!r} must be one of {sorted(p.UPLOAD_PRECISIONS)}; got {precision!r:.80}")
    return TrainRequest(
        server_round=_positive_int(record, p.SERVER_ROUND, None),
        run_id=run_id,
        planned_rounds=_positive_int(record, p.NUM_ROUNDS, config.num_rounds),
        upload_precision=precision,
        witnessed=_witnessed_head(record),
        global_state=p.arrays_to_adapter(content.array_records[p.ARRAYS], source="global adapter from server"),
    )


def _witnessed_head(record: ConfigRecord) -> LedgerHead | None:
    """The ledger head the server says it witnessed: all three keys, well-formed, or none of them."""
    keys = (p.WITNESSED_LEDGER_ID, p.WITNESSED_SEQ, p.WITNESSED_HASH)
    present = [key for key in keys if key in record]
    if not present:
        return None
    ledger_id, seq, digest = (record.get(key) for key in keys)
    if (
        len(present) != len(keys)
        or not isinstance(ledger_id, str)
        or not 0 < len(ledger_id) <= MAX_ID_LENGTH
        or isinstance(seq, bool)
        or not isinstance(seq, int)
        or seq < 0
        or not is_digest(digest)
    ):
        raise ConfigError(
            f"a witnessed ledger head needs {', '.join(map(repr, keys))}: an id, a seq >= 0 and a sha256 hex digest; "
            f"got {ledger_id!r:.80}, {seq!r:.40}, {digest!r:.80}"
        )
    assert isinstance(digest, str)  # is_digest checked it
    return LedgerHead(ledger_id=ledger_id, seq=seq, hash=digest)


def _ledger_release(ledger: PrivacyLedger, witnessed: LedgerHead | None) -> tuple[LedgerHead, list[str]]:
    """The ledger's head and the proof that it extends ``witnessed`` (empty at first contact), read consistently.

    Raises LedgerTamperError if the ledger no longer contains ``witnessed``.
    """
    for _ in range(3):  # another process may append between the two reads: the proof must end at the head sent
        head = ledger.head()
        proof = [] if witnessed is None else ledger.extension_proof(witnessed)
        if head is not None and (witnessed is None or head.seq == witnessed.seq + len(proof)):
            return head, proof
    raise LedgerError(f"{ledger.path}: the ledger kept changing while its head was read")


def _refuse(message: Message, reason: str, detail: str) -> Message:
    """A refusal reply carrying only ``reason``; ``detail`` (data, ledger, spend) stays in the site's log."""
    log.warning("refused (%s): %s", reason, detail)
    return p.refusal_reply(message, reason)


def round_seed(site: SiteSettings, reserve_seq: int) -> int | None:
    """The training seed of one ledger event: the SITE's seed and the event's place in its own ledger.

    Nothing from the server enters it: a server that could repeat a seed (e.g. by replaying a round number) would
    get two updates with the same noise and subtract it away. Every event has its own place (``seq``) in the
    ledger, which only grows, so no two events of a ledger share noise; and a seeded simulation started afresh
    reproduces its noise exactly. Seeds are for experiments: unseeded sites (every real one) draw OS entropy.
    """
    if site.seed is None:
        return None
    digest = hashlib.sha256(f"fedtune-round-seed\x00{site.seed}\x00{reserve_seq}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2  # 62 bits: the trainer's seed + 1 still fits torch's seed range


def _positive_int(record: ConfigRecord, key: str, default: int | None) -> int:
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"the server's train config needs a positive integer {key!r}; got {value!r:.80}")
    return value
