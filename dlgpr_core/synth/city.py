"""Generates one SynthCities city and writes it in the GSV-Cities layout.

Planning (scenes, texts, view parameters) runs sequentially from per-place child seeds;
only rendering is parallel and is a pure function of the plan, so any worker count gives
byte-identical output.
"""

from __future__ import annotations

import csv
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from pydantic import BaseModel
from tqdm import tqdm

from dlgpr_core.data.annotations import (
    SCHEMA_VERSION,
    PlaceAnnotation,
    Region,
    Transient,
    ViewAnnotation,
    write_annotations,
)
from dlgpr_core.synth import gsv
from dlgpr_core.synth.language import PlaceText, describe
from dlgpr_core.synth.render import render_view
from dlgpr_core.synth.scene import (
    Scene,
    apply_one_mutation,
    finalize,
    frontage_length,
    mutate,
    sample_archetype,
    signature,
)
from dlgpr_core.synth.views import ViewSpec, sample_views

GENERATOR_VERSION = "synthcities-1.0"
"""Part of the manifest; bump when the same seed would produce different output."""
JPEG_QUALITY = 90


class CityManifest(BaseModel):
    """What was generated and how to regenerate it; paths are relative to ``out_root``."""

    city: str
    n_places: int
    n_images: int
    views_per_place: int
    seed: int
    difficulty: float
    image_size: tuple[int, int]
    n_archetypes: int
    csv: str
    annotations: str
    images_dir: str
    generator_version: str = GENERATOR_VERSION
    schema_version: str = SCHEMA_VERSION


def manifest_path(out_root: Path, city: str) -> Path:
    return Path(out_root) / "SynthCities" / f"{city}.json"


def n_archetypes(n_places: int, difficulty: float) -> int:
    """Higher difficulty means fewer archetypes, so each vague caption fits more places."""
    share = 0.02 + 0.38 * (1.0 - difficulty) ** 2
    return max(1, min(n_places, math.ceil(n_places * share)))


def n_mutations(rng: np.random.Generator, difficulty: float) -> int:
    """Higher difficulty means places stay closer to their archetype."""
    return 1 + int(rng.binomial(6, 1.0 - difficulty))


@dataclass
class PlacePlan:
    place_id: int
    scene: Scene
    text: PlaceText
    views: list[ViewSpec]
    images: list[gsv.GsvImage]


@dataclass(frozen=True)
class _RenderJob:
    plan: PlacePlan
    image_dir: Path
    size: tuple[int, int]


@dataclass(frozen=True)
class _RenderedPlace:
    regions: list[list[tuple[str, list[int]]]]
    transients: list[list[tuple[str, list[int]]]]


def _render_place(job: _RenderJob) -> _RenderedPlace:
    regions, transients = [], []
    for view, img in zip(job.plan.views, job.plan.images, strict=True):
        out = render_view(job.plan.scene, view, job.size)
        out.image.save(job.image_dir / img.filename, format="JPEG", quality=JPEG_QUALITY)
        regions.append(out.regions)
        transients.append(out.transients)
    return _RenderedPlace(regions, transients)


def plan_city(
    city: str, n_places: int, views_per_place: int, seed: int, difficulty: float
) -> tuple[list[PlacePlan], int]:
    """Scenes, texts and view parameters of every place, and the archetype count."""
    ch = gsv.city_hash(city)
    n_arch = n_archetypes(n_places, difficulty)
    archetypes = [
        sample_archetype(np.random.default_rng([seed, ch, 1, i]), i) for i in range(n_arch)
    ]
    base = gsv.base_latlon(seed, city)
    seen: set[tuple[object, ...]] = set()
    plans: list[PlacePlan] = []
    for pid in range(n_places):
        rng = np.random.default_rng([seed, ch, 2, pid])
        arch = archetypes[int(rng.integers(n_arch))]
        scene = mutate(rng, arch, n_mutations(rng, difficulty))
        for _ in range(20):
            if signature(scene) not in seen:
                break
            apply_one_mutation(rng, scene)
        seen.add(signature(scene))
        scene = finalize(scene)
        text = describe(rng, scene)
        views = sample_views(rng, scene, views_per_place)
        loc = gsv.place_location(base, pid, n_places)
        centre = frontage_length(scene) / 2
        images = []
        for v in views:
            lat, lon = gsv.view_latlon(loc, v.cam_x - centre)
            images.append(
                gsv.GsvImage(
                    city_id=city,
                    place_id=pid,
                    year=v.year,
                    month=v.month,
                    northdeg=round(loc.facade_heading + v.yaw) % 360,
                    lat=gsv.format_coord(lat),
                    lon=gsv.format_coord(lon),
                    panoid=gsv.panoid(city, seed, pid, v.index),
                )
            )
        plans.append(PlacePlan(pid, scene, text, views, images))
    return plans, n_arch


