"""A generated multi-hop world: synthetic entities and relations, a passage corpus, questions.

Everything is invented (names made of random syllables), so no model knows the answers in
advance: it has to search, hop by hop. Each entity's facts are stated only in its own passage
("X was born in Y."), so a k-hop question needs k retrievals; distractor passages mention the
same names without the facts, to make retrieval honest work. Deterministic by seed.

Knobs: ``hops`` (allowed chain lengths), ``people`` (world and corpus size; the other entity
kinds scale with it), ``distractors`` (extra passages per entity), ``questions``.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from trace_envs.search.corpus import Corpus, Passage

_SYLLABLES = (
    "ka ri mo ven dra sol thu la ne por vi zen ta quo mar bel dun ess ori fal gri hal "
    "ix jun kel lum nor pha ros sev tor ul wyn yar zo cas mil dor ean"
).split()
_COMPANY_SUFFIXES = ("Labs", "Industries", "Systems", "Holdings", "Works", "Dynamics")
_UNIVERSITY_SUFFIXES = ("University", "Institute", "College", "Academy")
_PROFESSIONS = ("engineer", "painter", "physician", "chemist", "architect", "poet", "pilot")
_DISTRACTORS = (
    ("{x} (documentary)", "{x} is the subject of a documentary that premiered in {year}. "
     "It features interviews recorded in {y} and {z}."),
    ("{x} Festival", "The {x} Festival is held every {year_mod} years. "
     "Visitors from {y} and {z} attend it."),
    ("Report on {x}", "A {year} report compared {x} with {y}. Its authors later studied {z}."),
    ("{x} in popular culture", "{x} appears in a {year} novel, next to {y}, "
     "and in a song about {z}."),
)


@dataclass(frozen=True)
class Relation:
    """A directed relation: how its fact reads in a passage, and how a question names it."""

    name: str
    subject_kind: str
    object_kind: str
    sentence: str  # "{s} was born in {o}."
    phrase: str  # "the birthplace of {x}"

    def extract(self, subject: str, text: str) -> str | None:
        """Read this relation's object for ``subject`` out of a passage (for scripted agents)."""
        head, tail = self.sentence.split("{o}")
        pattern = re.escape(head.format(s=subject)) + r"(.+?)" + re.escape(tail)
        match = re.search(pattern, text)
        return match.group(1) if match else None


RELATIONS: dict[str, Relation] = {r.name: r for r in (
    Relation("birthplace", "person", "city", "{s} was born in {o}.", "the birthplace of {x}"),
    Relation("alma_mater", "person", "university", "{s} studied at {o}.",
             "the university where {x} studied"),
    Relation("employer", "person", "company", "{s} works for {o}.", "the employer of {x}"),
    Relation("mentor", "person", "person", "{s} was mentored by {o}.", "the mentor of {x}"),
    Relation("founder", "company", "person", "{s} was founded by {o}.", "the founder of {x}"),
    Relation("headquarters", "company", "city", "{s} is headquartered in {o}.",
             "the headquarters city of {x}"),
    Relation("location", "university", "city", "{s} is located in {o}.",
             "the city where {x} is located"),
    Relation("country", "city", "country", "{s} is a city in {o}.", "the country of {x}"),
    Relation("capital", "country", "city", "The capital of {s} is {o}.", "the capital of {x}"),
)}


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str
    path: tuple[str, ...]  # entity names, start first, answer last
    chain: tuple[str, ...]  # relation names, one per hop
    supporting: tuple[str, ...]  # passage id of each hop's subject


@dataclass
class World:
    entities: dict[str, str] = field(default_factory=dict)  # name -> kind
    facts: dict[tuple[str, str], str] = field(default_factory=dict)  # (subject, relation) -> obj
    corpus: Corpus = field(default_factory=lambda: Corpus(()))
    passage_of: dict[str, str] = field(default_factory=dict)  # entity name -> passage id
    questions: tuple[Question, ...] = ()


class _Names:
    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def word(self) -> str:
        return "".join(self.rng.choice(_SYLLABLES) for _ in range(self.rng.randint(2, 3))).title()

    def fresh(self, make) -> str:  # type: ignore[no-untyped-def]
        while True:
            name = make()
            if name not in self.used:
                self.used.add(name)
                return name


