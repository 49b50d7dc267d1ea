"""The synthetic "existence + counting" world of the ``tiny-count`` demo model.

A scene holds 0 to 4 of each object: it is a list of object names, one entry per instance (``["dog", "dog",
"cat"]``: two dogs and a cat). A statement is about one subject and is true for a set of the subject's counts:

- counting: "There are exactly 2 dogs.", "There is one cat.", "Exactly 0 birds can be seen." — true iff the count
  is the number (digits 0-4 and the words zero-four, with and without "exactly", in the forms of VALSE's counting
  pieces: "There is/are exactly N X");
- existence (``tiny-negation``'s world, its templates, lead-ins and trailing phrases): "There are (no) dogs." —
  the affirmative true iff the count is 1-4, the negated iff it is 0 ("There is one X" is left out of
  existence: "one" is a count here).

:func:`parse` reads a sentence of these forms back into a statement (used to build a scene in which a caption is
true, and to tell which sentences the world covers).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from hooked_clip.models.tiny_negation import world as existence
from hooked_clip.models.tiny_negation.world import OBJECTS, PLURALS, SURFACE  # noqa: F401 (the same objects)

# the existence world lists some plurals as objects of their own (VALSE's subject words: "kids", "signs"); here
# they are the same object as their singular, so that "1 kid" and "2 kids" are about one object
CANONICAL: dict[str, str] = {o: o for o in OBJECTS}
CANONICAL.update({p: o for o, p in PLURALS.items() if p != o and p in CANONICAL})
SUBJECTS: list[str] = sorted(set(CANONICAL.values()))  # the objects of this world's scenes and statements
# the subjects counted: not the existence world's invariant words ("black", "of", "tennis": no plural to count)
COUNTED: list[str] = [o for o in SUBJECTS if PLURALS[o] != o or o in ("sheep", "deer", "fish", "moose")]
MAX_COUNT = 4
COUNTS = tuple(range(MAX_COUNT + 1))
DIGITS = {str(n): n for n in COUNTS}
WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4}
NUMBER_WORDS = ["zero", "one", "two", "three", "four"]
# numbers beyond the world (parsed so that a sentence about them can be named as outside it)
_BEYOND = {"five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
# (singular form for n = 1, plural form otherwise); {n} the number, {N} the same capitalised, {x}/{xs} the subject
COUNT_TEMPLATES = [("There is exactly {n} {x}", "There are exactly {n} {xs}"),
                   ("There is {n} {x}", "There are {n} {xs}"),
                   ("You see exactly {n} {x}", "You see exactly {n} {xs}"),
                   ("I can see {n} {x}", "I can see {n} {xs}"),
                   ("Exactly {n} {x} can be seen", "Exactly {n} {xs} can be seen"),
                   ("{N} {x} can be seen", "{N} {xs} can be seen")]
HELD_OUT_COUNT_TEMPLATES = [("In the picture there is exactly {n} {x}", "In the picture there are exactly {n} {xs}"),
                            ("Here you see {n} {x}", "Here you see {n} {xs}")]
COUNTING_RATE = 0.6  # share of counting statements among the training pairs (the rest: existence)
LEAD_IN_RATE = 0.3


@dataclass(frozen=True)
class Statement:
    """A sentence about ``subject`` (an object name), true iff the subject's count is in ``counts``;
    ``phenomenon``: "counting" or "existence"."""

    text: str
    subject: str
    counts: frozenset
    phenomenon: str

    def true_of(self, scene) -> bool:
        return list(scene).count(self.subject) in self.counts


def numeral(n: int, rng: random.Random) -> str:
    """``n`` as a digit or a word, half and half."""
    return str(n) if rng.random() < 0.5 else NUMBER_WORDS[n]


def _count_text(template: tuple[str, str], n: int, number: str, subject: str) -> str:
    t = template[0] if n == 1 else template[1]
    return (t.replace("{N}", number[0].upper() + number[1:]).replace("{n}", number)
            .replace("{xs}", PLURALS[subject]).replace("{x}", subject))


def count_pair(subject: str, count: int, other: int, rng: random.Random, *, held_out: bool = False,
               plain: bool = False) -> tuple[Statement, Statement]:
    """Two counting statements about ``subject`` that differ only in the number (``count`` vs ``other``, and the
    noun's number where one of them is 1); ``held_out`` and ``plain`` as in ``tiny_negation.world.make_pair``."""
    template = rng.choice(HELD_OUT_COUNT_TEMPLATES if held_out else COUNT_TEMPLATES)
    word = rng.random() < 0.5
    lead = existence.lead_in(rng) if not held_out and not plain and rng.random() < LEAD_IN_RATE else None
    suffix = "" if plain else existence.trailing_phrase(rng, held_out)
    end = " ." if rng.random() < 0.05 else "."
    out = []
    for n in (count, other):
        text = _count_text(template, n, NUMBER_WORDS[n] if word else str(n), subject)
        if lead is not None:
            text = f"{lead} {text[0].lower()}{text[1:]}" if not text.startswith("I ") else f"{lead} {text}"
        out.append(Statement(text + suffix + end, subject, frozenset({n}), "counting"))
    return out[0], out[1]


def existence_pair(subject: str, plural_form: bool, rng: random.Random, *, held_out: bool = False,
                   plain: bool = False) -> tuple[Statement, Statement]:
    """(affirmative, negated) existence statements (``tiny_negation.world.make_pair``, without "There is one X")."""
    while True:
        aff, neg = existence.make_pair(subject, plural_form, rng, held_out=held_out, plain=plain)
        if not re.search(r"\bone\b", aff.text, re.I):
            break
    return (Statement(aff.text, CANONICAL[subject], frozenset(COUNTS[1:]), "existence"),
            Statement(neg.text, CANONICAL[subject], frozenset({0}), "existence"))


def random_scene(rng: random.Random, n_min: int = 1, n_max: int = 5, exclude: str | None = None) -> list[str]:
    """``n_min``-``n_max`` distinct objects of ``SUBJECTS`` (not ``exclude``), 1-4 of each, as a sorted list of
    instances."""
    pool = [o for o in SUBJECTS if o != exclude]
    scene = []
    for o in sorted(rng.sample(pool, rng.randint(n_min, n_max))):
        scene += [o] * rng.randint(1, MAX_COUNT)
    return scene


def sample(rng: random.Random, *, held_out: bool = False, plain: bool = False,
           phenomenon: str | None = None) -> tuple[list[str], Statement, Statement]:
    """One training item: (scene, the statement true of it, its minimally changed false counterpart). Counting
    (``COUNTING_RATE`` of the items unless ``phenomenon`` names one): the subject's count and the foil's number are
    drawn uniformly from 0-4 (different); existence: the subject is present (1-4 of it) with probability 1/2."""
    counting = rng.random() < COUNTING_RATE if phenomenon is None else phenomenon == "counting"
    word = rng.choice(COUNTED if counting else OBJECTS)  # existence: every word of its world, "kids" too
    subject = CANONICAL[word]
    scene = random_scene(rng, 1, 5, exclude=subject)
    if counting:
        count = rng.randint(0, MAX_COUNT)
        other = rng.choice([n for n in COUNTS if n != count])
        true, false = count_pair(subject, count, other, rng, held_out=held_out, plain=plain)
    else:
        count = rng.randint(1, MAX_COUNT) if rng.random() < 0.5 else 0
        aff, neg = existence_pair(word, rng.random() < 0.5, rng, held_out=held_out, plain=plain)
        true, false = (aff, neg) if count else (neg, aff)
    return sorted(scene + [subject] * count), true, false


# ------------------------------------------------------------------------------------------ reading sentences
_WORD = r"([A-Za-z][A-Za-z']*)"
_NUMBER = r"(\d+|" + "|".join(list(WORDS) + list(_BEYOND)) + r")"
_NEGATED = re.compile(r"\bno\s+" + _WORD, re.I)
_COUNTED = re.compile(r"(?:^|\b)" + _NUMBER + r"\s+" + _WORD, re.I)
_AFFIRMATIVE = re.compile(r"\b(?:there\s+(?:is|are)|you\s+see|i\s+can\s+see|here\s+you\s+see)\s+"
                          r"(?:(?:a|an|some|many)\s+)?" + _WORD, re.I)
_SEEN = re.compile(r"(?:^|,\s*)(?:(?:a|an)\s+)?" + _WORD + r"(?:\s+[A-Za-z']+)?\s+can\s+be\s+seen", re.I)


def parse(text: str) -> Statement | None:
    """The statement a sentence of the world's forms makes, or None: "... no X" (count 0), "... [exactly] N X"
    (count N; a number beyond 4 gives counts {N}, outside the world), "There is/are [a|some|many] X", "You see
    X", "X can be seen" (count 1-4). The subject is the first word after the number or determiner, as in the
    world's multi-word subjects; None where it is not one of the world's objects."""
    for pattern, kind in ((_NEGATED, "no"), (_COUNTED, "count"), (_AFFIRMATIVE, "some"), (_SEEN, "some")):
        m = pattern.search(text)
        if m is None:
            continue
        word = m.group(m.lastindex).lower()
        if word not in SURFACE:
            return None
        subject = CANONICAL[SURFACE[word]]
        if kind == "no":
            return Statement(text, subject, frozenset({0}), "existence")
        if kind == "count":
            number = m.group(1).lower()
            n = int(number) if number.isdigit() else {**WORDS, **_BEYOND}[number]
            return Statement(text, subject, frozenset({n}), "counting")
        return Statement(text, subject, frozenset(COUNTS[1:]), "existence")
    return None


def scene_for(statement: Statement, rng: random.Random, n_distractors: tuple[int, int] = (1, 5)) -> list[str]:
    """A random scene in which ``statement`` is true: the subject ``k`` times (k drawn from the statement's counts
    within 0-4) among seeded distractors."""
    counts = sorted(n for n in statement.counts if n <= MAX_COUNT)
    if not counts:
        raise ValueError(f"{statement.text!r} is about {sorted(statement.counts)} of {statement.subject!r}; the "
                         f"world counts 0-{MAX_COUNT}, so no scene makes it true.")
    k = rng.choice(counts)
    return sorted(random_scene(rng, *n_distractors, exclude=statement.subject) + [statement.subject] * k)


def vocabulary_phrases() -> list[str]:
    """Every word the counting statements add to the existence world (for the stored token ids)."""
    words = set(DIGITS) | set(NUMBER_WORDS) | {w.capitalize() for w in NUMBER_WORDS} | {"exactly", "Exactly"}
    for pair in COUNT_TEMPLATES + HELD_OUT_COUNT_TEMPLATES:
        for t in pair:
            words |= set(re.sub(r"\{\w+\}", "", t).split())
    return sorted(words)
