"""`dlgpr map ...`: build, inspect, index and query street-view map databases."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from dlgpr_core.cli.common import (
    CheckpointOption,
    EncoderOption,
    MapOption,
    console,
    err_console,
    map_and_encoder,
    open_map,
)

if TYPE_CHECKING:
    from dlgpr_core.data.records import DatasetScan
    from dlgpr_core.encoders.base import Encoder
    from dlgpr_core.mapdb.annotating import ImageAnnotator
    from dlgpr_core.mapdb.database import MapDatabase
    from dlgpr_core.mapdb.report import PlaceHit

app = typer.Typer(help="Build, inspect and query street-view map databases.", no_args_is_help=True)


@app.command("build")
def map_build(
    dataset: Annotated[
        Path, typer.Argument(help="GSV-Cities/SynthCities root, or a CSV (image,place_id,lat,lon).")
    ],
    map_dir: MapOption,
    fmt: Annotated[str, typer.Option("--format", help="auto, gsv or csv.")] = "auto",
    encoder: EncoderOption = None,
    checkpoint: CheckpointOption = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    index: Annotated[
        str,
        typer.Option(
            help="The index searches use: auto (by map size: exact, then HNSW, then IVF-PQ; "
            "see the README's 'City scale'), exact, ivf, hnsw or ivfpq (forced). An "
            "approximate one is built after the images, with its recall against exact."
        ),
    ] = "auto",
    evidence: Annotated[
        str,
        typer.Option(
            help="Then derive evidence from the new images with this annotator (what the "
            "robot's questions and answer updates know of the map): learned (default), "
            "zero-shot, teacher:..., ocr, or none."
        ),
    ] = "learned",
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Decode, encode and annotate on Ray Data workers: 'local' (a local cluster "
            "of --workers CPUs) or a Ray address ('auto', 'ray://host:10001'; every machine "
            "must see the data set at the same path). Same map, rules and resume as a "
            "local build. Needs `pip install dlgpr[scale]`.",
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Ray workers (with --ray).")] = 2,
    gpus_per_worker: Annotated[
        float | None,
        typer.Option(min=0, help="GPUs per Ray worker (default: share the cluster's, 0: CPU)."),
    ] = None,
) -> None:
    """Build or extend a map; resumes an interrupted build and adds only new images."""
    from dlgpr_core.data import detect_format, scan_dataset

    _check_index_setting(index)
    kind = detect_format(dataset) if fmt == "auto" else fmt
    scan = scan_dataset(dataset, fmt=kind)
    db, enc = map_and_encoder(map_dir, encoder, checkpoint, create=True)
    console.print(
        f"building map {map_dir} from {scan.root}: {len(scan.records)} images found, "
        f"{len(scan.skipped)} refused while reading"
    )
    if index != db.search_index().setting:
        db.set_search_index(index, build=False)  # type: ignore[arg-type]
    if ray is not None:
        _build_with_ray(db, enc, scan, kind, encoder, checkpoint, evidence, batch_size, ray,
                        workers, gpus_per_worker)  # fmt: skip
    else:
        report = db.build(scan, enc, batch_size=batch_size, progress=True, source_kind=kind)
        console.print(report.render(), markup=False)
        if evidence != "none":
            _annotate(db, enc, evidence, batch_size=16, redo=False)
    console.print(db.info().render(), markup=False)


def _build_with_ray(
    db: MapDatabase,
    enc: Encoder,
    scan: DatasetScan,
    kind: str,
    encoder: str | None,
    checkpoint: Path | None,
    evidence: str,
    batch_size: int,
    address: str,
    workers: int,
    gpus_per_worker: float | None,
) -> None:
    """`dlgpr map build --ray`: the same build, its heavy part on Ray Data workers."""
    from functools import partial

    from dlgpr_core.evidence.registry import make_annotator
    from dlgpr_core.mapdb.access import load_encoder
    from dlgpr_core.mapdb.distributed import RaySettings, build_with_ray

    name, ckpt = db.encoder_choice(encoder, checkpoint)
    annotator = annotator_factory = None
    if evidence != "none":
        with console.status(f"loading annotator {evidence} ..."):
            annotator = make_annotator(evidence, encoder=enc)
        annotator_factory = partial(worker_annotator, evidence)
    report = build_with_ray(
        db,
        scan,
        enc,
        RaySettings(address, workers, gpus_per_worker),
        partial(load_encoder, name, ckpt),
        annotator,
        annotator_factory,
        batch_size=batch_size,
        source_kind=kind,
    )
    console.print(report.render(), markup=False)


def worker_annotator(spec: str, encoder: Encoder) -> ImageAnnotator:
    """The annotator a Ray worker builds from its own encoder (pickled by reference)."""
    from dlgpr_core.evidence.registry import make_annotator

    return make_annotator(spec, encoder=encoder)


def _annotate(db: MapDatabase, enc: Encoder, spec: str, batch_size: int, redo: bool) -> None:
    from dlgpr_core.evidence.registry import make_annotator

    with console.status(f"loading annotator {spec} ..."):
        annotator = make_annotator(spec, encoder=enc)
    console.print(db.annotate(annotator, batch_size=batch_size, redo=redo).render(), markup=False)


@app.command("evidence")
def map_evidence(
    map_dir: MapOption,
    annotator: Annotated[
        str,
        typer.Option(
            help="learned (the shipped model), learned:<run dir>, zero-shot[:<vocab.yaml>], "
            "teacher:<hf id or path>, teacher:openai:<model>@<url> (key: $OPENAI_API_KEY), ocr."
        ),
    ] = "learned",
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    redo: Annotated[bool, typer.Option(help="Forget this annotator's evidence first.")] = False,
    encoder: EncoderOption = None,
) -> None:
    """Derive evidence from every image the annotator has not done yet (resumable,
    incremental; a new annotator version redoes all): what the robot knows of its map."""
    db, enc = map_and_encoder(map_dir, encoder, None)
    _annotate(db, enc, annotator, batch_size, redo)
    console.print(db.info().render(), markup=False)


@app.command("info")
def map_info(map_dir: MapOption) -> None:
    """What a map holds: places, images, skipped inputs, encoder, index sizes, evidence."""
    console.print(open_map(map_dir).info().render(), markup=False)


def _check_index_setting(kind: str) -> None:
    from dlgpr_core.mapdb.choice import SETTINGS

    if kind not in SETTINGS:
        raise typer.BadParameter(
            f"{kind!r}: choose one of {', '.join(SETTINGS)}", param_hint="kind"
        )


@app.command("index")
def map_index(
    map_dir: MapOption,
    kind: Annotated[
        str,
        typer.Option(
            help="auto (by map size, the default rule), exact, ivf, hnsw or ivfpq: the index "
            "every search of the map uses from now on."
        ),
    ] = "auto",
) -> None:
    """Choose the index a map's searches use; an approximate one is (re)built and its
    recall against exact search reported."""
    from dlgpr_core.mapdb.index import APPROX_KINDS

    _check_index_setting(kind)
    db = open_map(map_dir)
    chosen = db.set_search_index(kind, build=False)  # type: ignore[arg-type]
    if chosen.kind in APPROX_KINDS:
        console.print(db.build_approximate(chosen.kind).render(), markup=False)
    console.print(chosen.render(), markup=False)


@app.command("lexical")
def map_lexical(
    map_dir: MapOption,
    annotator: Annotated[
        str | None,
        typer.Option(help="Whose evidence phrases are indexed (default: the recorded one)."),
    ] = None,
    weight: Annotated[
        float | None, typer.Option(min=0.0, help="Cosine units the best BM25 match gains.")
    ] = None,
    fusion: Annotated[str | None, typer.Option(help="sum (weighted) or rrf.")] = None,
    min_confidence: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Phrases at least this sure.")
    ] = None,
    off: Annotated[bool, typer.Option("--off", help="Dense search only, from now on.")] = False,
) -> None:
    """The lexical channel of the map's searches: BM25 over its evidence words, fused with
    the cosine. A map build turns it on over the first annotator's evidence; this changes
    or stops it for every caller (the robot, `map query`, the evaluation)."""
    from dataclasses import replace

    from dlgpr_core.mapdb.lexical import LexicalSpec

    db = open_map(map_dir)
    if off:
        db.set_lexical(None)
    else:
        spec = db.lexical_spec() or (LexicalSpec(annotator) if annotator else None)
        if spec is None:
            raise typer.BadParameter("the map has no lexical setting yet: name --annotator")
        changes = {
            k: v
            for k, v in {
                "annotator": annotator,
                "weight": weight,
                "fusion": fusion,
                "min_confidence": min_confidence,
            }.items()
            if v is not None
        }
        db.set_lexical(replace(spec, **changes))  # type: ignore[arg-type]
    console.print(db.info().lexical, markup=False)


@app.command("coverage")
def map_coverage(
    map_dir: MapOption,
    rates: Annotated[
        Path | None,
        typer.Option(
            help="JSON file: category -> P(a place has it | none of its views shows it), as "
            "`python -m dlgpr_core.evaluation.coverage DATA CITY... --out FILE` measures it "
            "on annotated places captured like this map."
        ),
    ] = None,
    none: Annotated[
        bool, typer.Option("--none", help="The views show everything at a place (360-degree).")
    ] = False,
    shipped: Annotated[
        bool, typer.Option("--shipped", help="Forget the map's rates: the shipped ones apply.")
    ] = False,
) -> None:
    """How much of a place the map's views miss: the chance a person there sees a thing no
    image shows, which the robot's answer model adds to the evidence's presence. Without an
    option, shows the map's setting."""
    if sum((rates is not None, none, shipped)) > 1:
        raise typer.BadParameter("give one of --rates, --none and --shipped")
    db = open_map(map_dir)
    if rates is not None:
        try:
            db.set_unseen_rates(json.loads(rates.read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
            raise typer.BadParameter(f"{rates}: {err}", param_hint="--rates") from err
    elif none:
        db.set_unseen_rates({})
    elif shipped:
        db.set_unseen_rates(None)
    console.print(f"coverage:   {db.info().coverage}", markup=False)


@app.command("relocate")
def map_relocate(
    old_root: Annotated[Path, typer.Argument(help="The data set root the map recorded.")],
    new_root: Annotated[Path, typer.Argument(help="Where that data set lies now.")],
    map_dir: MapOption,
) -> None:
    """Re-point a map at a data set that moved (needed to resume or extend a build)."""
    n = open_map(map_dir).relocate(old_root, new_root)
    console.print(f"re-pointed {n} images from {old_root} to {new_root}")


def _hits_table(title: str, hits: list[PlaceHit], target: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("rank", "place", "score", "latitude", "longitude", "best image"):
        table.add_column(col)
    for h in hits:
        mark = " [green]<- true place[/]" if target and h.place_id == target else ""
        table.add_row(
            str(h.rank),
            h.place_id + mark,
            f"{h.score:.3f}",
            f"{h.lat:.6f}",
            f"{h.lon:.6f}",
            Path(h.image_path).name,
        )
    return table


@app.command("query")
def map_query(
    text: Annotated[str, typer.Argument(help="What the person says they see.")],
    map_dir: MapOption,
    k: Annotated[int, typer.Option("-k", min=1, help="Number of places to return.")] = 5,
    encoder: EncoderOption = None,
    checkpoint: CheckpointOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    approximate: Annotated[
        str | None,
        typer.Option(
            help="Search this index (exact, ivf, hnsw, ivfpq) instead of the map's own "
            "choice (`dlgpr map info` says which)."
        ),
    ] = None,
    channels: Annotated[
        str, typer.Option(help="Search channels (comma-separated): dense, lexical, evidence.")
    ] = "dense,lexical,evidence",
    evidence: Annotated[
        str | None,
        typer.Option(
            help="Annotator whose evidence the evidence channel reads (default: the "
            "lexical channel's, else learned)."
        ),
    ] = None,
) -> None:
    """Static retrieval: the top places for a description, with scores and positions,
    through the robot's channels (dense, the lexical channel the map records, and the
    description read against each place's image evidence)."""
    from dlgpr_core.dialogue.search import RobotSearch, check_channels
    from dlgpr_core.evidence.knowledge import EvidenceSource

    wanted = [c.strip() for c in channels.split(",") if c.strip()]
    check_channels(wanted)
    db, enc = map_and_encoder(map_dir, encoder, checkpoint)
    spec = db.lexical_spec()
    annotator = evidence or (spec.annotator if spec else "learned")
    source = None
    if "evidence" in wanted:
        if any(run.annotator == annotator for run in db.evidence.runs()):
            source = EvidenceSource.of_map(db.evidence, annotator)
        else:
            wanted.remove("evidence")
            err_console.print(
                f"note: the map has no {annotator!r} evidence, so the evidence channel is off "
                f"(`dlgpr map evidence --map {map_dir} --annotator {annotator}`)"
            )
    search = RobotSearch(
        db,
        enc,
        source,
        channels=wanted,
        approximate=approximate,  # type: ignore[arg-type]
    )
    hits = search(text, k)
    if as_json:
        sys.stdout.write(json.dumps([h.__dict__ for h in hits], indent=2) + "\n")
    else:
        console.print(_hits_table(f"top {k} places for: {text!r}", hits))
