"""`dlgpr eval`: the paper's Table 1, simulated dialogues per questioner on held-out cities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dlgpr_core.cli.common import EncoderOption, console, split


def dialogue_eval(
    data: Annotated[Path, typer.Option(help="SynthCities/DQ-Cities root with Annotations/.")],
    cities: Annotated[list[str], typer.Option(help="Held-out cities (comma-separated).")],
    questioner: Annotated[
        list[str],
        typer.Option(
            help="Questioners to compare, repeatable: info-gain, random, dq-pilot, "
            "vlm-zero-shot, plugir, oracle (knows the target: a ceiling, labelled oracle)."
        ),
    ] = ["info-gain", "random"],  # noqa: B006 - typer reads the default, never mutates it
    update: Annotated[
        str,
        typer.Option(
            help="How answers re-rank: 'text' (appended to the query, the paper), 'evidence' "
            "(also re-scores places by each answer's likelihood under their image evidence), "
            "or both."
        ),
    ] = "evidence",
    evidence: Annotated[
        str,
        typer.Option(
            help="Whose evidence the robot uses, each a row: an annotator spec ('learned', "
            "'zero-shot', 'teacher:...') and/or 'oracle' (ground truth, labelled oracle). "
            "Maps are annotated on first use."
        ),
    ] = "learned",
    user: Annotated[
        str,
        typer.Option(
            help="Who answers, each a row: 'facts' (exact sentences), 'rephrased' (a person's "
            "words), 'rephrased+asr' (misheard too), or 'llm:<path, hub id or "
            "openai:<model>@<url>>' (an LLM over the target's description, the paper's)."
        ),
    ] = "facts",
    n: Annotated[int, typer.Option(min=1, help="Dialogues per city and questioner.")] = 100,
    rounds: Annotated[int, typer.Option(min=0, help="Maximum questions per dialogue.")] = 5,
    confidence: Annotated[
        float | None,
        typer.Option(help="Stop early once the top-1 belief reaches this (omit: never)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Chooses the target places and random questions.")] = 0,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1, help="Dialogues run in lockstep, one batched VLM call per round (GPU)."
        ),
    ] = 1,
    out: Annotated[
        Path, typer.Option(help="Output folder: table.md/json, dialogues.jsonl, recall.png.")
    ] = Path("results/dialogue_eval"),
    encoder: EncoderOption = None,
    maps: Annotated[
        Path | None, typer.Option(help="Folder of per-city maps (default <out>/maps).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="VLM id or path for dq-pilot / vlm-zero-shot.")
    ] = None,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter of dq-pilot.")] = None,
    llm: Annotated[
        str | None,
        typer.Option(help="Chat model for plugir: a path, a hub id or 'openai:<model>@<url>'."),
    ] = None,
) -> None:
    """Table 1: simulated dialogues per questioner on held-out cities (resumable, seeded).

    Starts every dialogue from the place's vague caption; a simulated user answers.
    Rerunning with the same --out and settings continues where an interrupted run stopped;
    other settings (rounds, confidence, seed, models, ...) into the same --out are refused.
    """
    from tqdm import tqdm

    from dlgpr_core.evaluation.runner import EvalSettings, Table1Run, Update, run_table1

    known: dict[str, Update] = {"text": "text", "evidence": "evidence"}
    unknown = [u for u in split([update]) if u not in known]
    if unknown:
        raise ValueError(f"--update takes 'text' and/or 'evidence', not {unknown}")
    given = {"model": model, "adapter": str(adapter) if adapter else None, "llm": llm}
    run = Table1Run(
        data=data,
        cities=split(cities),
        questioners=split(questioner),
        updates=[known[u] for u in split([update])],
        settings=EvalSettings(
            n=n, max_rounds=rounds, confidence=confidence, seed=seed, batch_size=batch_size
        ),
        out=out,
        maps=maps,
        encoder=encoder,
        model_options={k: v for k, v in given.items() if v is not None},
        evidence=split([evidence]),
        users=split([user]),
    )
    total = len(run.cities) * len(run.conditions()) * n
    with tqdm(total=total, desc="dialogues", unit="dlg") as bar:

        def tick() -> None:
            bar.update(1)

        run_table1(run, on_dialogue=tick, say=console.print)
    console.print((out / "table.md").read_text(encoding="utf-8"))
    console.print(
        f"wrote {out / 'table.md'}, {out / 'table.json'}, {out / 'recall.png'} and "
        f"{out / 'dialogues.jsonl'}"
    )


def eval_compare(
    base: Annotated[
        str,
        typer.Argument(
            help="A `dlgpr eval --out` folder (or its .jsonl); several, comma-separated, "
            "are read as one run (e.g. one folder per city)."
        ),
    ],
    other: Annotated[str, typer.Argument(help="The run compared with it (same --seed).")],
    k: Annotated[int, typer.Option(min=1, help="Recall@K compared.")] = 1,
    round_: Annotated[
        int, typer.Option("--round", min=0, help="Round at which cumulative R@K is compared.")
    ] = 5,
    out: Annotated[Path | None, typer.Option(help="Also write <out>.md and <out>.json.")] = None,
) -> None:
    """Two evaluation runs dialogue by dialogue: per condition, the dialogues each one wins
    at R@K and McNemar's exact p-value of that split (much sharper than two R@K, which each
    carry the noise of the targets drawn)."""
    from dlgpr_core.evaluation.paired import compare_runs

    runs = [Path(p) for p in split([base])], [Path(p) for p in split([other])]
    result = compare_runs(*runs, k=k, round_=round_, out=out)
    console.print(result.markdown(base, other), soft_wrap=True)
