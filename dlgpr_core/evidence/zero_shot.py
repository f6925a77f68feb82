"""Zero-shot evidence: the map's own image-text encoder scores each image against phrases.

Any `dlgpr_core.encoders.base.Encoder` (dlgpr-lite, an open_clip CLIP a user brings, a CMPL
checkpoint) embeds images and texts in one space, so it can say how well "a bank with green
awnings" fits an image without any training for the task. That makes evidence for maps of
real images, with no annotations and no teacher, from the very encoder the map was built with.

How similarities become the confidences of `EvidenceItem`:

- presence (and phrases without a slot): P = sigmoid(scale * (s(image, phrase) -
  s(image, reference)) + bias + category_bias[category]). The reference prompt ("a street")
  removes what every phrase shares with a street view, so the score is how much *more* the
  phrase fits than a generic street; cosine similarities are not probabilities, hence the
  logistic, whose parameters (`Calibration`) are fitted on a validation city with
  `calibrate` (labels come from that city's annotations, in evaluation or training code;
  the annotator itself never reads any);
- attributes: P(value | category visible) = softmax over the values of one slot
  (attribute_scale * similarity), e.g. every awning colour of a bank, so the distribution
  compares like with like.

Vocabularies (`Vocabulary`): by default prompts generated from the ontology
(`dlgpr_core.evidence.slots`, worded by `dlgpr_core.evidence.phrases`): one presence prompt
per category ("a bank") and one per value of each attribute ("a bank with green awnings");
or a user's YAML file of phrases, optionally with slots; or a plain list of phrases (the noun
phrases of teacher descriptions, a text file with one per line).

Spec strings (``create_zero_shot_annotator(arg)`` gets what follows ``zero-shot:``):
``zero-shot`` (the ontology's prompts), ``zero-shot:<vocabulary.yaml>``,
``zero-shot:<phrases.txt>``. Keyword options: ``encoder`` (an Encoder; normally the map's
own), ``encoder_spec`` (built with `create_encoder`; default dlgpr-lite; the annotator is
then named ``zero-shot:<spec>`` so two encoders' evidence stays apart), ``calibration`` (a
`Calibration`, a dict or a JSON/YAML file), ``min_confidence``, ``max_values``, ``name``.

YAML vocabulary format::

    template: "{}"            # optional; how a phrase is put to the encoder
    reference: "a street"     # optional
    calibration: {scale: 5, bias: -1.5, attribute_scale: 5}   # optional
    phrases:
      - a red phone booth                       # no slot: P(it holds for the image)
      - {phrase: a bank, category: bank}        # presence of a category
      - {phrase: a bank with green awnings, category: bank, attribute: awning, value: green}
      - {phrase: a bank with red awnings, category: bank, attribute: awning, value: red}

Measured honestly (2026-12, dlgpr-lite, 24 SynthCities views): presence scores barely
separate present from absent categories (ROC AUC about 0.55) and the best-scoring value of
a building's colour, material, awning or floors is right 44% of the time; dlgpr-lite was
trained on whole descriptions, not on single phrases. Calibrate before trusting it, and
expect far more from a real CLIP.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dlgpr_core.encoders.base import Encoder
from dlgpr_core.evidence.phrases import slot_phrase
from dlgpr_core.evidence.slots import PRESENCE, STREET, categories, slots
from dlgpr_core.mapdb.evidence import EvidenceItem

log = logging.getLogger(__name__)

NAME = "zero-shot"
DEFAULT_ENCODER = "dlgpr-lite"


@dataclass(frozen=True)
class Phrase:
    """One prompt and the slot it stands for (none, presence or one attribute value)."""

    text: str
    category: str = ""
    attribute: str = ""
    """"" (no slot), ``"category"`` (presence) or an attribute of the category."""
    value: str = ""

    @property
    def is_attribute(self) -> bool:
        return bool(self.category and self.attribute and self.attribute != PRESENCE)


@dataclass(frozen=True)
class Vocabulary:
    """The phrases an image is scored against; attribute phrases form groups per slot."""

    phrases: tuple[Phrase, ...]
    template: str = "{}"
    reference: str = "a street"

    def __post_init__(self) -> None:
        if not self.phrases:
            raise ValueError("a vocabulary needs at least one phrase")
        if "{}" not in self.template:
            raise ValueError(f"template {self.template!r} has no '{{}}' for the phrase")
        for key, members in self.groups().items():
            if len(members) < 2:
                raise ValueError(
                    f"attribute {key[1]!r} of {key[0]!r} has only one value; a distribution "
                    "over values needs at least two (or give the phrase without the slot)"
                )
        known = slots()
        for p in self.phrases:
            slot = known.get(p.category)
            if p.category and (
                slot is None
                or (p.is_attribute and p.value not in slot.attributes.get(p.attribute, ()))
            ):
                log.info("zero-shot phrase %r has a slot outside the ontology", p.text)

    @classmethod
    def default(cls) -> Vocabulary:
        """Presence prompts per category and one prompt per value of every attribute."""
        out: list[Phrase] = []
        for category in categories():
            out.append(Phrase(slot_phrase(category, PRESENCE, ""), category, PRESENCE, category))
        for category, slot in slots().items():
            for attribute, values in slot.attributes.items():
                if len(values) < 2:
                    continue
                out += [
                    Phrase(slot_phrase(category, attribute, v), category, attribute, v)
                    for v in values
                ]
        return cls(tuple(out))

    @classmethod
    def from_phrases(cls, phrases: Sequence[str], **kwargs: Any) -> Vocabulary:
        """Plain phrases without slots (e.g. the noun phrases of teacher descriptions)."""
        unique = list(dict.fromkeys(p.strip() for p in phrases if p.strip()))
        return cls(tuple(Phrase(p) for p in unique), **kwargs)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Vocabulary:
        """The YAML format of the module docstring, already parsed."""
        entries = data.get("phrases")
        if not isinstance(entries, list) or not entries:
            raise ValueError("a vocabulary file needs a non-empty 'phrases' list")
        out: list[Phrase] = []
        for n, entry in enumerate(entries):
            if isinstance(entry, str):
                out.append(Phrase(entry.strip()))
                continue
            if not isinstance(entry, dict) or not str(entry.get("phrase", "")).strip():
                raise ValueError(f"phrase {n}: expected a string or a mapping with 'phrase'")
            category = str(entry.get("category", "") or "")
            attribute = str(entry.get("attribute", "") or "")
            value = str(entry.get("value", "") or "")
            if (attribute or value) and not category:
                raise ValueError(f"phrase {n} ({entry['phrase']!r}): an attribute needs a category")
            if category and not attribute:
                attribute, value = PRESENCE, category
            if attribute and attribute != PRESENCE and not value:
                raise ValueError(f"phrase {n} ({entry['phrase']!r}): attribute without a value")
            out.append(Phrase(str(entry["phrase"]).strip(), category, attribute, value))
        kwargs = {k: str(data[k]) for k in ("template", "reference") if data.get(k)}
        return cls(tuple(out), **kwargs)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """A YAML vocabulary (``.yaml``/``.yml``) or a text file of phrases, one a line."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a mapping with a 'phrases' list")
            return cls.from_mapping(data)
        lines = path.read_text(encoding="utf-8").splitlines()
        return cls.from_phrases([ln for ln in lines if not ln.lstrip().startswith("#")])

    def groups(self) -> dict[tuple[str, str], list[int]]:
        """(category, attribute) -> indices of its value phrases."""
        out: dict[tuple[str, str], list[int]] = {}
        for i, p in enumerate(self.phrases):
            if p.is_attribute:
                out.setdefault((p.category, p.attribute), []).append(i)
        return out

    def scored(self) -> list[int]:
        """Indices of the phrases scored by the logistic (presence and slotless)."""
        return [i for i, p in enumerate(self.phrases) if not p.is_attribute]

    def digest(self) -> str:
        payload = [self.template, self.reference, [asdict(p) for p in self.phrases]]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


