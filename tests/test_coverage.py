"""The unseen rates the answer model ships (`evaluation/coverage.py`), on hand-made places."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dlgpr_core.data.annotations import Element, PlaceAnnotation, Region, ViewAnnotation
from dlgpr_core.evaluation.coverage import main, unseen_rates


def _place(pid: int, elements: dict[str, str], shown: list[list[str]]) -> PlaceAnnotation:
    """A place with elements {id: category} and one view per list of element ids shown."""
    views = [
        ViewAnnotation(
            image=f"Images/Handton/{pid}_{i}.jpg",
            width=320,
            height=240,
            heading=90.0 * i,
            regions=[Region(bbox=[0, 0, 10, 10], phrase=e, element_id=e) for e in ids],
        )
        for i, ids in enumerate(shown)
    ]
    return PlaceAnnotation(
        city="Handton",
        place_id=pid,
        caption="A place.",
        description="A place.",
        elements=[Element(id=i, kind="furniture", category=c) for i, c in elements.items()]
        + [Element(id="s", kind="street", category="street")],
        views=views,
    )


def test_unseen_rate_by_hand() -> None:
    """Four places. Bench: shown at place 0; at places 1, 2 and 3 no view shows one and
    place 1 has one anyway -> 1/3. Mailbox: shown at 1, never elsewhere -> 0 (left out).
    Bank: shown at 0 and 2; places 1 and 3 show none, and place 3 has one behind every
    view -> 1/2. The street has no rate."""
    places = [
        _place(0, {"b": "bench", "k": "bank"}, [["b"], ["k"]]),
        _place(1, {"b": "bench", "m": "mailbox"}, [["m"], []]),
        _place(2, {"k": "bank"}, [["k"]]),
        _place(3, {"k": "bank"}, [[]]),
    ]
    assert unseen_rates(places) == {"bench": 0.333, "bank": 0.5}
    assert unseen_rates(places, min_rate=0.4) == {"bank": 0.5}


def test_a_city_without_annotations_is_named(tmp_path: Path) -> None:
    """`python -m dlgpr_core.evaluation.coverage` refuses a city it has no annotations for,
    naming the file it expected (a usage error, exit status 2); it writes nothing, so
    nothing can be lost."""
    with pytest.raises(typer.BadParameter) as err:
        main(tmp_path, ["Nowhere"])
    assert str(err.value) == (
        f"no annotations for Nowhere: expected {tmp_path / 'Annotations' / 'Nowhere.jsonl'}"
    )
    app = typer.Typer()
    app.command()(main)
    assert CliRunner().invoke(app, [str(tmp_path), "Nowhere"]).exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_a_map_records_its_own_coverage_and_the_robot_reads_it(tmp_path: Path) -> None:
    """The measured rates reach the robot through the map: the coverage command writes them
    (`--out`), `dlgpr map coverage --rates` records them, `map info` shows them, and the
    answer model of the map's evidence (which the questioner and the update build) uses
    them: P(there) of a bench seen with p = 0.5 is 0.5 + 0.5 * 1/3 by hand. `--none` (a
    360-degree map) makes it 0.5; `--shipped` brings back `UNSEEN_RATES`. A bad rates file
    is refused naming the entry or the file (exit status 2), and the recorded rates stay."""
    from dlgpr_core.cli.map_commands import app as map_app
    from dlgpr_core.data.annotations import write_annotations
    from dlgpr_core.dialogue.answer_model import UNSEEN_RATES, AnswerModel
    from dlgpr_core.dialogue.evidence_update import EvidenceUpdate
    from dlgpr_core.dialogue.questioners import InfoGainQuestioner
    from dlgpr_core.evidence.knowledge import EvidenceSource
    from dlgpr_core.mapdb.database import MapDatabase

    data = tmp_path / "data"
    (data / "Annotations").mkdir(parents=True)
    write_annotations(
        data / "Annotations" / "Handton.jsonl",
        [
            _place(0, {"b": "bench"}, [["b"]]),
            _place(1, {"b": "bench"}, [[]]),
            _place(2, {"k": "bank"}, [["k"]]),
            _place(3, {"k": "bank"}, [["k"]]),
        ],
    )
    rates = tmp_path / "rates.json"
    main(data, ["Handton"], out=rates)
    map_dir = tmp_path / "map"
    MapDatabase.create(map_dir, "test-encoder", 4).close()  # no images: the setting only

    def run(*args: str) -> tuple[int, str]:
        got = CliRunner().invoke(map_app, ["coverage", "--map", str(map_dir), *args])
        return got.exit_code, got.output

    def bench(expected: float) -> None:
        db = MapDatabase.open(map_dir)
        source = EvidenceSource.of_map(db.evidence, "learned")
        for model in (
            AnswerModel.for_evidence(source),
            InfoGainQuestioner(source).model,
            EvidenceUpdate(source).model,
        ):
            assert model.there("bench", 0.5) == pytest.approx(expected)
        db.close()

    code, out = run()
    assert code == 0 and "the shipped unseen rates" in out
    bench(0.5 + 0.5 * UNSEEN_RATES["bench"])
    code, out = run("--rates", str(rates))
    assert code == 0 and "the map's own unseen rates: bench 0.333" in out
    bench(0.5 + 0.5 * 0.333)
    bad = tmp_path / "bad.json"
    bad.write_text('{"bench": 1.5}', encoding="utf-8")
    code, out = run("--rates", str(bad))
    assert code == 2 and "'bench' has 1.5, outside [0, 1)" in out
    bad.write_text('{"bench": 0.1', encoding="utf-8")
    code, out = run("--rates", str(bad))
    assert code == 2 and "bad.json" in out
    bench(0.5 + 0.5 * 0.333)  # nothing recorded was lost
    assert run("--none", "--shipped")[0] == 2
    assert run("--none")[0] == 0
    bench(0.5)
    assert "no unseen rates" in MapDatabase.open(map_dir).info().render()
    assert run("--shipped")[0] == 0
    bench(0.5 + 0.5 * UNSEEN_RATES["bench"])


def test_bad_rates_through_the_api_lose_nothing_recorded(tmp_path: Path) -> None:
    """`MapDatabase.set_unseen_rates` with a bad mapping raises naming the entry and leaves
    the map's recorded rates in place (it used to delete them in a transaction the error
    left open); a later setting is then recorded and survives reopening."""
    from dlgpr_core.mapdb.database import MapDatabase

    db = MapDatabase.create(tmp_path / "map", "test-encoder", 4)
    db.set_unseen_rates({"bench": 0.25})
    for bad, words in (({"bench": 1.5}, "outside [0, 1)"), ({"": 0.1}, "not a category name")):
        with pytest.raises(ValueError, match=re.escape(words)):
            db.set_unseen_rates(bad)
        assert db.evidence.unseen_rates() == {"bench": 0.25}
    db.set_unseen_rates({"bench": 0.5})  # no transaction left open by the refusals
    db.close()
    assert MapDatabase.open(tmp_path / "map").evidence.unseen_rates() == {"bench": 0.5}
