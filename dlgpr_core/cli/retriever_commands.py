"""`dlgpr retriever ...`: evaluate CMPL retrievers and baselines (paper Tables 2 and 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dlgpr_core.cli.common import console, load_encoder, split

app = typer.Typer(
    help="Evaluate CMPL retrievers and baselines (paper Tables 2 and 3).", no_args_is_help=True
)


@app.command("eval")
def retriever_eval(
    data: Annotated[Path, typer.Option(help="GSV-Cities/SynthCities root with Annotations/.")],
    cities: Annotated[list[str], typer.Option(help="Cities to evaluate (comma-separated).")],
    encoder: Annotated[
        list[str] | None,
        typer.Option(
            help="Encoder spec, repeatable: 'cmpl:<checkpoint dir>', 'dlgpr-lite', "
            "'dlgpr-cmpl', 'open_clip:<model>:<tag or path>' (the plain CLIP baseline)."
        ),
    ] = None,
    heads: Annotated[
        list[Path] | None,
        typer.Option(
            help="Retrained dlgpr-lite heads (align_towers.py --out), repeatable: each adds "
            "the encoder 'dlgpr-lite+<file>' (the same towers with these heads)."
        ),
    ] = None,
    variants: Annotated[
        str, typer.Option(help="Query variants: generator, rephrased, rephrased+asr, caption.")
    ] = "generator,rephrased,rephrased+asr,caption",
    out: Annotated[Path, typer.Option(help="Writes <out>.md and <out>.json.")] = Path(
        "results/static_eval"
    ),
    rerank_top: Annotated[int, typer.Option(min=0, help="Images re-ranked by fine score.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the rephrased query variants.")] = 0,
    max_places: Annotated[int | None, typer.Option(min=1, help="Places per city.")] = None,
) -> None:
    """Static place R@1/5/10 and image R@1/5/10 per encoder, city and query variant.

    Place R@k: the target place among the k best distinct places; image R@k: an image of the
    target place among the k best images (the paper's Table 2). Ties count against the target.
    """
    from dlgpr_core.retriever.static_eval import static_eval

    if not encoder and not heads:
        raise typer.BadParameter("name at least one --encoder (or --heads)", param_hint="--encoder")
    encoders = {spec: load_encoder(spec) for spec in split(encoder or [])}
    for path in heads or []:
        encoders[f"dlgpr-lite+{path}"] = load_encoder("dlgpr-lite", path)
    table = static_eval(
        encoders,
        data,
        split(cities),
        split([variants]),
        seed=seed,
        rerank_top=rerank_top,
        max_places=max_places,
    )
    md, js = table.write(out)
    # soft_wrap: a Markdown table broken at the terminal width is no longer a table
    console.print(table.to_markdown(), soft_wrap=True)
    console.print(f"wrote {md} and {js}")


@app.command("ablation")
def retriever_ablation(
    config_dir: Annotated[Path, typer.Option(help="One YAML per Table 3 row.")] = Path(
        "training/configs/ablation"
    ),
    train: Annotated[bool, typer.Option(help="Train every row before evaluating it.")] = False,
    out: Annotated[Path, typer.Option(help="Writes <out>.md and <out>.json.")] = Path(
        "results/ablation"
    ),
    cities: Annotated[
        list[str] | None,
        typer.Option(
            help="Evaluation cities (default: each config's test_cities). A row that "
            "validates or trains on one of them is refused."
        ),
    ] = None,
    override: Annotated[
        list[str] | None, typer.Option(help="Dotted key=value for every row's config.")
    ] = None,
    rerank_top: Annotated[int, typer.Option(min=0)] = 50,
) -> None:
    """Table 3: (train and) evaluate baseline, vpr_tokensel, hsdm, hi and full."""
    from dlgpr_core.retriever.static_eval import run_ablation

    table = run_ablation(
        config_dir,
        train=train,
        overrides=override or [],
        cities=split(cities) if cities else None,
        rerank_top=rerank_top,
    )
    md, js = table.write(out, first_column="row")
    console.print(table.to_markdown(first_column="row"), soft_wrap=True)
    console.print(f"wrote {md} and {js}")
