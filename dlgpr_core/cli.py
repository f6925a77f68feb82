"""The `dlgpr` command line: generate data, build maps, query them, run the demo.

Heavy libraries (torch, faiss, open_clip) are imported inside the commands so that
`dlgpr --help` answers instantly on a robot.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from collections.abc import Callable

    from dlgpr_core.data.annotations import PlaceAnnotation
    from dlgpr_core.dialogue.engine import SearchFn
    from dlgpr_core.dialogue.questioners import Questioner
    from dlgpr_core.encoders.base import Encoder
    from dlgpr_core.mapdb.database import MapDatabase
    from dlgpr_core.mapdb.report import PlaceHit

app = typer.Typer(
    help="Dialogue place recognition: find where you are from what a person says.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
map_app = typer.Typer(
    help="Build, inspect and query street-view map databases.", no_args_is_help=True
)
app.add_typer(map_app, name="map")
retriever_app = typer.Typer(
    help="Evaluate CMPL retrievers and baselines (paper Tables 2 and 3).", no_args_is_help=True
)
app.add_typer(retriever_app, name="retriever")
# No emoji codes: place ids like "Demoville:100:" must print as written.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

MapOption = Annotated[Path, typer.Option("--map", "-m", help="Map database directory.")]
EncoderOption = Annotated[
    str | None,
    typer.Option(
        help="Encoder: 'dlgpr-lite' (embedded default), 'open_clip:<model>:<tag or path>', "
        "or a JSON model config. Queries default to the encoder the map was built with."
    ),
]
CheckpointOption = Annotated[
    Path | None, typer.Option(help="Trained parameters (safetensors) for the encoder.")
]


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Output root (GSV-Cities layout is written here).")],
    city: Annotated[str, typer.Option(help="City name (folder and CSV name).")] = "Synthville",
    places: Annotated[int, typer.Option(min=1, help="Number of places.")] = 200,
    views: Annotated[int, typer.Option(min=1, help="Views (images) per place.")] = 4,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same city.")] = 0,
    difficulty: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="0 = distinct places, 1 = near-duplicates.")
    ] = 0.5,
    workers: Annotated[int, typer.Option(min=1, help="Processes used for rendering.")] = 1,
) -> None:
    """Generate a SynthCities city: street-view-like images with exact annotations."""
    from dlgpr_core.synth import generate_city

    manifest = generate_city(
        out, city, places, views_per_place=views, seed=seed, difficulty=difficulty, workers=workers
    )
    console.print(
        f"[green]generated[/] {manifest.n_places} places, {manifest.n_images} images of "
        f"{manifest.city} under {out}"
    )


def _encoder(name: str, checkpoint: Path | None) -> Encoder:
    from dlgpr_core.encoders.factory import create_encoder

    with console.status(f"loading encoder {name} ..."):
        return create_encoder(name, checkpoint=checkpoint)


def _open_map(map_dir: Path) -> MapDatabase:
    from dlgpr_core.mapdb.database import MapDatabase

    return MapDatabase.open(map_dir)


def _map_encoder(db: MapDatabase, encoder: str | None, checkpoint: Path | None) -> Encoder:
    """The encoder given on the command line, else the one the map recorded at creation."""
    name, ckpt = db.encoder_choice(encoder, checkpoint)
    return _encoder(name, Path(ckpt) if ckpt else None)


def _open_or_create_map(
    map_dir: Path, encoder: str | None, checkpoint: Path | None
) -> tuple[MapDatabase, Encoder]:
    """Extend an existing map with its own encoder, or create one recording the encoder
    spec, so later queries need no --encoder flag."""
    from dlgpr_core.mapdb.database import MAP_FILE, MapDatabase

    if (map_dir / MAP_FILE).exists():
        db = MapDatabase.open(map_dir)
        return db, _map_encoder(db, encoder, checkpoint)
    name = encoder or "dlgpr-lite"
    enc = _encoder(name, checkpoint)
    db = MapDatabase.create(map_dir, enc.fingerprint, enc.dim)
    db.set_encoder_spec(name, str(checkpoint) if checkpoint else None)
    return db, enc


@map_app.command("build")
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
        str, typer.Option(help="Also build an approximate index: none, ivf or hnsw.")
    ] = "none",
) -> None:
    """Build or extend a map; resumes an interrupted build and adds only new images."""
    from dlgpr_core.data import detect_format, scan_dataset

    kind = detect_format(dataset) if fmt == "auto" else fmt
    scan = scan_dataset(dataset, fmt=kind)
    db, enc = _open_or_create_map(map_dir, encoder, checkpoint)
    console.print(
        f"building map {map_dir} from {scan.root}: {len(scan.records)} images found, "
        f"{len(scan.skipped)} refused while reading"
    )
    report = db.build(scan, enc, batch_size=batch_size, progress=True, source_kind=kind)
    console.print(report.render())
    if index != "none":
        console.print(db.build_approximate(index).render())  # type: ignore[arg-type]
    console.print(db.info().render())


@map_app.command("info")
def map_info(map_dir: MapOption) -> None:
    """What a map holds: places, images, skipped inputs, encoder, index sizes."""
    console.print(_open_map(map_dir).info().render())


@map_app.command("index")
def map_index(
    map_dir: MapOption,
    kind: Annotated[str, typer.Option(help="ivf or hnsw.")] = "hnsw",
) -> None:
    """Build an approximate index for a large map and report its recall against exact search."""
    console.print(_open_map(map_dir).build_approximate(kind).render())  # type: ignore[arg-type]


@map_app.command("relocate")
def map_relocate(
    old_root: Annotated[Path, typer.Argument(help="The data set root the map recorded.")],
    new_root: Annotated[Path, typer.Argument(help="Where that data set lies now.")],
    map_dir: MapOption,
) -> None:
    """Re-point a map at a data set that moved (needed to resume or extend a build)."""
    n = _open_map(map_dir).relocate(old_root, new_root)
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


@map_app.command("query")
def map_query(
    text: Annotated[str, typer.Argument(help="What the person says they see.")],
    map_dir: MapOption,
    k: Annotated[int, typer.Option("-k", min=1, help="Number of places to return.")] = 5,
    encoder: EncoderOption = None,
    checkpoint: CheckpointOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    approximate: Annotated[
        str | None, typer.Option(help="Search an approximate index (ivf/hnsw) instead.")
    ] = None,
) -> None:
    """Static retrieval: the top places for a description, with scores and positions."""
    db = _open_map(map_dir)
    enc = _map_encoder(db, encoder, checkpoint)
    hits = db.search(text, enc, k=k, approximate=approximate)  # type: ignore[arg-type]
    if as_json:
        sys.stdout.write(json.dumps([h.__dict__ for h in hits], indent=2) + "\n")
    else:
        console.print(_hits_table(f"top {k} places for: {text!r}", hits))


def _demo_city(workdir: Path, places: int, seed: int) -> tuple[Path, Path]:
    """The embedded demo city and its map (generated and built on first use, resumable)."""
    from dlgpr_core.data import scan_dataset
    from dlgpr_core.synth import generate_city

    city = "Demoville"
    annotations = workdir / "Annotations" / f"{city}.jsonl"
    if not annotations.exists():
        generate_city(workdir, city, places, views_per_place=4, seed=seed, difficulty=0.5)
    db, enc = _open_or_create_map(workdir / "map", "dlgpr-lite", None)
    report = db.build(scan_dataset(workdir, fmt="gsv"), enc, progress=True, source_kind="gsv")
    if report.added:
        console.print(report.render())
    return annotations, workdir / "map"


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo city and map are kept.")] = Path(
        "data/demo"
    ),
    user: Annotated[
        str,
        typer.Option(
            help="Who answers: 'simulated' (a user who knows a place), 'typed' (you, in "
            "this terminal) or 'speech' (you, into the microphone)."
        ),
    ] = "simulated",
    dialogues: Annotated[int, typer.Option(min=1, help="Simulated dialogues to run.")] = 3,
    questioner: Annotated[str, typer.Option(help="info-gain or random.")] = "info-gain",
    update: Annotated[str, typer.Option(help="'facts' (default) or 'text' (paper).")] = "facts",
    places: Annotated[int, typer.Option(min=10)] = 300,
    seed: Annotated[int, typer.Option()] = 7,
    record: Annotated[Path | None, typer.Option(help="Record every message to MCAP.")] = None,
) -> None:
    """The main job: full dialogues through the ROS 2 node graph on the embedded map.

    A person (simulated, typed or spoken) describes a place vaguely; the robot asks
    questions until it is confident or has asked five, then reports the place and its
    position. The dialogue is printed as it goes.
    """
    import random

    from dlgpr_core.data.annotations import read_annotations
    from dlgpr_core.data.records import namespaced_place_id

    if user not in ("simulated", "typed", "speech"):
        raise ValueError(f"--user takes simulated, typed or speech, not {user!r}")
    annotations, map_dir = _demo_city(workdir, places, seed)
    try:
        from dlgpr_ros.bringup import running
    except ImportError as exc:
        raise typer.BadParameter(
            f"the ROS 2 side is not available ({exc}); run `make setup` and `source scripts/env.sh`"
        ) from exc
    overrides: dict[str, object] = {
        "map_path": str(map_dir),
        "questioner.questioner": questioner,
        "dialogue_manager.update": update,
    }
    if user == "typed":
        overrides["typed_input.read_stdin"] = True
    if user == "speech":
        overrides["speech.use_microphone"] = True
    mode = "speech" if user == "speech" else "typed"
    with running(None, overrides, mode, simulate=user == "simulated", record=record) as graph:
        dm = graph.node("dialogue_manager")
        if user != "simulated":
            console.print(
                "[bold]Describe where you are[/] "
                + ("(type a line, Enter; Ctrl-D to stop)" if user == "typed" else "(speak)")
            )
            with contextlib.suppress(KeyboardInterrupt):
                if user == "typed":
                    typed = graph.node("typed_input")
                    graph.run_until(typed.stdin_closed.is_set, timeout=float("inf"))
                    # Let a dialogue whose last answer was just typed finish and print.
                    graph.run_until(lambda: typed.current() is None, timeout=10)
                else:
                    graph.run_until(lambda: False, timeout=float("inf"))
            return
        annotated = read_annotations(annotations)
        targets = random.Random(seed).sample(annotated, min(dialogues, len(annotated)))
        sim = graph.node("simulated_user")
        found = 0
        for place in targets:
            target = namespaced_place_id(place.city, place.place_id)
            console.rule(f"a person standing at {target}")
            sim.start(target)

            def finished(target: str = target) -> bool:
                did = sim.dialogue_of(target)
                d = dm.dialogues.get(did) if did else None
                return d is not None and d.phase == "done"

            if not graph.run_until(finished, 120):
                console.print(f"[red]no answer from the graph for {target} within 120 s[/]")
                continue
            graph.run_until(lambda: False, 0.5)  # let the printer catch up
            did = sim.dialogue_of(target)
            final = dm.dialogues.get(did) if did else None
            best = final.candidates[0].place_id if final and final.candidates else None
            found += best == target
            console.print(
                f"true place {target}: "
                + ("[green]found[/]" if best == target else f"[yellow]robot says {best}[/]")
            )
        console.print(f"{found} of {len(targets)} places found")


def _split(values: list[str]) -> list[str]:
    """Accept both ``--x a,b`` and ``--x a --x b``."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@retriever_app.command("eval")
