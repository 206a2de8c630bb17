"""Everything one round at a site works with, whatever the run's task: one record that train and evaluate share.

A classify run trains a sequence classifier on the site's labelled file (:mod:`client.runtime`); a generate run
trains a causal LM on its prompt/response pairs (:mod:`client.causal_runtime`). Past this point the round is the
same: the same ledger (records identified by what is trained on), the same recipe, reservation, DP-SGD trainer and
release whitelist. Only how a chunk's loss is computed (the trainer's task) and how held-out data are scored differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from client.runtime import SiteModel, labels_problem, site_data, site_model
from common.errors import ConfigError, ModelError
from common.federation.config import FederationConfig
from common.federation.site import SiteSettings
from common.model.task import ModelTask
from common.training.task import CausalLmTask, TrainData, TrainTask

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class SiteWork:
    """A site's model and data for one run.

    ``record_texts`` identify the records trained on in the ledger (per-record budgets); ``source`` is the whole
    file's (fingerprint, texts), which lets legacy events be attributed to its records. ``labels`` are the training
    labels (class weights need them; None for generation). ``trainer_task`` is None for the trainer's default
    (classification).
    """

    task: ModelTask
    runtime: SiteModel
    train: TrainData
    eval: TrainData | None
    record_texts: Sequence[str]
    source: tuple[str, Sequence[str]]
    dataset_id: str
    labels: Sequence[int] | None
    trainer_task: TrainTask | None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's tokenizer."""
        return self.runtime.tokenizer


@dataclass(frozen=True)
class Refusal:
    """Why a site takes no part in a round: the reply's reason code, and the detail that stays in the site's log."""

    code: str
    detail: str


def prepare_work(site: SiteSettings, config: FederationConfig) -> SiteWork | Refusal:
    """The site's model and data for this run, or why it refuses the run (before any model is loaded)."""
    try:
        task = config.model_task()
    except (ConfigError, ModelError) as exc:
        return Refusal("bad-request", str(exc))
    problem = site_problem(site, config, task)
    return problem if problem is not None else site_work(site, config, task)


def site_problem(site: SiteSettings, config: FederationConfig, task: ModelTask) -> Refusal | None:
    """Why the site cannot take part in this run at all, or None.

    Checked before any model is loaded. The run's task must be the one the site's data serve (the site, not the
    server, decides how its file is read). Classification: the run's labels must equal the site's own label set.
    Generation: no setting of the run may be a classification-only one (a ``balanced`` class weighting would need
    labels that pairs do not have).
    """
    if task != site.task:
        return Refusal(
            "task-differs", f"the run's task is {task}, but this site's data serve {site.task} ({site.data_path})"
        )
    problem = config.task_problem(task) if task == "generate" else labels_problem(site, config)
    if problem is None:
        return None
    return Refusal("bad-request" if task == "generate" else "labels-differ", problem)


def site_work(site: SiteSettings, config: FederationConfig, task: ModelTask) -> SiteWork:
    """The site's model and data for this run's ``task`` (cached per process; see the runtimes)."""
    if task == "generate":
        from client.causal_runtime import site_causal_model, site_pairs

        runtime = site_causal_model(config)
        pairs = site_pairs(site, config, runtime.tokenizer)
        return SiteWork(
            task=task,
            runtime=runtime,
            train=pairs.train,
            eval=pairs.eval,
            record_texts=pairs.train_pairs.texts,
            source=(pairs.source.fingerprint, pairs.source.texts),
            dataset_id=pairs.dataset_id,
            labels=None,
            trainer_task=CausalLmTask(max_tokens=config.max_tokens),
        )
    runtime = site_model(config)
    data = site_data(site, config, runtime.tokenizer)
    return SiteWork(
        task=task,
        runtime=runtime,
        train=data.train,
        eval=data.eval,
        record_texts=data.train.dataset.texts,
        source=(data.source.fingerprint, data.source.texts),
        dataset_id=data.dataset_id,
        labels=data.train.dataset.labels,
        trainer_task=None,
    )
