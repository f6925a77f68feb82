"""Evidence annotators behind the `ImageAnnotator` protocol: teacher, zero-shot, OCR.

What is and is not checked:
- the teacher over HTTP talks to a real server on 127.0.0.1 speaking the OpenAI
  chat-completions format, so requests really go through httpx, headers, JSON, retries;
- the tiny Qwen2.5-VL teacher has RANDOM weights: its descriptions are noise, so only the
  plumbing (loading by path, batching, failure reporting) is checked, never what it says;
- noun phrases are checked against the facts a SynthCities place was generated from;
- zero-shot scoring uses the real dlgpr-lite encoder, but its checks are sanity checks of
  the arithmetic and bookkeeping, not claims about evidence quality;
- OCR reads large rendered text (skipped, with the reason, where tesseract is missing).
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from test_mapdb import HistogramEncoder

from dlgpr_core.data.gsv import scan_gsv_cities
from dlgpr_core.data.records import namespaced_place_id
from dlgpr_core.encoders.base import Encoder
from dlgpr_core.evidence.knowledge import PlaceEvidence
from dlgpr_core.evidence.noun_phrases import (
    DESCRIPTION_ATTRIBUTE,
    extract_noun_phrases,
    phrases_to_evidence,
)
from dlgpr_core.evidence.ocr import OcrAnnotator, create_ocr_annotator, find_tesseract
from dlgpr_core.evidence.slots import PRESENCE, slots
from dlgpr_core.evidence.teacher import (
    OpenAITeacherBackend,
    TeacherError,
    TransformersTeacherBackend,
    create_teacher_annotator,
)
from dlgpr_core.evidence.zero_shot import (
    Calibration,
    Vocabulary,
    ZeroShotAnnotator,
    calibrate,
    create_zero_shot_annotator,
)
from dlgpr_core.mapdb import MapDatabase
from dlgpr_core.mapdb.evidence import EvidenceItem
from dlgpr_core.synth import generate_city

CITY = "Evidton"


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_city(root, CITY, 3, views_per_place=2, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def places(city: Path) -> list[dict[str, Any]]:
    """The generator's ground truth, read here only to check annotators against it."""
    lines = (city / "Annotations" / f"{CITY}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def images(city: Path, places: list[dict[str, Any]]) -> list[Image.Image]:
    """The first view of each place."""
    return [Image.open(city / p["views"][0]["image"]).convert("RGB") for p in places]


@pytest.fixture
def tiny_map(tmp_path: Path, city: Path) -> MapDatabase:
    enc = HistogramEncoder()  # the map's own encoder does not matter to these annotators
    db = MapDatabase.create(tmp_path / "map", enc.fingerprint, enc.dim)
    db.build(scan_gsv_cities(city, [CITY]), enc, progress=False)
    return db


def facts(place: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(category, attribute, value) of every element of a place that the ontology knows."""
    out: set[tuple[str, str, str]] = set()
    for e in place["elements"]:
        c = e["category"]
        if c != "street":
            out.add((c, PRESENCE, c))
        out |= {(c, a, v) for a, v in e["attributes"].items() if a in slots()[c].attributes}
    return out


def slots_of(items: list[EvidenceItem]) -> set[tuple[str, str, str]]:
    return {(it.category, it.attribute, it.value) for it in items if it.category}


# -- noun phrases -------------------------------------------------------------------------------
def test_noun_phrases_of_a_synthcities_description(places: list[dict[str, Any]]) -> None:
    for place in places:
        (phrases,) = extract_noun_phrases([place["description"]])
        items = phrases_to_evidence(phrases, confidence=0.7)
        got = slots_of(items)
        # every slot read from the text is a fact of the place: nothing is guessed
        assert got <= facts(place), got - facts(place)
        for e in place["elements"]:
            if e["kind"] != "building":
                continue
            c, attrs = e["category"], e["attributes"]
            # the generator always writes a building's category, colour, material, floors
            for attribute in ("colour", "material", "floors"):
                assert (c, attribute, attrs[attribute]) in got, (c, attribute)
            assert (c, PRESENCE, c) in got
            # greedy expansion: the building's own phrase carries its description
            # ("a two-storey green wood hardware store", "a bank in a two-storey building
            # with a grey stone facade and no awnings")
            own = [p.text for p in phrases if p.category == c and attrs["colour"] in p.text]
            assert own and max(len(t.split()) for t in own) >= 4, (c, own)
        assert all(0.0 < it.confidence <= 1.0 for it in items)
        assert all(it.confidence == 0.7 for it in items)


def test_noun_phrase_expansion_and_slots_on_known_sentences() -> None:
    text = (
        "The red brick bank with green awnings stands next to an old phone booth. "
        "Its yellow front door sits under a flat roof. "
        "A tall plane tree grows in front of the bank, and a car is parked beside it. "
        "There is a cafe called Cafe Aroma with blue awnings and a lamp post beside it."
    )
    (phrases,) = extract_noun_phrases([text])
    by_text = {p.text: set(p.slots) for p in phrases}
    assert by_text["The red brick bank with green awnings next to an old phone booth"] >= {
        ("bank", PRESENCE, "bank"),
        ("bank", "colour", "red"),
        ("bank", "material", "brick"),
        ("bank", "awning", "green"),
    }
    assert by_text["an old phone booth"] == {("phone booth", PRESENCE, "phone booth")}
    # a part outside the building's phrase belongs to the building named last
    assert by_text["Its yellow front door"] == {("bank", "door", "yellow")}
    assert by_text["a flat roof"] == {("bank", "roof", "flat")}
    assert by_text["A tall plane tree in front of the bank"] >= {
        ("tree", "species", "plane tree"),
        ("tree", "size", "tall"),
    }
    assert ("cafe", "name", "Cafe Aroma") in by_text[
        "a cafe called Cafe Aroma with blue awnings and a lamp post beside it"
    ]
    # a thing inside another's phrase is still evidence of its own; transients are not
    assert ("lamp post", PRESENCE, "lamp post") in {s for p in phrases for s in p.slots}
    assert not any("car" in p.text.split() for p in phrases)


# -- teacher over an OpenAI-compatible server ---------------------------------------------------
class ChatServer:
    """A scripted chat-completions server: each request takes the next reply of the script
    (``("ok", text)``, ``("status", code)``, ``("no-choices",)``, ``("empty",)``); an
    exhausted script answers with `default`."""

    def __init__(self, default: str) -> None:
        self.default = default
        self.script: list[tuple[Any, ...]] = []
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    step = server.script.pop(0) if server.script else ("ok", server.default)
                status, payload = 200, dict[str, Any]()
                if step[0] == "ok":
                    payload = {"choices": [{"message": {"role": "assistant", "content": step[1]}}]}
                elif step[0] == "status":
                    status, payload = step[1], {"error": {"message": f"scripted {step[1]}"}}
                elif step[0] == "no-choices":
                    payload = {"choices": []}
                elif step[0] == "empty":
                    payload = {"choices": [{"message": {"role": "assistant", "content": ""}}]}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(places: list[dict[str, Any]]) -> Iterator[ChatServer]:
    s = ChatServer(places[0]["description"])
    yield s
    s.close()


def openai_teacher(server: ChatServer, sleeps: list[float], **options: Any) -> Any:
    options.setdefault("concurrency", 1)
    return create_teacher_annotator(
        f"openai:gpt-4o@{server.url}", backoff=0.01, sleep=sleeps.append, **options
    )


def test_teacher_over_http_gives_noun_phrase_evidence(
    server: ChatServer,
    images: list[Image.Image],
    places: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    sleeps: list[float] = []
    teacher = openai_teacher(server, sleeps, confidence=0.75, concurrency=2)
    assert teacher.name == "teacher" and teacher.version.startswith("openai:gpt-4o@")
    (items, _) = teacher.annotate(images[:2])
    assert len(server.requests) == 2 and not sleeps
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test-123"
    body = request["body"]
    assert body["model"] == "gpt-4o" and body["temperature"] == 0.0
    (message,) = body["messages"]
    text_part, image_part = message["content"]
    assert "static" in text_part["text"] and "Never mention cars" in text_part["text"]
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.format == "JPEG" and sent.size == images[0].size
    # the canned reply is place 0's description: its facts come back as slots
    description = [it for it in items if it.attribute == DESCRIPTION_ATTRIBUTE]
    assert [d.phrase for d in description] == [places[0]["description"]]
    assert description[0].category == ""
    got = slots_of(items)
    assert got and got <= facts(places[0])
    buildings = [e for e in places[0]["elements"] if e["kind"] == "building"]
    assert {(e["category"], PRESENCE, e["category"]) for e in buildings} <= got
    assert all(it.confidence == 0.75 for it in items)
    assert teacher.stats.described == 2 and teacher.stats.failed == 0
    # a different prompt is a different version (the map re-annotates)
    other = openai_teacher(server, sleeps, prompt="Describe the buildings.")
    assert other.version != teacher.version


def test_teacher_retries_rate_limits_and_malformed_replies(
    server: ChatServer, images: list[Image.Image], caplog: pytest.LogCaptureFixture
) -> None:
    sleeps: list[float] = []
    teacher = openai_teacher(server, sleeps, max_reply_retries=2)
    server.script = [("status", 429), ("ok", server.default)]
    (items,) = teacher.annotate(images[:1])
    assert items and len(server.requests) == 2
    assert teacher.stats.http_retries == 1 and len(sleeps) == 1
    # image 1 always gets a malformed reply: retried, then reported and left without evidence;
    # image 2 is fine
    server.requests.clear()
    server.script = [("no-choices",), ("empty",), ("ok", "Sure!")]
    with caplog.at_level("WARNING"):
        bad, good = teacher.annotate(images[:2])
    assert bad == [] and good
    assert len(server.requests) == 4  # three tries for image 1, one for image 2
    assert teacher.stats.malformed == 3 and teacher.stats.failed == 1
    (failure,) = teacher.failures
    assert failure.image_number == 1 and failure.size == images[0].size
    assert "malformed" in failure.reason and "Sure!" in failure.reason
    assert "gets no evidence" in caplog.text and "retry" in caplog.text
    assert "1 failed" in teacher.report() and "image 1" in teacher.report()


def test_teacher_refusals_stop_the_batch(server: ChatServer, images: list[Image.Image]) -> None:
    sleeps: list[float] = []
    teacher = openai_teacher(server, sleeps)
    server.script = [("status", 401), ("status", 401)]
    with pytest.raises(TeacherError, match="401"):
        teacher.annotate(images[:2])
    assert not sleeps  # a refusal is not retried
    strict = openai_teacher(server, sleeps, strict=True, max_reply_retries=0)
    server.script = [("empty",)]
    with pytest.raises(TeacherError, match="nothing of the batch is stored"):
        strict.annotate(images[:2])


def test_teacher_through_the_map(
    server: ChatServer, tiny_map: MapDatabase, places: list[dict[str, Any]]
) -> None:
    teacher = openai_teacher(server, [], concurrency=2)
    report = tiny_map.annotate(teacher, batch_size=4, progress=False)
    assert report.annotated == 6 and report.items > 0 and not report.unreadable
    ids = [namespaced_place_id(CITY, p["place_id"]) for p in places]
    evidence = tiny_map.evidence.for_places("teacher", ids)
    assert len(evidence) == 3
    place = PlaceEvidence.from_images(evidence[ids[0]])
    building = next(e for e in places[0]["elements"] if e["kind"] == "building")
    assert place.p(building["category"]) == pytest.approx(0.8)
    assert tiny_map.annotate(teacher, progress=False).annotated == 0  # done at this version


def test_teacher_spec_strings() -> None:
    with pytest.raises(ValueError, match="teacher:openai"):
        create_teacher_annotator("")
    t = create_teacher_annotator("openai:gpt-4o")
    assert isinstance(t.backend, OpenAITeacherBackend)
    assert t.backend.name == "openai:gpt-4o@https://api.openai.com/v1/chat/completions"
    local = create_teacher_annotator("/models/qwen-vl", device="cpu", confidence=0.6)
    assert isinstance(local.backend, TransformersTeacherBackend)
    assert local.backend.name == "/models/qwen-vl" and local.confidence == 0.6


# -- teacher with a tiny random-weight VLM ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Path:
    from dlgpr_core.llm.tiny import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_vlm") / "qwen2_5_vl")


def test_teacher_with_a_tiny_local_vlm(tiny_vlm: Path, images: list[Image.Image]) -> None:
    """Random weights: what it writes is noise; only the plumbing is checked."""
    teacher = create_teacher_annotator(
        str(tiny_vlm), device="cpu", batch_size=2, max_new_tokens=12, min_words=1
    )
    out = teacher.annotate(images[:3])
    assert len(out) == 3
    s = teacher.stats
    assert s.images == 3 and s.described + s.failed == 3
    assert len(teacher.failures) == s.failed
    for items, _ in zip(out, images, strict=True):
        assert all(isinstance(it, EvidenceItem) for it in items)
    described = [items for items in out if items]
    assert all(items[-1].attribute == DESCRIPTION_ATTRIBUTE for items in described)


# -- zero-shot ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite() -> Encoder:
    from dlgpr_core.encoders.factory import create_encoder

    return create_encoder("dlgpr-lite", device="cpu")


def test_zero_shot_default_vocabulary_with_dlgpr_lite(
    lite: Encoder, images: list[Image.Image], places: list[dict[str, Any]]
) -> None:
    ann = create_zero_shot_annotator(encoder=lite)
    assert ann.name == "zero-shot" and ann.version.startswith(lite.fingerprint)
    out = ann.annotate(images[:2])
    assert len(out) == 2
    known = slots()
    for items in out:
        assert items
        for it in items:
            assert 0.0 <= it.confidence <= 1.0
            assert it.category in known
            if it.attribute != PRESENCE:
                assert it.value in known[it.category].attributes[it.attribute]
        # attribute items of one slot are one distribution (the likeliest values of it)
        totals: dict[tuple[str, str], float] = {}
        for it in items:
            if it.attribute != PRESENCE:
                key = (it.category, it.attribute)
                totals[key] = totals.get(key, 0.0) + it.confidence
        assert totals and all(t <= 1.0 + 1e-6 for t in totals.values())
        assert ("street", "width") in totals  # the street is always scored
    # sanity, not quality: the scores are the encoder's own similarities, so an image's most
    # likely awning value for the bank is the one its embedding is closest to
    scores = ann.scores(images[:1])
    group = ann.vocabulary.groups()[("bank", "awning")]
    best = ann.vocabulary.phrases[group[int(np.argmax(scores.similarity[0, group]))]]
    bank_awning = [it for it in out[0] if (it.category, it.attribute) == ("bank", "awning")]
    if bank_awning:  # emitted only when the bank is deemed likely enough
        assert max(bank_awning, key=lambda it: it.confidence).value == best.value
    # deterministic (the same batch: batch size may move the last float bits), and a new
    # calibration is a new version
    assert ann.annotate(images[:2]) == out
    recal = ZeroShotAnnotator(lite, ann.vocabulary, Calibration(scale=9.0))
    assert recal.version != ann.version


def test_zero_shot_calibration_fits(lite: Encoder, images: list[Image.Image]) -> None:
    yaml_vocab = Vocabulary.from_mapping(
        {
            "phrases": [{"phrase": c, "category": c} for c in ("bank", "cafe", "tree", "fountain")]
            + [
                {"phrase": f"a {v} tree", "category": "tree", "attribute": "size", "value": v}
                for v in ("small", "tall")
            ]
        }
    )
    ann = ZeroShotAnnotator(lite, yaml_vocab)
    visible = [{"bank", "tree"}, {"cafe"}, {"tree", "fountain"}]
    attributes = [{("tree", "size"): "tall"}, {}, {("tree", "size"): "small"}]
    cal = calibrate(ann, images, visible, attributes)
    assert np.isfinite([cal.scale, cal.bias, cal.attribute_scale]).all()
    assert cal.attribute_scale > 0

    # a check of the fit, not of the encoder: on the images it was fitted on, the fitted
    # calibration explains the labels at least as well as the default one
    def log_loss(c: Calibration) -> float:
        a = ZeroShotAnnotator(lite, yaml_vocab, c, min_confidence=0.0)
        loss = 0.0
        for items, seen in zip(a.annotate(images), visible, strict=True):
            for it in items:
                if it.attribute == PRESENCE:
                    p = min(max(it.confidence, 1e-9), 1 - 1e-9)
                    loss -= np.log(p if it.category in seen else 1 - p)
        return loss

    assert log_loss(cal) <= log_loss(Calibration()) + 1e-6
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again == cal


def test_zero_shot_vocabulary_files(tmp_path: Path, lite: Encoder) -> None:
    path = tmp_path / "vocab.yaml"
    path.write_text(
        "reference: a street\n"
        "calibration: {scale: 7, bias: -1}\n"
        "phrases:\n"
        "  - a red phone booth\n"
        "  - {phrase: a bank, category: bank}\n"
        "  - {phrase: a bank with green awnings, category: bank, attribute: awning, value: green}\n"
        "  - {phrase: a bank with red awnings, category: bank, attribute: awning, value: red}\n"
    )
    ann = create_zero_shot_annotator(str(path), encoder=lite)
    assert [p.attribute for p in ann.vocabulary.phrases] == ["", PRESENCE, "awning", "awning"]
    assert ann.calibration.scale == 7.0 and ann.calibration.bias == -1.0
    txt = tmp_path / "phrases.txt"
    txt.write_text("# noun phrases of teacher descriptions\nthe red brick bank\ngreen awnings\n")
    plain = create_zero_shot_annotator(str(txt), encoder=lite)
    assert [p.text for p in plain.vocabulary.phrases] == ["the red brick bank", "green awnings"]
    assert all(not p.category for p in plain.vocabulary.phrases)
    with pytest.raises(ValueError, match="only one value"):
        Vocabulary.from_mapping(
            {"phrases": [{"phrase": "x", "category": "bank", "attribute": "roof", "value": "flat"}]}
        )
    with pytest.raises(FileNotFoundError):
        create_zero_shot_annotator(str(tmp_path / "missing.yaml"), encoder=lite)


def test_zero_shot_through_the_map(tiny_map: MapDatabase, lite: Encoder) -> None:
    vocab = Vocabulary.from_phrases(["a bank", "a tree", "a red phone booth"])
    ann = ZeroShotAnnotator(lite, vocab, min_confidence=0.0)
    report = tiny_map.annotate(ann, batch_size=4, progress=False)
    assert report.annotated == 6 and report.items == 6 * 3
    (run,) = tiny_map.evidence.runs()
    assert run.annotator == "zero-shot" and run.versions == {ann.version: 6}


# -- OCR ----------------------------------------------------------------------------------------
needs_tesseract = pytest.mark.skipif(
    find_tesseract() is None,
    reason="tesseract is not installed (apt-get install tesseract-ocr tesseract-ocr-eng)",
)


def sign(text: str) -> Image.Image:
    img = Image.new("RGB", (720, 200), (236, 224, 192))
    font = ImageFont.load_default(size=72)
    ImageDraw.Draw(img).text((30, 50), text, fill=(30, 30, 34), font=font)
    return img


@needs_tesseract
def test_ocr_reads_large_text() -> None:
    ocr = create_ocr_annotator("", upscale=1.0)
    assert ocr.name == "ocr" and "tesseract" in ocr.version
    (items,) = ocr.annotate([sign("GOLDEN CRUST")])
    (item,) = items
    assert item.value == "GOLDEN CRUST" and item.phrase == 'a sign that reads "GOLDEN CRUST"'
    assert (item.attribute, item.category) == ("name", "")
    assert 0.6 <= item.confidence <= 1.0
    assert item.bbox is not None and 0 <= item.bbox[0] < item.bbox[2] <= 720
    # upscaling changes nothing but the size tesseract sees: boxes stay in image pixels
    (big,) = OcrAnnotator(upscale=2.0).annotate([sign("GOLDEN CRUST")])
    assert big and big[0].bbox is not None and big[0].bbox[2] <= 720
    assert OcrAnnotator(upscale=2.0).version != ocr.version
    with pytest.raises(ValueError, match="languages"):
        OcrAnnotator("eng; rm -rf /")


@needs_tesseract
def test_ocr_through_the_map(tiny_map: MapDatabase) -> None:
    # 320x240 SynthCities views: tesseract reads little or nothing; the map records the
    # images as done either way
    report = tiny_map.annotate(create_ocr_annotator(), batch_size=4, progress=False)
    assert report.annotated == 6
    (run,) = tiny_map.evidence.runs()
    assert run.annotator == "ocr" and run.images == 6
