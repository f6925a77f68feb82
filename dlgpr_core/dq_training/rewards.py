"""GRPO rewards of DQ-pilot: the output format and the paper's retrieval gain (PRG)."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dlgpr_core.data.annotations import PlaceAnnotation
from dlgpr_core.dialogue.dq_pilot import (
    ParsedOutput,
    parse_dq_output,
)
from dlgpr_core.dialogue.engine import SearchFn
from dlgpr_core.dialogue.metrics import prg, prg_place_rank
from dlgpr_core.dialogue.questions import free_question
from dlgpr_core.dq_training.examples import (
    ImageSearchFn,
    image_ranks_of,
    target_rank,
)
from dlgpr_core.users.fact import FactUser

RewardFn = Callable[..., list[float]]
"""trl's reward signature: ``f(completions, **dataset_columns) -> one float per completion``."""


def completion_text(completion: Any) -> str:
    """The generated text of one completion, plain or conversational (trl passes a list
    of assistant messages for conversational prompts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        content = completion[-1].get("content", "") if isinstance(completion[-1], dict) else ""
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(str(c.get("text") or "") for c in content if isinstance(c, dict))
    return ""


_TAG = re.compile(r"</?(think|question)>", re.IGNORECASE)


def format_ok(text: str, max_question_words: int = 40) -> bool:
    """R_fmt's test: exactly one think block then exactly one question block, in that
    order, with a question the inference parser accepts (non-empty, one question, short)."""
    tags = [m.group(0).lower() for m in _TAG.finditer(text)]
    if tags != ["<think>", "</think>", "<question>", "</question>"]:
        return False
    parsed = parse_dq_output(text, max_words=max_question_words, require_think=True)
    return isinstance(parsed, ParsedOutput)


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """R_fmt (paper Eq. 7): 1 for a well-formed output, else 0."""
    return [1.0 if format_ok(completion_text(c)) else 0.0 for c in completions]


class RetrievalGainReward:
    """R_prg (paper Eq. 8): PRG of the target between the round's query and the query with
    the simulated user's answer to the *generated* question appended, from really re-running
    the retrieval.

    With `image_search` (and `image_search_k`, the map's image count) the positives are all
    images of the target place and R_prg is Eq. 2 over their ranks. Without it only the
    place search exists (`SearchFn` returns one hit per place), so the target place is the
    one positive and R_prg is `prg_place_rank` of its place rank -- a stand-in, exact only
    for one-image places. Outputs the questioner would refuse at inference (bad format,
    repeats) get 0, since the dialogue would not have asked them. Ranks of a query are
    cached: the G completions of a prompt share its "before" query.
    """

    __name__ = "retrieval_gain"  # trl names logged rewards by __name__

    def __init__(
        self,
        places_by_id: Mapping[str, PlaceAnnotation],
        search: SearchFn,
        search_k: int,
        max_question_words: int = 40,
        cache_size: int = 4096,
        image_search: ImageSearchFn | None = None,
        image_search_k: int | None = None,
    ) -> None:
        if image_search is not None and image_search_k is None:
            raise ValueError("image_search needs image_search_k (the number of images to rank)")
        self.places_by_id = places_by_id
        self.search = search
        self.search_k = search_k
        self.image_search = image_search
        self.image_search_k = image_search_k
        self.max_question_words = max_question_words
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._image_cache: OrderedDict[tuple[str, str], list[int]] = OrderedDict()

    def rank(self, text: str, target: str) -> int:
        """1-indexed whole-list rank of `target` for query `text` (cached)."""
        key = (text, target)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = target_rank(self.search(text, self.search_k), target)
        self._cache[key] = value
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return value

    def image_ranks(self, text: str, target: str) -> list[int]:
        """1-indexed ranks of every image of `target` for query `text` (cached); needs
        `image_search`."""
        if self.image_search is None or self.image_search_k is None:
            raise RuntimeError("image_ranks needs an image_search")
        key = (text, target)
        if key in self._image_cache:
            self._image_cache.move_to_end(key)
            return self._image_cache[key]
        n_images = len(self.places_by_id[target].views)
        value = image_ranks_of(self.image_search, text, self.image_search_k, target, n_images)
        self._image_cache[key] = value
        if len(self._image_cache) > self.cache_size:
            self._image_cache.popitem(last=False)
        return value

    def score(
        self,
        text: str,
        target: str,
        d0: str,
        questions: Sequence[str],
        answers: Sequence[str],
    ) -> float:
        """The reward of one completion."""
        if not format_ok(text, self.max_question_words):
            return 0.0
        asked = [free_question(q) for q in questions]
        parsed = parse_dq_output(text, asked, max_words=self.max_question_words)
        if not isinstance(parsed, ParsedOutput):
            return 0.0
        place = self.places_by_id[target]
        answer = FactUser(place).answer(free_question(parsed.question)).strip()
        before_text = " ".join((d0, *answers))
        after_text = " ".join((d0, *answers, answer))
        if self.image_search is not None:
            return prg(self.image_ranks(before_text, target), self.image_ranks(after_text, target))
        return prg_place_rank(self.rank(before_text, target), self.rank(after_text, target))

    def __call__(
        self,
        completions: Sequence[Any],
        *,
        target: Sequence[str],
        d0: Sequence[str],
        questions: Sequence[Sequence[str]],
        answers: Sequence[Sequence[str]],
        **kwargs: Any,
    ) -> list[float]:
        return [
            self.score(completion_text(c), t, d, q, a)
            for c, t, d, q, a in zip(completions, target, d0, questions, answers, strict=True)
        ]
