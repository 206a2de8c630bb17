"""Generative fine-tuning: response-only loss, truncation, token-bounded chunks, and DP-SGD on tiny causal LMs."""

from __future__ import annotations

import random

import pytest
import torch

from common.model.adapter import adapter_state
from common.model.causal import apply_causal_lora, ensure_pad_token, load_causal_lm
from common.model.loading import load_tokenizer, resolve_base_model
from common.model.lora import LoraSettings
from common.training.batches import StepPlan
from common.training.causal_batches import IGNORE_INDEX, TokenizedPairs, token_chunks
from common.training.causal_loss import causal_lm_loss, per_example_causal_lm_loss
from common.training.config import TrainConfig
from common.training.task import CausalLmTask
from common.training.trainer import DpSgdParams, train_adapter
from tests.causal_helpers import build_tiny_gpt2, build_tiny_llama

CPU = torch.device("cpu")
BUILDERS = {"llama": build_tiny_llama, "gpt2": build_tiny_gpt2}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def causal_ref(request, tmp_path_factory):
    return resolve_base_model(str(BUILDERS[request.param](tmp_path_factory.mktemp(request.param))))


@pytest.fixture(scope="module")
def tokenizer(causal_ref):
    return ensure_pad_token(load_tokenizer(causal_ref))


def words(count: int, start: int = 0) -> str:
    return " ".join(f"w{(start + i) % 80}" for i in range(count))


def pairs(tokenizer, n: int = 12, *, max_length: int = 48, seed: int = 0) -> TokenizedPairs:
    """``n`` pairs of varied prompt and response lengths."""
    rng = random.Random(seed)
    prompts = [f"### Instruction : {words(rng.randint(1, 20), i)} ### Response :" for i in range(n)]
    responses = [words(rng.randint(1, 12), 7 * i) for i in range(n)]
    return TokenizedPairs(prompts, responses, tokenizer, max_length=max_length)


def fresh_model(ref, seed: int = 0, **lora):
    torch.manual_seed(seed)
    return apply_causal_lora(load_causal_lm(ref), LoraSettings(r=4, **lora))


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


# ---- examples and their labels ------------------------------------------------------------------------------