def retriever_eval(
    data: Annotated[Path, typer.Option(help="GSV-Cities/SynthCities root with Annotations/.")],
    cities: Annotated[list[str], typer.Option(help="Cities to evaluate (comma-separated).")],
    encoder: Annotated[
        list[str],
        typer.Option(
            help="Encoder spec, repeatable: 'cmpl:<checkpoint dir>', 'dlgpr-lite', "
            "'open_clip:<model>:<tag or path>' (the plain CLIP baseline)."
        ),
    ],
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
    """Static R@1/5/10 per encoder, city and query variant (Table 2 protocol)."""
    from dlgpr_core.retriever.static_eval import static_eval

    encoders = {spec: _encoder(spec, None) for spec in _split(encoder)}
    table = static_eval(
        encoders,
        data,
        _split(cities),
        _split([variants]),
        seed=seed,
        rerank_top=rerank_top,
        max_places=max_places,
    )
    md, js = table.write(out)
    console.print(table.to_markdown())
    console.print(f"wrote {md} and {js}")


@retriever_app.command("ablation")
def retriever_ablation(
    config_dir: Annotated[Path, typer.Option(help="One YAML per Table 3 row.")] = Path(
        "training/configs/ablation"
    ),
    train: Annotated[bool, typer.Option(help="Train every row before evaluating it.")] = False,
    out: Annotated[Path, typer.Option(help="Writes <out>.md and <out>.json.")] = Path(
        "results/ablation"
    ),
    cities: Annotated[
        list[str] | None, typer.Option(help="Evaluation cities (default: each config's).")
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
        cities=_split(cities) if cities else None,
        rerank_top=rerank_top,
    )
    md, js = table.write(out, first_column="row")
    console.print(table.to_markdown(first_column="row"))
    console.print(f"wrote {md} and {js}")


def _questioner_factories(
    names: list[str],
    by_id: dict[str, PlaceAnnotation],
    options: dict[str, str],
    search: SearchFn,
) -> dict[str, tuple[Callable[[int], Questioner], SearchFn]]:
    """name -> (dialogue seed -> questioner, the search its dialogues use); model-backed
    questioners load their model once. PlugIR retrieves with its reformulated query."""
    from dlgpr_core.dialogue.questioners import make_questioner

    def shared(q: Questioner) -> Callable[[int], Questioner]:
        return lambda _seed: q

    def seeded(name: str) -> Callable[[int], Questioner]:
        return lambda seed: make_questioner(name, places_by_id=by_id, seed=seed)

    out: dict[str, tuple[Callable[[int], Questioner], SearchFn]] = {}
    for name in names:
        if name == "random":
            out[name] = (seeded(name), search)
        elif name == "info-gain":
            out[name] = (shared(make_questioner(name, places_by_id=by_id)), search)
        elif name == "plugir":
            from dlgpr_core.dialogue.plugir import PlugIRQuestioner, PlugIRSearch

            q = make_questioner(name, places_by_id=by_id, search=search, llm=options.get("llm"))
            assert isinstance(q, PlugIRQuestioner)
            out[name] = (shared(q), PlugIRSearch(search, q))
        elif name in ("dq-pilot", "vlm-zero-shot"):
            # One run compares the adapter with the bare model: the baseline drops it.
            keys = ("model", "adapter") if name == "dq-pilot" else ("model",)
            vlm = {k: v for k, v in options.items() if k in keys}
            out[name] = (shared(make_questioner(name, places_by_id=by_id, **vlm)), search)
        else:
            raise ValueError(f"unknown questioner {name!r}")
    return out


@app.command("eval")
def dialogue_eval(
    data: Annotated[Path, typer.Option(help="SynthCities/DQ-Cities root with Annotations/.")],
    cities: Annotated[list[str], typer.Option(help="Held-out cities (comma-separated).")],
    questioner: Annotated[
        list[str],
        typer.Option(
            help="Questioners to compare, repeatable: info-gain, random, dq-pilot, "
            "vlm-zero-shot, plugir."
        ),
    ] = ["info-gain", "random"],  # noqa: B006 - typer reads the default, never mutates it
    update: Annotated[
        str,
        typer.Option(
            help="How answers re-rank: 'text' (appended to the query, the paper), 'facts' "
            "(also down-weights places whose annotated facts contradict them), or both."
        ),
    ] = "text,facts",
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
    user_llm: Annotated[
        str | None,
        typer.Option(
            help="Answer with an LLM over the target's description (the paper used GPT-4o) "
            "instead of the fact-based user: a path, a hub id or 'openai:<model>@<url>'."
        ),
    ] = None,
) -> None:
    """Table 1: simulated dialogues per questioner on held-out cities (resumable, seeded).

    Starts every dialogue from the place's vague caption; a fact-based simulated user
    answers. Rerunning with the same --out continues where an interrupted run stopped.
    """
    from tqdm import tqdm

    from dlgpr_core.data import scan_dataset
    from dlgpr_core.data.annotations import places_by_id, read_annotations
    from dlgpr_core.dialogue.engine import User
    from dlgpr_core.dialogue.evaluate import (
        DialogueLog,
        EvalSettings,
        Update,
        evaluate_city,
        map_search,
        plot_recall,
        summarise_records,
        write_table,
    )
    from dlgpr_core.dialogue.user import FactUser

    known: dict[str, Update] = {"text": "text", "facts": "facts"}
    unknown = [u for u in _split([update]) if u not in known]
    if unknown:
        raise ValueError(f"--update takes 'text' and/or 'facts', not {unknown}")
    updates = [known[u] for u in _split([update])]
    names = _split(questioner)
    settings = EvalSettings(
        n=n, max_rounds=rounds, confidence=confidence, seed=seed, batch_size=batch_size
    )
    log = DialogueLog(out / "dialogues.jsonl")
    done = {r.key for r in log.read()}
    given = {"model": model, "adapter": str(adapter) if adapter else None, "llm": llm}
    options = {k: v for k, v in given.items() if v is not None}
    make_user: Callable[[PlaceAnnotation], User] = FactUser
    if user_llm:
        from dlgpr_core.dialogue.llm_user import LLMUser
        from dlgpr_core.llm.chat import create_chat_model

        chat = create_chat_model(user_llm)

        def make_user(place: PlaceAnnotation) -> User:
            return LLMUser(place, chat)

    city_names = _split(cities)
    total = len(city_names) * len(names) * len(updates) * n
    with tqdm(total=total, desc="dialogues", unit="dlg") as bar:
        bar.update(sum(1 for key in done if key[0] in city_names and key[1] in names))
        for city in city_names:
            ann = data / "Annotations" / f"{city}.jsonl"
            if not ann.exists():
                raise FileNotFoundError(f"no annotations for {city}: expected {ann}")
            places = read_annotations(ann)
            by_id = places_by_id(places)
            db, enc = _open_or_create_map((maps or out / "maps") / city, encoder, None)
            report = db.build(scan_dataset(data, fmt="gsv", cities=[city]), enc, progress=False)
            if report.added:
                console.print(f"map of {city}: {report.render()}")
            factories = _questioner_factories(names, by_id, options, map_search(db, enc))
            for name in names:
                make, search = factories[name]
                for upd in updates:
                    for _ in evaluate_city(
                        search,
                        db.info().n_places,
                        places,
                        name,
                        make,
                        upd,
                        settings,
                        log,
                        done,
                        make_user=make_user,
                    ):
                        bar.update(1)
    records = [r for r in log.read() if r.city in city_names and r.questioner in names]
    rows = summarise_records(records, rounds)
    meta = {
        "data": str(data),
        "cities": city_names,
        "n": n,
        "rounds": rounds,
        "confidence": confidence,
        "seed": seed,
        "encoder": db.encoder_spec().get("name") or encoder or "dlgpr-lite",
        "user": f"LLM over the description ({user_llm})" if user_llm else "fact-based",
        "d0": "caption",
    }
    md, js = write_table(rows, out / "table", meta)
    png = plot_recall(rows, out / "recall.png")
    console.print((out / "table.md").read_text(encoding="utf-8"))
    console.print(f"wrote {md}, {js}, {png} and {log.path}")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def bringup(ctx: typer.Context) -> None:
    """Start the ROS 2 node graph without `ros2 launch` (pip-only robots); --help for options.

    The very nodes and parameters that launch/dialogue.launch.py starts, from the same
    config/nodes.yaml and config/dialogue.yaml, in one multi-threaded executor.
    """
    try:
        from dlgpr_ros.bringup import main as bringup_main
    except ImportError as exc:
        raise typer.BadParameter(
            f"the ROS 2 side is not available ({exc}); run `make setup` and "
            "`source scripts/env.sh` (rclpy wheels + the colcon-built dlgpr_ros messages)"
        ) from exc
    raise typer.Exit(bringup_main(ctx.args))


def main() -> None:
    """Console entry point; user-fixable errors print a message and exit with code 2."""
    from dlgpr_core.mapdb.errors import MapError

    try:
        app()
    except (MapError, FileNotFoundError, ValueError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
