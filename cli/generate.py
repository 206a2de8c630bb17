"""``fedtune generate``: continue prompts with a base causal LM and an adapter trained by fedtune.

``--data`` holds plain prompts or (JSON Lines) chat records (:mod:`common.data.prompts`); a chat ending with an
assistant turn has that turn dropped as its reference answer. Prompts are rendered as training rendered them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli import options as opt
from cli.display import console
from common.errors import ConfigError, ModelError


def generate(
    adapter: Annotated[Path, typer.Option("--adapter", help="An adapter directory (OUT/adapter of a generate job).")],
    out: Annotated[Path, typer.Option("--out", help="JSON Lines file to write: one {prompt, generation} per line.")],
    prompt: Annotated[str | None, typer.Option("--prompt", help="One prompt (plain text).")] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Prompts: CSV/TSV/JSON Lines with a prompt column, or JSON Lines chat records (a messages list of "
            "{role, content} turns; a last assistant turn is the reference answer and is left out of the prompt).",
        ),
    ] = None,
    prompt_column: Annotated[str, typer.Option("--prompt-column", help="Column of the prompts.")] = "prompt",
    messages_column: Annotated[
        str, typer.Option("--messages-column", help="JSON Lines key of a chat record's turns.")
    ] = "messages",
    model: Annotated[
        str | None, typer.Option("--model", help="Base model (hub id or directory). Default: the adapter's record.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Most tokens added per prompt.")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts generated at once.")] = 8,
    device: opt.DeviceOpt = "auto",
) -> None:
    """Greedy generations for --prompt or every prompt of --data, rendered with the adapter's recorded template."""
    from rich.progress import Progress

    from common.data.pairs import PairSpec
    from common.data.prompts import Prompts, read_prompts_file, render_as_trained
    from common.fileio import atomic_write_bytes
    from common.inference.generate import generate_texts
    from common.model.adapter import load_causal_adapter, read_model_info
    from common.model.causal import ensure_pad_token, load_causal_lm
    from common.model.loading import load_tokenizer, resolve_base_model
    from common.parsing import parse_settings
    from common.training.device import resolve_device

    if (prompt is None) == (data is None):
        raise ConfigError("give exactly one of --prompt TEXT or --data FILE")
    info = read_model_info(adapter)
    if info.get("task") != "generate":
        raise ModelError(f"{adapter}: not a generative adapter (its task is {info.get('task', 'classify')!r})")
    if data is not None:
        spec = parse_settings(
            PairSpec,
            {"prompt_column": prompt_column, "messages_column": messages_column},
            context="option",
            names={"prompt_column": "--prompt-column", "messages_column": "--messages-column"},
        )
        prompts = read_prompts_file(data, spec)
    else:
        assert prompt is not None
        if not prompt.strip():
            raise ConfigError("--prompt is empty")
        prompts = Prompts(prompts=(prompt,), source="--prompt")
    ref = resolve_base_model(model or str(info.get("base_model", "")))
    tokenizer = ensure_pad_token(load_tokenizer(ref))
    rendered = render_as_trained(prompts, tokenizer, template=info.get("template"), adapter=str(adapter))
    peft_model = load_causal_adapter(load_causal_lm(ref), adapter)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("generating", total=len(rendered))
        texts = generate_texts(
            peft_model,
            tokenizer,
            rendered,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            device=resolve_device(device),
            progress=lambda done, _total: bar.update(task, completed=done),
        )
    lines = [
        json.dumps(
            {"prompt": text, **({} if turns is None else {"messages": _messages(turns)}), "generation": generated},
            ensure_ascii=False,
        )
        for text, turns, generated in zip(prompts.prompts, prompts.turns, texts, strict=True)
    ]
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
    if prompt is not None:
        console.print(texts[0], markup=False)
    console.print(f"{len(texts)} generation(s) written to {out}")


def _messages(turns: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    """Chat turns as the ``messages`` records they were read from."""
    return [{"role": role, "content": content} for role, content in turns]
