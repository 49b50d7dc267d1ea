"""The synthetic "existence" world of the ``tiny-negation`` demo model.

A scene is a set of object names (singular). A statement says that an object is, or is not, in the
scene, in one of many templates (affirmative / negated, singular / plural, with or without a trailing
phrase). The object vocabulary covers the subject word of every VALSE existence sentence (the word after
the negator "no") and many more.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

# singular -> plural for the irregular ones; everything else gets the regular rules below
_IRREGULAR = {
    "person": "people", "man": "men", "woman": "women", "child": "children", "mouse": "mice", "goose": "geese",
    "foot": "feet", "tooth": "teeth", "sheep": "sheep", "deer": "deer", "fish": "fish", "knife": "knives",
    "leaf": "leaves", "loaf": "loaves", "shelf": "shelves", "wolf": "wolves", "ox": "oxen", "bus": "buses",
    "glass": "glasses", "dish": "dishes", "box": "boxes", "cactus": "cacti", "moose": "moose",
}
# words that VALSE uses as the subject word but that are not countable nouns ("no red buses", "no
# gummy bears", a typo "benche"): they are objects whose plural is themselves
_INVARIANT = [
    "baseball", "black", "blue", "closed", "colors", "different", "ford", "green", "gummy", "kinds", "maple",
    "of", "old", "power", "red", "round", "sliced", "small", "snow", "street", "teddy", "tennis", "they",
    "trash", "walking", "wine", "writing", "benche", "dishe", "people's", "guys", "females", "tourists",
    "servings", "utensils", "pets", "humans", "kids", "workers", "drivers", "tires", "wheels", "legs", "eyes",
    "faces", "stars", "strings", "sails", "dials", "knobs", "screens", "propellers", "chimneys", "clasps",
    "clipboards", "cones", "tracks", "lights", "signs", "toys", "rolls", "pieces", "slices", "tusks", "vases",
]
_NOUNS = """
person man woman child baby boy girl player skier surfer skater skateboarder tourist driver worker
clown soldier chef farmer doctor student teacher police officer rider pilot
dog cat horse cow sheep bird duck chicken eagle owl parrot pigeon goose elephant giraffe zebra bear
lion tiger monkey deer dolphin whale fish shark mouse rabbit squirrel fox wolf goat pig camel dinosaur
snake turtle frog butterfly bee spider crab kangaroo penguin
car truck bus train plane airplane boat ship bicycle bike motorcycle scooter van taxi tractor helicopter
kite skateboard surfboard snowboard ski sled racket ball bat glove helmet tent umbrella
chair table bench bed couch sofa lamp clock vase pillow towel blanket mirror shelf door window curtain
sink toilet bathtub tub oven microwave refrigerator stove toaster computer laptop keyboard phone tv
remote book bottle cup glass mug plate bowl fork knife spoon dish pot pan pitcher jar basket box bag
backpack suitcase handbag wallet tie hat cap shoe boot sock shirt jacket dress coat suit scarf
apple banana orange carrot broccoli pizza sandwich donut doughnut cake cookie pepper tomato potato
onion lemon grape strawberry blueberry cherry egg bread loaf cheese beer candle flower plant tree bush
leaf rock cloud star building house tower bridge fence wall sign pole light chimney mast sail wheel tire
cone statue fountain flag balloon hydrant trashcan bin ladder rope stairs vehicle animal pet human kid
guy female male floor tusk leg eye face hand foot string knob dial screen propeller clasp clipboard utensil
serving piece slice roll toy track pencil pen crayon paper letter map poster painting photo camera
guitar piano drum violin trumpet
"""


def plural(noun: str) -> str:
    """English plural of a singular object name (invariant for the words in ``_INVARIANT``)."""
    if noun in _IRREGULAR:
        return _IRREGULAR[noun]
    if noun in _INVARIANT:
        return noun
    if re.search(r"(s|x|z|ch|sh)$", noun):
        return noun + "es"
    if re.search(r"[^aeiou]y$", noun):
        return noun[:-1] + "ies"
    return noun + "s"


OBJECTS: list[str] = sorted(set(_NOUNS.split()) | set(_INVARIANT))
PLURALS: dict[str, str] = {o: plural(o) for o in OBJECTS}
# any surface form (singular or plural) -> object name
SURFACE: dict[str, str] = {**{p: o for o, p in PLURALS.items()}, **{o: o for o in OBJECTS}}


def object_of(word: str) -> str:
    """The object a surface word names (``"dogs"`` -> ``"dog"``). An unknown word is an
    :class:`~hooked_clip.errors.UnknownObjectError` (a ``KeyError`` and a ``ValueError``) naming the word and the
    nearest known names."""
    key = word.lower().strip(".,!?")
    if key not in SURFACE:
        import difflib

        from hooked_clip.errors import UnknownObjectError

        close = difflib.get_close_matches(key, list(SURFACE), n=5, cutoff=0.6)
        raise UnknownObjectError(
            f"{word!r} names no object of the demo world ({len(OBJECTS)} objects, singular or plural)"
            + (f"; the nearest known names: {', '.join(close)}" if close else "; no known name is close")
            + ". Use one of them (the list: hooked_clip.models.tiny_negation.world.OBJECTS).")
    return SURFACE[key]


# ------------------------------------------------------------------------------------------ statements
PLACES = ["table", "street", "beach", "sky", "water", "field", "room", "kitchen", "road", "grass", "tracks",
          "bus", "bed", "counter", "wall", "floor", "snow", "park", "sidewalk", "plate", "shelf", "desk"]
VERBS = ["riding", "holding", "crossing", "eating", "touching", "wearing", "watching", "carrying",
         "sitting on", "standing on", "looking at", "playing with", "walking on", "flying over"]
SUFFIXES = ["", " in the picture", " in the photo", " pictured", " shown", " visible", " here", " in the image",
            " in this picture", " in this photo", " seen", " in sight", " pictured here", " in the scene",
            " in the sky", " on the table", " parked", " in the room"]
HELD_OUT_SUFFIXES = [" beside the {place}", " to be seen", " around"]  # never in training (tested)
# (affirmative, negated) template pairs; {x} is the subject's surface form, {X} the same capitalised
TEMPLATES = {
    True: [("There are {x}", "There are no {x}"), ("There are some {x}", "There are no {x}"),
           ("You see {x}", "You see no {x}"), ("{X} can be seen", "No {x} can be seen"),
           ("There are many {x}", "There are no {x}"), ("I can see {x}", "I can see no {x}"),
           ("There are {x}", "There are not any {x}")],
    False: [("There is a {x}", "There is no {x}"), ("There is one {x}", "There is no {x}"),
            ("You see a {x}", "You see no {x}"), ("A {x} can be seen", "No {x} can be seen"),
            ("I can see a {x}", "I can see no {x}"), ("There is a {x}", "There is not a {x}")],
}
# lead-ins put before a training template in half of the sentences (fixed phrases, prepositional phrases
# about a place or an object, or both), so that the negator is seen at many positions (2 to ~10) and the
# subject has to be found by its determiner, not by where it sits or by which nouns come before it. Without
# the compositional prepositional phrases (20 fixed lead-ins only) negation learned on the training
# templates did not carry over to "In the picture there is (no) X" (held-out accuracy 74%).
LEAD_INS = ["Look,", "Clearly,", "Apparently,", "Today", "Right now", "At the moment,", "As you can see,",
            "I think", "Honestly,", "It seems", "Outside", "Inside the room", "On this street", "Once again,",
            "From above", "This time", "Sadly,", "Luckily,", "At night", "In this photo"]
LEAD_IN_PREPOSITIONS = ["In", "On", "Near", "By", "Under", "Behind", "Inside", "Outside", "Next to", "Across"]
LEAD_IN_DETERMINERS = ["the", "this", "that"]
LEAD_IN_RATE = 0.5


def lead_in(rng: random.Random) -> str:
    """A random lead-in: a fixed phrase ("Clearly,"), a prepositional phrase ("Near the table,"), or both."""
    pp = (f"{rng.choice(LEAD_IN_PREPOSITIONS)} {rng.choice(LEAD_IN_DETERMINERS)} "
          f"{rng.choice(PLACES + OBJECTS)}{rng.choice(['', ','])}")
    r = rng.random()
    if r < 0.4:
        return rng.choice(LEAD_INS)
    if r < 0.8:
        return pp
    return f"{rng.choice(LEAD_INS)} {pp[0].lower()}{pp[1:]}"


HELD_OUT_TEMPLATES = {  # used only by the held-out evaluation: known words in new arrangements
    True: [("In the picture there are {x}", "In the picture there are no {x}"),
           ("Here you see {x}", "Here you see no {x}")],
    False: [("In the picture there is a {x}", "In the picture there is no {x}"),
            ("Here you see a {x}", "Here you see no {x}")],
}



@dataclass(frozen=True)
class Statement:
    text: str
    subject: str  # object name
    negated: bool

    def true_of(self, scene) -> bool:
        return (self.subject in scene) != self.negated


def _fill(template: str, x: str) -> str:
    text = template.replace("{X}", x[0].upper() + x[1:]).replace("{x}", x)
    return re.sub(r"\b([Aa]) ([aeiou])", r"\1n \2", text)  # a apple -> an apple


def _after_lead_in(lead: str, template: str) -> str:
    if template.startswith("{X}"):
        return f"{lead} {{x}}{template[3:]}"
    first, rest = template.split(" ", 1)
    return f"{lead} {first if first == 'I' else first.lower()} {rest}"


def trailing_phrase(rng: random.Random, held_out: bool = False) -> str:
    """A random trailing phrase (" pictured", " riding the bus", " on the table", ...); ``held_out``: one of the
    phrases never used in training (" beside the <place>", ...)."""
    if held_out:
        return rng.choice(HELD_OUT_SUFFIXES).format(place=rng.choice(PLACES))
    r = rng.random()
    if r < 0.25:
        return f" {rng.choice(VERBS)} the {rng.choice(PLACES + OBJECTS)}"
    if r < 0.4:
        return f" {rng.choice(['in', 'on', 'near', 'by', 'under'])} the {rng.choice(PLACES + OBJECTS)}"
    return rng.choice(SUFFIXES)


def make_pair(subject: str, plural_form: bool, rng: random.Random, *, held_out: bool = False,
              plain: bool = False) -> tuple[Statement, Statement]:
    """(affirmative, negated) statements about ``subject`` that differ only in the negation; ``held_out``
    draws from templates and trailing phrases never used in training; ``plain`` leaves out lead-ins,
    multi-word subjects and trailing phrases (the first steps of training: "There is no dog.")."""
    affirmative, negated = rng.choice((HELD_OUT_TEMPLATES if held_out else TEMPLATES)[plural_form])
    if not held_out and not plain and rng.random() < LEAD_IN_RATE:
        lead = lead_in(rng)
        affirmative, negated = (_after_lead_in(lead, t) for t in (affirmative, negated))
    x = PLURALS[subject] if plural_form else subject
    if not plain and rng.random() < 0.2:  # multi-word subjects, as in "There are no red buses": the first word counts
        other = rng.choice(OBJECTS)
        x = f"{x} {PLURALS[other] if plural_form else other}"
    suffix = "" if plain else trailing_phrase(rng, held_out)
    end = " ." if rng.random() < 0.05 else "."
    return (Statement(_fill(affirmative, x) + suffix + end, subject, False),
            Statement(_fill(negated, x) + suffix + end, subject, True))


def random_scene(rng: random.Random, n_min: int = 1, n_max: int = 6, exclude: str | None = None) -> set[str]:
    pool = [o for o in OBJECTS if o != exclude]
    return set(rng.sample(pool, rng.randint(n_min, n_max)))