@dataclass(frozen=True)
class Calibration:
    """How similarities become probabilities (see the module docstring)."""

    scale: float = 5.0
    bias: float = -1.5
    """sigmoid(-1.5) = 0.18 where a phrase fits no better than the reference: a prior of
    roughly one category in five visible, until `calibrate` fits the real one."""
    attribute_scale: float = 5.0
    """Deliberately soft defaults (both scales): uncalibrated scores should not claim
    certainty. A real CLIP calibrated on a validation city usually wants far larger ones
    (its own logit scale is 100); dlgpr-lite fitted on 24 SynthCities views gave 0.3 and 3.4,
    i.e. its presence scores carry almost no information."""
    category_bias: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": float(self.scale),
            "bias": float(self.bias),
            "attribute_scale": float(self.attribute_scale),
            "category_bias": {k: float(v) for k, v in sorted(self.category_bias.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        unknown = set(data) - {"scale", "bias", "attribute_scale", "category_bias"}
        if unknown:
            raise ValueError(f"unknown calibration keys {sorted(unknown)}")
        base = cls()
        return cls(
            float(data.get("scale", base.scale)),
            float(data.get("bias", base.bias)),
            float(data.get("attribute_scale", base.attribute_scale)),
            {str(k): float(v) for k, v in dict(data.get("category_bias") or {}).items()},
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        path = Path(path).expanduser()
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of calibration parameters")
        return cls.from_dict(data)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


@dataclass
class Scores:
    """Raw scores of a batch of images, before thresholds (what `calibrate` fits on)."""

    delta: np.ndarray
    """(images, len(vocabulary.scored())): s(image, phrase) - s(image, reference)."""
    similarity: np.ndarray
    """(images, len(vocabulary.phrases)): cosine similarities."""


class ZeroShotAnnotator:
    """`ImageAnnotator` scoring images against a `Vocabulary` with an `Encoder`."""

    def __init__(
        self,
        encoder: Encoder,
        vocabulary: Vocabulary | None = None,
        calibration: Calibration | None = None,
        *,
        min_confidence: float = 0.05,
        max_values: int = 3,
        min_value_confidence: float = 0.05,
        name: str = NAME,
    ) -> None:
        if not 0.0 <= min_confidence <= 1.0 or not 0.0 <= min_value_confidence <= 1.0:
            raise ValueError("confidence thresholds must be in [0, 1]")
        if max_values < 1:
            raise ValueError(f"max_values must be >= 1, got {max_values}")
        self.encoder = encoder
        self.vocabulary = vocabulary or Vocabulary.default()
        self.calibration = calibration or Calibration()
        self.min_confidence = min_confidence
        self.max_values = max_values
        self.min_value_confidence = min_value_confidence
        self.name = name
        self._text: np.ndarray | None = None
        self._reference: np.ndarray | None = None

    @property
    def version(self) -> str:
        """Encoder fingerprint + a hash of vocabulary, calibration and thresholds."""
        settings = [
            self.encoder.fingerprint,
            self.vocabulary.digest(),
            self.calibration.to_dict(),
            self.min_confidence,
            self.max_values,
            self.min_value_confidence,
        ]
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        return f"{self.encoder.fingerprint}#{digest[:12]}"

    def _texts(self) -> tuple[np.ndarray, np.ndarray]:
        """Phrase and reference embeddings, computed once (the vocabulary is fixed)."""
        if self._text is None or self._reference is None:
            v = self.vocabulary
            texts = [v.template.format(p.text) for p in v.phrases]
            self._text = np.asarray(self.encoder.encode_texts(texts), dtype=np.float32)
            ref = self.encoder.encode_texts([v.template.format(v.reference)])
            self._reference = np.asarray(ref, dtype=np.float32)[0]
        return self._text, self._reference

    def scores(self, images: Sequence[Image.Image]) -> Scores:
        text, reference = self._texts()
        emb = np.asarray(self.encoder.encode_images(list(images)), dtype=np.float32)
        sim = emb @ text.T
        ref = emb @ reference
        delta = sim[:, self.vocabulary.scored()] - ref[:, None]
        return Scores(delta, sim)

    def items_from_scores(self, scores: Scores) -> list[list[EvidenceItem]]:
        v, cal = self.vocabulary, self.calibration
        scored = v.scored()
        groups = v.groups()
        out: list[list[EvidenceItem]] = []
        offsets = np.array([cal.category_bias.get(v.phrases[i].category, 0.0) for i in scored])
        probs = _sigmoid(cal.scale * scores.delta + cal.bias + offsets[None, :])
        for row in range(scores.delta.shape[0]):
            items: list[EvidenceItem] = []
            present: set[str] = set()
            for col, i in enumerate(scored):
                p = v.phrases[i]
                prob = float(probs[row, col])
                if prob < self.min_confidence:
                    continue
                if p.category:
                    present.add(p.category)
                items.append(EvidenceItem(p.text, prob, p.category, p.attribute, p.value))
            for (category, _), members in groups.items():
                if category != STREET and category not in present:
                    continue  # P(value | visible) of an invisible thing says nothing
                dist = _softmax(cal.attribute_scale * scores.similarity[row, members])
                order = np.argsort(-dist)[: self.max_values]
                for k in order:
                    q = float(dist[k])
                    if q < self.min_value_confidence and k != order[0]:
                        continue
                    p = v.phrases[members[k]]
                    items.append(EvidenceItem(p.text, q, p.category, p.attribute, p.value))
            out.append(items)
        return out

    def annotate(self, images: Sequence[Image.Image]) -> list[list[EvidenceItem]]:
        if not images:
            return []
        return self.items_from_scores(self.scores(images))


# -- calibration on a validation city ---------------------------------------------------------
def _fit_presence(
    delta: np.ndarray, labels: np.ndarray, cats: list[str], l2: float, per_category: bool
) -> tuple[float, float, dict[str, float]]:
    """Logistic regression logit = a * delta + b + d_category (L2 on the d's), by Newton."""
    names = sorted(set(cats)) if per_category else []
    index = {c: k for k, c in enumerate(names)}
    n = delta.size
    x = np.zeros((n, 2 + len(names)))
    x[:, 0] = delta
    x[:, 1] = 1.0
    for r, c in enumerate(cats):
        if c in index:
            x[r, 2 + index[c]] = 1.0
    penalty = np.zeros(x.shape[1])
    penalty[2:] = l2
    penalty[0] = 1e-6
    theta = np.zeros(x.shape[1])
    theta[0] = 1.0
    for _ in range(50):
        p = _sigmoid(x @ theta)
        grad = x.T @ (p - labels) + penalty * theta
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    bias = {c: float(theta[2 + k]) for c, k in index.items() if abs(theta[2 + k]) > 1e-9}
    return float(theta[0]), float(theta[1]), bias


def _fit_attribute_scale(pairs: list[tuple[np.ndarray, int]], start: float) -> float:
    """The softmax scale maximising the likelihood of the true values (concave in t)."""
    t = max(start, 1e-3)
    for _ in range(50):
        grad = hess = 0.0
        for sims, y in pairs:
            p = _softmax(t * sims)
            mean = float(p @ sims)
            grad += float(sims[y]) - mean
            hess -= float(p @ (sims - mean) ** 2)
        if hess >= -1e-12:
            break
        step = grad / hess
        t = float(np.clip(t - step, 1e-3, 1e4))
        if abs(step) < 1e-6 * max(1.0, t):
            break
    return t


def calibrate(
    annotator: ZeroShotAnnotator,
    images: Sequence[Image.Image],
    visible: Sequence[Collection[str]],
    attributes: Sequence[Mapping[tuple[str, str], str]] | None = None,
    *,
    per_category: bool = True,
    l2: float = 1.0,
    batch_size: int = 32,
) -> Calibration:
    """Fit the annotator's `Calibration` on labelled images of a validation city.

    `visible[i]` are the categories visible in image i (every presence phrase of another
    category is a negative); `attributes[i]` maps (category, attribute) to its true value
    for the things in image i. The labels come from a data set's annotations, so this runs
    in evaluation or training code; use the result as ``calibration=`` on a robot's map.
    With `per_category`, each category also gets a bias (pulled towards 0 by `l2`): the
    encoder's liking for some words over others is then not read as evidence. Phrases
    without a slot are not fitted (no labels) and keep the shared scale and bias.
    """
    if len(visible) != len(images) or (attributes is not None and len(attributes) != len(images)):
        raise ValueError("one label set per image is needed")
    v = annotator.vocabulary
    scored = v.scored()
    presence_cols = [c for c, i in enumerate(scored) if v.phrases[i].attribute == PRESENCE]
    if not presence_cols:
        raise ValueError("the vocabulary has no presence phrases to calibrate")
    deltas, sims = [], []
    for s in range(0, len(images), batch_size):
        sc = annotator.scores(images[s : s + batch_size])
        deltas.append(sc.delta)
        sims.append(sc.similarity)
    delta = np.concatenate(deltas)
    similarity = np.concatenate(sims)
    xs, ys, cats = [], [], []
    for row, seen in enumerate(visible):
        for col in presence_cols:
            category = v.phrases[scored[col]].category
            xs.append(delta[row, col])
            ys.append(1.0 if category in seen else 0.0)
            cats.append(category)
    y = np.asarray(ys)
    if y.min() == y.max():
        raise ValueError("calibration needs both visible and invisible categories")
    scale, bias, category_bias = _fit_presence(np.asarray(xs), y, cats, l2, per_category)
    attribute_scale = annotator.calibration.attribute_scale
    if attributes is not None:
        pairs: list[tuple[np.ndarray, int]] = []
        for (category, attribute), members in v.groups().items():
            values = [v.phrases[i].value for i in members]
            for row, truth in enumerate(attributes):
                value = truth.get((category, attribute))
                if value in values:
                    pairs.append((similarity[row, members], values.index(value)))
        if pairs:
            attribute_scale = _fit_attribute_scale(pairs, attribute_scale)
    if not math.isfinite(scale) or not math.isfinite(bias):
        raise ValueError("calibration did not converge (separable or degenerate labels?)")
    return Calibration(scale, bias, attribute_scale, category_bias)


def create_zero_shot_annotator(arg: str = "", **options: Any) -> ZeroShotAnnotator:
    """``""`` (the ontology's prompts) or a vocabulary file; see the module docstring."""
    encoder: Encoder | None = options.pop("encoder", None)
    encoder_spec: str | None = options.pop("encoder_spec", None)
    device: str | None = options.pop("device", None)
    calibration: Any = options.pop("calibration", None)
    vocabulary: Vocabulary | None = options.pop("vocabulary", None)
    arg = arg.strip()
    if arg:
        if vocabulary is not None:
            raise ValueError("give the vocabulary either in the spec or as an option")
        vocabulary = Vocabulary.load(arg)
        if calibration is None and Path(arg).suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(Path(arg).expanduser().read_text(encoding="utf-8"))
            calibration = data.get("calibration") if isinstance(data, dict) else None
    if isinstance(calibration, (str, Path)):
        calibration = Calibration.load(calibration)
    elif isinstance(calibration, Mapping):
        calibration = Calibration.from_dict(calibration)
    if encoder is None:
        from dlgpr_core.encoders.factory import create_encoder

        spec = encoder_spec or DEFAULT_ENCODER
        encoder = create_encoder(spec, device=device)
        if encoder_spec and "name" not in options:
            options["name"] = f"{NAME}:{encoder_spec}"
    return ZeroShotAnnotator(encoder, vocabulary, calibration, **options)
