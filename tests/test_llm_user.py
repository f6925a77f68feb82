"""LLM-backed simulated user: prompt, reply clean-up and the grounding guard.

A scripted `ChatModel` stands in for the LLM, so each test controls the raw reply exactly
and checks what the user finally says (never a fact the description lacks).
"""

from __future__ import annotations

from typing import Any

import pytest

from dlgpr_core.dialogue.answers import DONT_KNOW
from dlgpr_core.dialogue.questions import attribute_question, presence_question
from dlgpr_core.users.llm import LLMUser, clean_reply, ungrounded_terms

DESCRIPTION = (
    "A narrow street paved with cobblestones. On the far side stands a bank with a red "
    "facade, built of brick, and next to it a cafe with green awnings. A wooden bench stands "
    "on the pavement under a linden tree."
)


class ScriptedChat:
    """Returns the scripted replies in order and records every conversation it was sent."""

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.seen: list[list[dict[str, Any]]] = []

    def generate(
        self,
        conversations: list[list[dict[str, Any]]],
        max_new_tokens: int,
        temperature: float,
        n: int = 1,
        seed: int | None = None,
    ) -> list[list[str]]:
        self.seen.extend(conversations)
        return [[self.replies.pop(0) for _ in range(n)] for _ in conversations]


def _user(*replies: str) -> tuple[LLMUser, ScriptedChat]:
    chat = ScriptedChat(*replies)
    return LLMUser(DESCRIPTION, chat), chat


def test_prompt_carries_description_and_question() -> None:
    user, chat = _user("The bank has a red facade.")
    assert user.answer(presence_question("bank")) == "The bank has a red facade."
    (conv,) = chat.seen
    assert DESCRIPTION in conv[0]["content"] and "I don't know." in conv[0]["content"]
    assert conv[-1] == {"role": "user", "content": "Is there a bank?"}


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("The bank has a red facade.", "The bank has a red facade."),
        ("The bank is reddish.", "The bank is reddish."),  # a synonym of a stated colour
        ("The bank has a blue facade.", DONT_KNOW),  # colour never stated
        ("Yes, the cafe is made of glass.", DONT_KNOW),  # material never stated
        ("There is a fountain next to the bank.", DONT_KNOW),  # category never stated
        ("No, there is no fountain.", "No, there is no fountain."),  # a true denial
        ("There is no fountain, but there is a statue.", DONT_KNOW),  # the statue is invented
        ("The bench is wooden.", "The bench is wooden."),
    ],
)
def test_grounding_guard(reply: str, expected: str) -> None:
    user, _ = _user(reply)
    assert user.answer("Tell me about it?") == expected
    assert user.stats["ungrounded"] == (1 if expected == DONT_KNOW else 0)


def test_ungrounded_terms_names_the_culprits() -> None:
    assert ungrounded_terms("The bank is blue and made of stone.", DESCRIPTION) == [
        "colour:blue",
        "material:stone",
    ]
    assert ungrounded_terms("The cafe has green awnings.", DESCRIPTION) == []


@pytest.mark.parametrize(
    ("reply", "expected", "trimmed"),
    [
        (
            'Answer: "The bank has a red facade. It is built of brick. The cafe is green."',
            "The bank has a red facade. It is built of brick.",
            True,
        ),
        ("<think>the description says red</think>\nThe bank is red", "The bank is red.", False),
        ("The bank is red.\n\nLet me know if you need more.", "The bank is red.", True),
        ("   ", DONT_KNOW, False),
        ("", DONT_KNOW, False),
        ("The description does not mention it.", DONT_KNOW, False),
        ("i dont know", DONT_KNOW, False),
    ],
)
def test_reply_cleanup(reply: str, expected: str, trimmed: bool) -> None:
    user, _ = _user(reply)
    assert user.answer("What colour is the bank?") == expected
    assert user.stats["trimmed"] == int(trimmed)
    assert user.stats["dont_know"] == int(expected == DONT_KNOW)


def test_long_answer_is_capped_in_words() -> None:
    text, trimmed = clean_reply("The bank " + "very " * 60 + "red.", max_words=10)
    assert trimmed and len(text.split()) == 10 and text.endswith(".")


@pytest.mark.parametrize(
    ("question", "reply", "expected"),
    [
        ("Isn't the bank blue?", "Yes, the bank is blue.", DONT_KNOW),
        ("isn't the bank blue", "No, the bank is red.", "No, the bank is red."),
        ("what colour's the coffee shop's awning", "Green.", "Green."),
        ("Is the bank red or blue?", "Red.", "Red."),
        ("Do you see a phone box near the bench?", "Yes, a phone box.", DONT_KNOW),
        ("Tell me about the shop on the left", "It is a bakery with pink walls.", DONT_KNOW),
        (
            attribute_question("bank", "material"),
            "The bank is built of brick.",
            "The bank is built of brick.",
        ),
    ],
)
def test_varied_phrasings_never_yield_an_absent_fact(
    question: Any, reply: str, expected: str
) -> None:
    user, chat = _user(reply)
    assert user.answer(question) == expected
    text = question if isinstance(question, str) else question.text
    assert chat.seen[0][-1]["content"] == text


def test_empty_question_and_empty_description() -> None:
    user, chat = _user()
    assert user.answer("  ") == DONT_KNOW and chat.seen == []
    with pytest.raises(ValueError):
        LLMUser("  ", chat)