def test_labels_mask_the_prompt_and_padding(tokenizer):
    data = TokenizedPairs(["w1 w2 w3", "w4"], ["w5 w6", "w7 w8 w9 w10"], tokenizer, max_length=32)
    inputs, labels = data.batch([0, 1], CPU)
    eos, pad = tokenizer.eos_token_id, data.pad_id
    w = tokenizer.convert_tokens_to_ids
    assert inputs["input_ids"].tolist() == [
        [w("w1"), w("w2"), w("w3"), w("w5"), w("w6"), eos],
        [w("w4"), w("w7"), w("w8"), w("w9"), w("w10"), eos],
    ]
    assert inputs["attention_mask"].tolist() == [[1] * 6, [1] * 6]
    assert labels[0].tolist() == [IGNORE_INDEX] * 3 + [w("w5"), w("w6"), eos]
    assert labels[1].tolist() == [IGNORE_INDEX, w("w7"), w("w8"), w("w9"), w("w10"), eos]
    short = TokenizedPairs(["w1"], ["w2"], tokenizer, max_length=32)
    padded_inputs, padded_labels = TokenizedPairs(["w1", "w3 w4 w5"], ["w2", "w6 w7"], tokenizer, max_length=32).batch(
        [0, 1], CPU
    )
    assert padded_inputs["input_ids"][0].tolist() == [*short.batch([0], CPU)[0]["input_ids"][0].tolist(), pad, pad, pad]
    assert padded_inputs["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]
    assert padded_labels[0].tolist() == [IGNORE_INDEX, w("w2"), eos, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    assert data.lengths == [6, 6] and len(data) == 2 and data.truncated_prompts == 0


def test_a_long_pair_keeps_its_response_and_loses_the_start_of_its_prompt(tokenizer):
    w = tokenizer.convert_tokens_to_ids
    data = TokenizedPairs([words(10), "w1 w2"], [words(5, 40), "w3"], tokenizer, max_length=8)
    assert data.truncated_prompts == 1 and data.truncated_responses == 0
    assert data.lengths == [8, 4]
    inputs, labels = data.batch([0], CPU)
    # 5 response tokens + EOS leave room for the prompt's LAST two tokens (w8 w9).
    response = [*(w(f"w{40 + i}") for i in range(5)), tokenizer.eos_token_id]
    assert inputs["input_ids"][0].tolist() == [w("w8"), w("w9"), *response]
    assert labels[0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, *response]


def test_a_response_longer_than_max_length_keeps_one_prompt_token_and_its_own_start(tokenizer):
    w = tokenizer.convert_tokens_to_ids
    data = TokenizedPairs(["w1 w2 w3"], [words(10, 20)], tokenizer, max_length=6)
    assert data.truncated_prompts == 1 and data.truncated_responses == 1
    inputs, labels = data.batch([0], CPU)
    assert inputs["input_ids"][0].tolist() == [w("w3"), *(w(f"w{20 + i}") for i in range(5))]
    assert labels[0].tolist() == [IGNORE_INDEX, *(w(f"w{20 + i}") for i in range(5))]


# ---- the loss -------------------------------------------------------------------------------------------------


def test_the_loss_ignores_prompt_positions_and_averages_per_example(tokenizer):
    data = pairs(tokenizer, 4)
    _, labels = data.batch([0, 1, 2, 3], CPU)
    vocab = len(tokenizer)
    logits = torch.randn(*labels.shape, vocab, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = causal_lm_loss(logits, labels)
    # Reference: a plain loop over each example's response tokens.
    expected = []
    for row in range(labels.shape[0]):
        terms = [
            torch.nn.functional.cross_entropy(logits[row, t - 1], labels[row, t])
            for t in range(1, labels.shape[1])
            if labels[row, t] != IGNORE_INDEX
        ]
        expected.append(torch.stack(terms).mean())
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-6)
    # The logits that predict prompt (or padding) positions get no gradient; a response label moves the loss.
    (grad,) = torch.autograd.grad(loss, logits)
    predicts_ignored = labels[:, 1:] == IGNORE_INDEX
    assert predicts_ignored.any() and (~predicts_ignored).any()
    assert torch.all(grad[:, :-1][predicts_ignored] == 0)
    assert torch.all(grad[:, -1] == 0)  # the last position predicts nothing
    changed = labels.clone()
    row, col = (labels != IGNORE_INDEX).nonzero()[0].tolist()
    changed[row, col] = (labels[row, col] + 1) % vocab
    assert not torch.allclose(causal_lm_loss(logits, changed), loss)
    prompt_row, prompt_col = (labels[:, 1:] == IGNORE_INDEX).nonzero()[0].tolist()
    moved = logits.detach().clone()
    moved[prompt_row, prompt_col] += 10.0  # logits predicting a prompt token
    assert torch.equal(causal_lm_loss(moved, labels), loss.detach())


def test_an_example_with_no_labelled_token_contributes_zero():
    labels = torch.full((1, 4), IGNORE_INDEX)
    assert per_example_causal_lm_loss(torch.randn(1, 4, 7), labels).tolist() == [0.0]


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_per_sample_gradients_are_each_examples_own_gradient(causal_ref, tokenizer):
    """Opacus's per-example gradients of the chunk loss equal each example's gradient computed alone (unpadded)."""
    from opacus import GradSampleModule

    model = fresh_model(causal_ref)
    with torch.no_grad():  # B starts at zero, which would make A's gradients vacuously zero
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.1)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    data = pairs(tokenizer, 3)
    assert len(set(data.lengths)) > 1  # padding really happens
    alone = []
    for i in range(3):
        inputs, labels = data.batch([i], CPU)
        loss = CausalLmTask().loss(model, inputs, labels)
        alone.append(torch.autograd.grad(loss, params))
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=False)
    try:
        inputs, labels = data.batch([0, 1, 2], CPU)
        CausalLmTask().loss(gsm, inputs, labels).backward()
        for k, param in enumerate(params):
            assert param.grad_sample.shape == (3, *param.shape)
            for i in range(3):
                assert torch.allclose(param.grad_sample[i], alone[i][k], atol=1e-6, rtol=1e-4)
    finally:
        gsm.to_standard_module()


# ---- chunks ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_token_chunks_cover_every_index_once_within_the_token_bound(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(200)]
    logical = rng.sample(range(200), 70)
    max_tokens = rng.choice([40, 100, 256])
    max_examples = rng.choice([None, 3])
    chunks = token_chunks(logical, lengths, max_tokens, max_examples=max_examples)
    assert sorted(i for chunk in chunks for i in chunk) == sorted(logical)
    for chunk in chunks:
        assert chunk
        assert len(chunk) == 1 or len(chunk) * max(lengths[i] for i in chunk) <= max_tokens
        assert max_examples is None or len(chunk) <= max_examples
    assert [lengths[i] for chunk in chunks for i in chunk] == sorted(lengths[i] for i in logical)  # bucketed
    oversized = token_chunks([0, 1], [500, 3], max_tokens=10)
    assert oversized == [[1], [0]]  # an example above the bound still gets a chunk of its own
    assert token_chunks([], lengths, 10) == [[]]


# ---- training -------------------------------------------------------------------------------------------------