def _sizes(people: int) -> dict[str, int]:
    return {
        "person": people,
        "company": max(3, people // 2),
        "city": max(4, people // 4),
        "university": max(2, people // 10),
        "country": max(2, people // 15),
    }


def build_world(
    *, people: int = 120, distractors: int = 2, questions: int = 1000,
    hops: int | Sequence[int] = (2, 3, 4), seed: int = 0,
) -> World:
    rng = random.Random(seed)
    names = _Names(rng)
    makers = {
        "person": lambda: f"{names.word()} {names.word()}",
        "company": lambda: f"{names.word()} {rng.choice(_COMPANY_SUFFIXES)}",
        "city": names.word,
        "university": lambda: f"{names.word()} {rng.choice(_UNIVERSITY_SUFFIXES)}",
        "country": names.word,
    }
    world = World()
    by_kind: dict[str, list[str]] = {}
    for kind, count in _sizes(people).items():
        by_kind[kind] = [names.fresh(makers[kind]) for _ in range(count)]
        world.entities.update((n, kind) for n in by_kind[kind])
    capitals = rng.sample(by_kind["city"], len(by_kind["country"]))
    for country, capital in zip(by_kind["country"], capitals):
        world.facts[(country, "capital")] = capital
        world.facts[(capital, "country")] = country
    for subject, kind in world.entities.items():
        for rel in RELATIONS.values():
            if rel.subject_kind == kind and (subject, rel.name) not in world.facts:
                choices = [o for o in by_kind[rel.object_kind] if o != subject]
                world.facts[(subject, rel.name)] = rng.choice(choices)
    world.corpus, world.passage_of = _render_corpus(world, rng, distractors)
    world.questions = tuple(_questions(world, rng, questions, hops))
    return world


def _render_corpus(world: World, rng: random.Random, distractors: int):  # type: ignore[no-untyped-def]
    all_names = list(world.entities)
    drafts: list[tuple[str, str, str | None]] = []  # (title, text, entity it describes)
    for name, kind in world.entities.items():
        what = rng.choice(_PROFESSIONS) if kind == "person" else kind
        sentences = [f"{name} is {'an' if what[0] in 'aeiou' else 'a'} {what}."]
        sentences += [rel.sentence.format(s=name, o=world.facts[(name, rel.name)])
                      for rel in RELATIONS.values() if (name, rel.name) in world.facts]
        drafts.append((name, " ".join(sentences), name))
        for _ in range(distractors):
            title, text = rng.choice(_DISTRACTORS)
            y, z = rng.sample(all_names, 2)
            fill = {"x": name, "y": y, "z": z, "year": rng.randint(1900, 2020),
                    "year_mod": rng.randint(2, 9)}
            drafts.append((title.format(**fill), text.format(**fill), None))
    rng.shuffle(drafts)
    passages, passage_of = [], {}
    for i, (title, text, entity) in enumerate(drafts):
        passages.append(Passage(f"w{i}", title, text))
        if entity is not None:
            passage_of[entity] = f"w{i}"
    return Corpus(passages, name="generated"), passage_of


def _questions(world: World, rng: random.Random, count: int, hops: int | Sequence[int]):  # type: ignore[no-untyped-def]
    allowed = [hops] if isinstance(hops, int) else list(hops)
    if not allowed or min(allowed) < 1:
        raise ValueError(f"hops must be positive, got {hops!r}")
    names = list(world.entities)
    seen: set[tuple[str, ...]] = set()
    made = 0
    for _ in range(count * 50):  # bounded: tiny worlds may have fewer distinct chains
        if made == count:
            break
        k = rng.choice(allowed)
        path, chain = [rng.choice(names)], []
        while len(chain) < k:
            options = [r for r in RELATIONS.values()
                       if r.subject_kind == world.entities[path[-1]]]
            rel = rng.choice(options)
            nxt = world.facts[(path[-1], rel.name)]
            if nxt in path:
                break
            path.append(nxt)
            chain.append(rel.name)
        if len(chain) < k or tuple(path) in seen:
            continue
        seen.add(tuple(path))
        phrase = path[0]
        for rel_name in chain:
            phrase = RELATIONS[rel_name].phrase.format(x=phrase)
        yield Question(
            id=f"gen-{made}", question=f"What is {phrase}?", answer=path[-1], path=tuple(path),
            chain=tuple(chain), supporting=tuple(world.passage_of[e] for e in path[:-1]),
        )
        made += 1


@functools.lru_cache(maxsize=8)
def cached_world(
    people: int = 120, distractors: int = 2, questions: int = 1000,
    hops: tuple[int, ...] = (2, 3, 4), seed: int = 0,
) -> World:
    """One world per knob setting per process: envs, forks and retrievers share it."""
    return build_world(people=people, distractors=distractors, questions=questions,
                       hops=hops, seed=seed)
