"""`dlgpr retriever search-eval`: static recall of the robot's search, channel by channel."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dlgpr_core.cli.common import EncoderOption, console, split

ROWS = {
    "dense": ("dense",),
    "dense+lexical": ("dense", "lexical"),
    "dense+evidence": ("dense", "evidence"),
    "dense+lexical+evidence": ("dense", "lexical", "evidence"),
}
"""The rows of the table: each combination of channels the robot may search with."""


def search_eval(
    data: Annotated[Path, typer.Option(help="SynthCities/DQ-Cities root with Annotations/.")],
    cities: Annotated[list[str], typer.Option(help="Cities (comma-separated); held out.")],
    maps: Annotated[
        Path, typer.Option(help="Folder of per-city maps, built and annotated on first use.")
    ] = Path("results/maps"),
    encoder: EncoderOption = None,
    evidence: Annotated[
        str, typer.Option(help="Annotator whose evidence the lexical and evidence channels use.")
    ] = "learned",
    variants: Annotated[
        str, typer.Option(help="Query variants: generator, rephrased, rephrased+asr, caption.")
    ] = "generator,rephrased,rephrased+asr,caption",
    rows: Annotated[
        str, typer.Option(help=f"Channel combinations (comma-separated): {', '.join(ROWS)}.")
    ] = ",".join(ROWS),
    n: Annotated[int | None, typer.Option(min=1, help="Places per city (default: all).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the rephrased query variants.")] = 0,
    out: Annotated[Path, typer.Option(help="Writes <out>.md and <out>.json.")] = Path(
        "results/search_eval"
    ),
) -> None:
    """Place and image R@1/5/10 of the robot's search for each combination of channels
    (dense, + lexical BM25 over evidence words, + the evidence reading of the query)."""
    from dlgpr_core.data import scan_dataset
    from dlgpr_core.data.annotations import read_annotations
    from dlgpr_core.dialogue.search import RobotSearch
    from dlgpr_core.evaluation.search_recall import search_recall, write_table
    from dlgpr_core.evidence.knowledge import EvidenceSource
    from dlgpr_core.evidence.registry import make_annotator
    from dlgpr_core.mapdb.access import open_or_create_map
    from dlgpr_core.mapdb.lexical import LexicalSpec

    wanted = split([rows])
    unknown = [r for r in wanted if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown --rows {unknown}; choose from {list(ROWS)}")
    table_rows = []
    lexical_used: dict[str, object] = {}
    for city in split(cities):
        ann = data / "Annotations" / f"{city}.jsonl"
        if not ann.exists():
            raise FileNotFoundError(f"no annotations for {city}: expected {ann}")
        places = read_annotations(ann)[:n] if n else read_annotations(ann)
        db, enc = open_or_create_map(maps / city, encoder)
        report = db.build(scan_dataset(data, fmt="gsv", cities=[city]), enc, progress=True)
        if report.added:
            console.print(f"map of {city}: {report.render()}")
        done = db.annotate(make_annotator(evidence, encoder=enc), progress=True)
        if done.annotated:
            console.print(f"map of {city}: {done.render()}")
        source = EvidenceSource.of_map(db.evidence, evidence)
        spec = db.lexical_spec() or LexicalSpec(evidence)
        lexical_used[city] = spec.__dict__
        searches = {
            label: RobotSearch(db, enc, source, channels=ROWS[label], lexical=spec)
            for label in wanted
        }
        table_rows += search_recall(
            db, enc, searches, places, split([variants]), seed=seed, progress=True
        )
    meta = {
        "data": str(data),
        "cities": split(cities),
        "encoder": encoder or "the map's",
        "evidence": evidence,
        "lexical": lexical_used,
        "seed": seed,
        "n": n,
    }
    md, js = write_table(table_rows, out, meta)
    console.print(md.read_text(encoding="utf-8"), soft_wrap=True)
    console.print(f"wrote {md} and {js}")
