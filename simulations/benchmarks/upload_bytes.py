"""Bytes a site uploads per round: fedtune's LoRA replies (fedavg, ffa) against full-model fine-tuning of MiniLM.

Each figure is the size of a complete train reply Message as Flower serialises it (every object in the message's
tree: record dicts, array records, array chunks, metrics, status, ledger head and proof), built by the site's own
reply builder (``common.federation.protocol.train_reply``), with trained (random, hence incompressible and
undeduplicable) values. Full-model fine-tuning is the same reply carrying every parameter of the standard
BertForSequenceClassification in float32.
Goal: ffa at least 600x fewer bytes than full fine-tuning.

    python -m simulations.benchmarks.upload_bytes [--model minilm]
"""

from __future__ import annotations

import argparse
import hashlib
import uuid

import torch
from flwr.app import ArrayRecord, Message


def _reply(arrays: ArrayRecord) -> Message:
    """A trained reply built by the site's own builder, with a typical round's metadata and ledger proof."""
    from flwr.app import MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from common.federation import protocol as p
    from common.privacy.chain import LedgerHead
    from common.privacy.events import DpSgdEvent

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    request = Message(content=RecordDict(), message_type=MessageType.TRAIN, dst_node_id=1)
    release = p.TrainRelease(
        num_examples=1000,
        epsilon_spent=1.0,
        epsilon_round=1.0,
        delta=1e-5,
        event=DpSgdEvent(noise_multiplier=1.0, sample_rate=0.05, steps=20, max_grad_norm=1.0),
        head=LedgerHead(ledger_id=str(uuid.uuid4()), seq=6, hash=_digest("head")),
        proof=[_digest("reserve"), _digest("commit")],  # a round after the witnessed head: its reserve and commit
    )
    return p.train_reply(request, arrays, release)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def main() -> None:
    """Print the bytes of each kind of reply and the ratios to full fine-tuning."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--lora-r", type=int, default=8)
    args = parser.parse_args()

    from common.federation import protocol as p
    from common.model.adapter import adapter_state, trainable_keys
    from common.model.loading import load_base_classifier, resolve_base_model
    from common.model.lora import LoraSettings, apply_lora

    ref = resolve_base_model(args.model)
    labels = ("negative", "positive")
    full_model = load_base_classifier(ref, labels, pooling="cls")  # the standard architecture, pooler included
    full_params = {k: v.detach().contiguous() for k, v in full_model.named_parameters()}
    full = p.wire_size(_reply(ArrayRecord(full_params)))
    print(f"model {ref.name}: {sum(v.numel() for v in full_params.values()):,} parameters")
    print(f"{'reply':<34}{'tensors':>9}{'params':>12}{'bytes':>14}{'x fewer than full':>20}")
    print(
        f"{'full fine-tuning (float32)':<34}{len(full_params):>9}{sum(v.numel() for v in full_params.values()):>12,}"
        f"{full:>14,}{1.0:>20.1f}"
    )
    for strategy in ("fedavg", "ffa"):
        torch.manual_seed(0)
        model = apply_lora(load_base_classifier(ref, labels), LoraSettings(r=args.lora_r, ffa=strategy == "ffa"))
        # Trained values: at initialisation B is all zeros, and identical zero chunks would be sent only once.
        state = {k: torch.randn_like(v) * 0.01 for k, v in adapter_state(model).items()}
        keys = [k for k in state if k in trainable_keys(model)]
        for dtype in (torch.float32, torch.float16):
            size = p.wire_size(_reply(p.adapter_to_arrays(state, keys, dtype=dtype)))
            label = f"{strategy} LoRA r={args.lora_r} ({str(dtype).removeprefix('torch.')})"
            print(f"{label:<34}{len(keys):>9}{sum(state[k].numel() for k in keys):>12,}{size:>14,}{full / size:>20.1f}")
    print("fedtune uploads float16 by default (run config upload-precision); goal: ffa >= 600x")


if __name__ == "__main__":
    main()