def _prepare_image_dir(out_root: Path, city: str) -> Path:
    """Refuse to mix with foreign images; replace our own earlier output of this city."""
    image_dir = out_root / "Images" / city
    if image_dir.exists() and any(image_dir.iterdir()):
        if not manifest_path(out_root, city).exists():
            raise FileExistsError(
                f"{image_dir} is not empty and was not written by SynthCities; "
                "choose another out_root or city"
            )
        for old in image_dir.glob("*.jpg"):
            old.unlink()
    image_dir.mkdir(parents=True, exist_ok=True)
    return image_dir


def _annotation(
    city: str, plan: PlacePlan, rendered: _RenderedPlace, size: tuple[int, int]
) -> PlaceAnnotation:
    phrases = plan.text.phrases
    views = []
    for view, img, regions, transients in zip(
        plan.views, plan.images, rendered.regions, rendered.transients, strict=True
    ):
        views.append(
            ViewAnnotation(
                image=f"Images/{city}/{img.filename}",
                width=size[0],
                height=size[1],
                heading=float(img.northdeg),
                regions=[
                    Region(bbox=box, phrase=phrases[eid], element_id=eid) for eid, box in regions
                ],
                transients=[Transient(kind=kind, bbox=box) for kind, box in transients],
                conditions={"time_of_day": view.time_of_day, "season": view.season},
            )
        )
    return PlaceAnnotation(
        city=city,
        place_id=plan.place_id,
        caption=plan.text.caption,
        description=plan.text.description,
        elements=plan.text.elements,
        facts=plan.text.facts,
        relations=plan.text.relations,
        views=views,
        meta={
            "archetype": plan.scene.archetype,
            "caption_elements": ",".join(plan.scene.caption_ids),
            "generator": GENERATOR_VERSION,
        },
    )


def generate_city(
    out_root: Path,
    city: str,
    n_places: int,
    views_per_place: int = 4,
    seed: int = 0,
    difficulty: float = 0.5,
    image_size: tuple[int, int] = (320, 240),
    workers: int = 1,
    progress: bool = True,
) -> CityManifest:
    """Write ``Images/<city>/``, ``Dataframes/<city>.csv``, ``Annotations/<city>.jsonl`` and
    ``SynthCities/<city>.json`` under ``out_root``; same arguments, same bytes.

    ``workers > 1`` renders in spawned processes, so a calling script needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    if not gsv.CITY_NAME.fullmatch(city):
        raise ValueError(f"city {city!r} must match {gsv.CITY_NAME.pattern} (used in file names)")
    if n_places < 1 or views_per_place < 1 or workers < 1:
        raise ValueError("n_places, views_per_place and workers must be >= 1")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    if min(image_size) < 32:
        raise ValueError(f"image_size {image_size} is too small to draw a street")
    out_root = Path(out_root)
    size = (int(image_size[0]), int(image_size[1]))
    image_dir = _prepare_image_dir(out_root, city)
    plans, n_arch = plan_city(city, n_places, views_per_place, seed, difficulty)
    jobs = [_RenderJob(p, image_dir, size) for p in plans]
    bar = tqdm(total=n_places, desc=f"SynthCities {city}", unit="place", disable=not progress)
    rendered: list[_RenderedPlace] = []
    if workers == 1:
        for job in jobs:
            rendered.append(_render_place(job))
            bar.update()
    else:
        # spawn: safe next to threads (tqdm, ROS executors) that fork would copy mid-state.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for r in pool.map(_render_place, jobs, chunksize=8):
                rendered.append(r)
                bar.update()
    bar.close()

    csv_rel = f"Dataframes/{city}.csv"
    ann_rel = f"Annotations/{city}.jsonl"
    csv_path = out_root / csv_rel
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(gsv.CSV_COLUMNS)
        for p in plans:
            for img in p.images:
                writer.writerow(img.csv_row())
    write_annotations(
        out_root / ann_rel,
        (_annotation(city, p, r, size) for p, r in zip(plans, rendered, strict=True)),
    )
    manifest = CityManifest(
        city=city,
        n_places=n_places,
        n_images=sum(len(p.images) for p in plans),
        views_per_place=views_per_place,
        seed=seed,
        difficulty=difficulty,
        image_size=size,
        n_archetypes=n_arch,
        csv=csv_rel,
        annotations=ann_rel,
        images_dir=f"Images/{city}",
    )
    mpath = manifest_path(out_root, city)
    mpath.parent.mkdir(parents=True, exist_ok=True)
    mpath.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return manifest