def test_zero_noise_and_huge_clip_equals_plain_training(causal_ref, tokenizer):
    """Guards LoRA updates under Opacus (opacus issue 820) for decoders, GPT-2's Conv1D included."""
    data = pairs(tokenizer, 12)
    plan = StepPlan(num_examples=12, batch_size=12, sample_rate=1.0, steps=3)
    config = TrainConfig(optimizer="sgd", learning_rate=0.5, physical_batch_size=12)
    initial = adapter_state(fresh_model(causal_ref))
    task = CausalLmTask()
    plain = train_adapter(
        fresh_model(causal_ref), data, config=config, plan=plan, dp=None, device=CPU, seed=0, task=task
    )
    private = train_adapter(
        fresh_model(causal_ref),
        data,
        config=config,
        plan=plan,
        dp=DpSgdParams(noise_multiplier=0.0, max_grad_norm=1e9),
        device=CPU,
        seed=0,
        task=CausalLmTask(max_tokens=64),  # several token-bounded chunks: accumulation must not change the step
    )
    assert set(initial) == set(plain.adapter) and all(".lora_" in k for k in initial)
    for key in initial:
        assert torch.allclose(plain.adapter[key], private.adapter[key], atol=1e-5, rtol=1e-4), key
    changed = {k for k in initial if not torch.equal(initial[k], plain.adapter[k])}
    assert any(".lora_A." in k for k in changed) and any(".lora_B." in k for k in changed)
    assert len(plain.step_losses) == 3 and private.step_losses == pytest.approx(plain.step_losses, rel=1e-4)


def test_each_examples_clipped_gradient_is_bounded_whatever_its_length(causal_ref, tokenizer):
    """One SGD step (lr 1, noise 0) on a very long and a very short example is the mean of their clipped gradients.

    DP-SGD's step is -(clip(g_long) + clip(g_short)) / B with B = 2 expected examples, so its norm is <= C; the test
    checks the exact vector (each g computed alone, clipped by hand) and the bound.
    """
    clip = 1e-3
    data = TokenizedPairs([words(3), "w1"], [words(90, 5), "w2"], tokenizer, max_length=128)
    assert data.lengths[0] > 30 * data.lengths[1]
    reference = fresh_model(causal_ref)
    reference.train()
    params = [p for p in reference.parameters() if p.requires_grad]
    clipped = []
    for i in range(2):
        inputs, labels = data.batch([i], CPU)
        grads = flat(torch.autograd.grad(CausalLmTask().loss(reference, inputs, labels), params))
        assert grads.norm() > 10 * clip  # clipping binds for both
        clipped.append(grads * clip / (grads.norm() + 1e-6))  # Opacus's clip factor, eps included
    expected_step = -(clipped[0] + clipped[1]) / 2
    before = flat(p.detach().clone() for p in params)
    model = fresh_model(causal_ref)
    outcome = train_adapter(
        model,
        data,
        config=TrainConfig(optimizer="sgd", learning_rate=1.0),
        plan=StepPlan(num_examples=2, batch_size=2, sample_rate=1.0, steps=1),
        dp=DpSgdParams(noise_multiplier=0.0, max_grad_norm=clip),
        device=CPU,
        seed=0,
        task=CausalLmTask(max_tokens=40),  # the long example runs in a chunk of its own
    )
    assert outcome.examples_seen == 2
    step = flat(p.detach() for p in model.parameters() if p.requires_grad) - before
    assert torch.allclose(step, expected_step, atol=1e-8, rtol=1e-4)
    assert step.norm() <= clip * (1 + 1e-6)


def test_an_empty_batch_without_noise_leaves_a_causal_model_unchanged(causal_ref, tokenizer):
    model = fresh_model(causal_ref)
    initial = adapter_state(model)
    outcome = train_adapter(
        model,
        pairs(tokenizer, 4),
        config=TrainConfig(optimizer="sgd", learning_rate=1.0),
        plan=StepPlan(num_examples=4, batch_size=1, sample_rate=1e-12, steps=2),
        dp=DpSgdParams(noise_multiplier=0.0, max_grad_norm=1.0),
        device=CPU,
        seed=0,
        task=CausalLmTask(max_tokens=64),
    )
    assert outcome.empty_batches == 2
    assert all(torch.equal(initial[k], outcome.adapter[k]) for k in initial)


def test_class_weights_belong_to_classification_only(causal_ref, tokenizer):
    with pytest.raises(ValueError, match="class_weights"):
        train_adapter(
            fresh_model(causal_ref),
            pairs(tokenizer, 4),
            config=TrainConfig(optimizer="sgd", learning_rate=1.0),
            plan=StepPlan(num_examples=4, batch_size=2, sample_rate=0.5, steps=1),
            dp=None,
            device=CPU,
            task=CausalLmTask(),
            class_weights=torch.ones(2),
        )
