"""One training round at a site: check and reserve budget, train under DP-SGD, commit, reply.

Order is the privacy contract, per round:

1. read the site's own settings (node config) and the run config; validate the global adapter from the server;
2. choose sigma (once per run, cached in ``Context.state``) so that the run's planned rounds fit both the server's
   per-run target and the site's lifetime limit, given everything the dataset already spent in other runs;
3. reserve the round in the site's ledger: durable BEFORE training, refused (no training, a refusal reply, no
   weights) if it would pass the limit;
4. train locally with Opacus DP-SGD; commit in the ledger; only then build the reply;
5. reply with ONLY the tensors the strategy exchanges, plus metrics (examples, spend, sigma, q, steps, loss).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.runtime import site_data, site_model
from client.site import resolve_site
from common.errors import BudgetExhaustedError, ConfigError, PrivacyParameterError
from common.federation import protocol as p
from common.federation.config import FederationConfig, parse_run_config
from common.federation.rounds import Status
from common.federation.site import SiteSettings
from common.model.adapter import load_adapter_state
from common.privacy.accountant import AccountantName, get_accountant
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import DatasetRef, PrivacyLedger
from common.training.batches import StepPlan, plan_steps
from common.training.device import resolve_device
from common.training.trainer import DpSgdParams, train_adapter

log = logging.getLogger(__name__)
SIGMA_STATE = "fedtune-sigma"


def train_round(message: Message, context: Context, *, run_config: Mapping[str, Any] | None = None) -> Message:
    """Handle one train message (the ClientApp's ``@app.train()``).

    ``run_config`` stands in for ``context.run_config`` where the caller holds it (Flower's in-process simulation
    API does not fill the context's run config, and does not let a ClientApp change it).
    """
    config = parse_run_config(context.run_config if run_config is None else run_config)
    site = resolve_site(context.node_config, config)
    request = message.content.config_records[p.CONFIG]
    server_round = _int_value(request, p.SERVER_ROUND, None)
    run_id = str(request[p.RUN_ID])
    planned_rounds = _int_value(request, p.NUM_ROUNDS, config.num_rounds)

    runtime = site_model(config)
    data = site_data(site, config, runtime.tokenizer)
    global_state = p.arrays_to_adapter(message.content.array_records[p.ARRAYS], source="global adapter from server")
    load_adapter_state(runtime.model, global_state)  # rejects unexpected keys, shapes, non-finite values

    plan = plan_steps(
        num_examples=len(data.train),
        batch_size=config.training.batch_size,
        epochs=config.training.epochs,
        source=str(site.data_path),
    )
    ledger = site.budget.open_ledger()
    dataset = DatasetRef(fingerprint=data.fingerprint, dataset_id=data.dataset_id, num_examples=len(data.train))
    # A dataset stays with the accountant of its first recorded event, whatever a server asks for.
    accountant = ledger.status(
        dataset, delta=site.delta, accountant=config.accountant, limit=site.max_epsilon
    ).accountant
    try:
        sigma = _run_sigma(context, ledger, dataset, site, config, plan, run_id, planned_rounds, accountant)
        event = DpSgdEvent(
            noise_multiplier=sigma, sample_rate=plan.sample_rate, steps=plan.steps, max_grad_norm=config.max_grad_norm
        )
        reservation = ledger.reserve(
            dataset=dataset,
            event=event,
            delta=site.delta,
            limit=site.max_epsilon,
            accountant=accountant,
            run_id=run_id,
            round=server_round,
        )
    except (BudgetExhaustedError, PrivacyParameterError) as exc:
        log.warning("site %s refuses round %d: %s", site.site_name, server_round, exc)
        return _refusal(message, site, str(exc))

    outcome = train_adapter(
        runtime.model,
        data.train,
        config=config.training,
        plan=plan,
        dp=DpSgdParams(noise_multiplier=sigma, max_grad_norm=config.max_grad_norm),
        device=resolve_device(site.device),
        seed=_round_seed(site, server_round),
    )
    if outcome.event != event:
        raise RuntimeError(f"trained {outcome.event} but reserved {event}")
    ledger.commit(reservation, examples_seen=outcome.examples_seen, empty_batches=outcome.empty_batches)

    # Only now, with the spend durable in the ledger, may the update leave the site.
    # FFA-LoRA's A matrices are frozen, hence not trainable: every strategy receives exactly the trainable tensors.
    exchanged = [k for k in global_state if k in runtime.trainable]
    metrics = MetricRecord(
        {
            p.NUM_EXAMPLES: len(data.train),
            p.EPSILON_SPENT: reservation.epsilon_after,
            p.EPSILON_ROUND: get_accountant(accountant).epsilon([event], delta=site.delta),
            p.DELTA: site.delta,
            p.NOISE_MULTIPLIER: sigma,
            p.SAMPLE_RATE: plan.sample_rate,
            p.STEPS: plan.steps,
            p.EXAMPLES_SEEN: outcome.examples_seen,
            p.TRAIN_SECONDS: outcome.seconds,
            p.TRAIN_LOSS: outcome.final_loss if outcome.final_loss is not None else float("nan"),
        }
    )
    status = ConfigRecord({p.STATE: Status.TRAINED, p.SITE_NAME: site.site_name})
    content = RecordDict(
        {
            p.ARRAYS: p.adapter_to_arrays(outcome.adapter, exchanged, dtype=config.upload_dtype),
            p.METRICS: metrics,
            p.STATUS: status,
        }
    )
    return Message(content, reply_to=message)


def _refusal(message: Message, site: SiteSettings, reason: str) -> Message:
    status = ConfigRecord({p.STATE: Status.REFUSED, p.SITE_NAME: site.site_name, p.REASON: reason})
    metrics = MetricRecord({p.NUM_EXAMPLES: 0})
    return Message(RecordDict({p.METRICS: metrics, p.STATUS: status}), reply_to=message)


def _run_sigma(
    context: Context,
    ledger: PrivacyLedger,
    dataset: DatasetRef,
    site: SiteSettings,
    config: FederationConfig,
    plan: StepPlan,
    run_id: str,
    planned_rounds: int,
    accountant: AccountantName,
) -> float:
    """The noise multiplier for every round of this run, fixed at the run's first round at this site.

    It is the larger of (a) the sigma that spends at most the run's ``target-epsilon`` over the planned rounds and
    (b) the sigma that keeps the dataset within the site's own limit given what OTHER runs already spent. (b) depends
    only on what happened before this run, so a resumed run recomputes the same sigma. Whatever sigma is, the
    ledger still refuses any round that would pass the limit. The ledger answers both (and refuses a dataset
    trained without privacy); this function only caches the answer for the run.
    """
    cache = context.state.config_records.get(SIGMA_STATE, ConfigRecord())
    if run_id in cache:
        return float(cache[run_id])  # type: ignore[arg-type]
    sigma = ledger.calibrate(
        dataset=dataset,
        limit=site.max_epsilon,
        run_epsilon=config.target_epsilon,
        delta=site.delta,
        sample_rate=plan.sample_rate,
        steps=plan.steps,
        rounds=planned_rounds,
        max_grad_norm=config.max_grad_norm,
        accountant=accountant,
        run_id=run_id,
    )
    cache[run_id] = sigma
    context.state.config_records[SIGMA_STATE] = cache
    return sigma


def _round_seed(site: SiteSettings, server_round: int) -> int | None:
    """A per-round seed derived from the SITE's own seed, never from the server.

    A server that chose the noise seed could subtract the noise. Unseeded sites draw fresh OS entropy.
    """
    if site.seed is None:
        return None
    digest = hashlib.sha256(f"{site.seed}:{server_round}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _int_value(record: ConfigRecord, key: str, default: int | None) -> int:
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"the server's train config needs a positive integer {key!r}; got {value!r}")
    return value
