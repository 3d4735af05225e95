"""A seeded synthetic world: invented entities, their documents, and question sets.

Why it exists: every claim of the project (the model answers from documents, not memory;
it abstains when the documents are silent; it follows an edited document; it searches
again for multi-hop questions) needs questions whose answers we know and whose facts we
control. Real text cannot give that; a small invented world can.

The world
- Entities: countries, cities, universities, companies, people. Names are invented from
  consonant-vowel syllables (2-4 syllables a word), unique, and no name is a substring of
  another name or of a template word, so `name in text` is an exact test.
- Facts are functional relations (one object per subject and relation):
    person:     born_in -> city, birth_year -> int, studied_at -> university, works_at -> company
    company:    founded_by -> person, headquartered_in -> city
    university: located_in -> city
    city:       located_in -> country
  birth_year, studied_at and works_at may be missing (missing_fact_rate): questions about
  them are the unanswerable ones, whose gold answer is ABSTAIN.
- One document per entity. Each sentence states exactly one relation (so a fact can be
  found or ruled out sentence by sentence), drawn from several templates, in shuffled
  order. Facts also appear in the documents of the other side of the relation: a city's
  document names people born there and companies headquartered there, a company's names
  its founder and some employees, a person's names the companies they founded. Lists of
  such mentions are capped at `max_mentions` names (a sample), to keep documents short.

Train/test split (the choice this module makes)
- The held-out entities are *people*: a `test_fraction` of them. The KB (kb_documents) states
  every fact; the corpus (corpus_documents) renders every other entity from the original facts
  minus theirs (a city's corpus document never lists a test person among its natives; a company
  a test person founded appears without its founder). So no test person's name or fact reaches
  pretraining, and a closed-book answer about one is a hallucination by construction.
- Questions whose fact chain touches a test person are test questions (val/test files).
- RL people (`rl_fraction` of train people) are held out the same way; questions touching one and
  no test person go to the rl file, RL's alone: a train person's facts can be recalled, so RL on
  train questions rarely meets the reading mistakes it must fix on test. The rest are train.

Counterfactual edits
- `n_counterfactual` facts of train entities get a new valid value in the KB (every document
  stating the fact is rendered from the edited facts); the corpus keeps the original. Their
  questions answer with the edited value and keep `original_answer`. Chains through an edited
  fact are in no other question set, so train questions never teach the edit.

Everything is deterministic from the seed: each random choice comes from a
random.Random seeded with a string (seeding with a str is stable across processes).
"""
import random
import re
from dataclasses import dataclass, field

from nanochat_core.data.templates import DOC_TEMPLATES, QUESTION_TEMPLATES

ABSTAIN = "The sources do not say."

ENTITY_TYPES = ("country", "city", "university", "company", "person")
OPTIONAL_RELATIONS = ("birth_year", "studied_at", "works_at")  # may be missing (unanswerable)
EDITABLE_RELATIONS = ("born_in", "birth_year", "studied_at", "works_at", "headquartered_in")
RELATION_TARGET = {"born_in": "city", "studied_at": "university", "works_at": "company",
                   "founded_by": "person", "headquartered_in": "city", "birth_year": None}
# located_in depends on the subject: a university is in a city, a city in a country.
LOCATED_IN_TARGET = {"university": "city", "city": "country"}
# Forward relations in canonical order, per entity type.
FORWARD = {
    "person": ("born_in", "birth_year", "studied_at", "works_at"),
    "company": ("founded_by", "headquartered_in"),
    "university": ("located_in",),
    "city": ("located_in",),
    "country": (),
}
# Inverse mentions: slot -> (relation, subject type) whose object is this entity.
INVERSE = {
    "person": (("founded", "founded_by", "company"),),
    "company": (("employs", "works_at", "person"),),
    "university": (("alumni", "studied_at", "person"),),
    "city": (("natives", "born_in", "person"), ("companies", "headquartered_in", "company"),
             ("universities", "located_in", "university")),
    "country": (("cities", "located_in", "city"),),
}

# Names: consonant-vowel syllables. Single-letter onsets and a one-letter coda keep names
# short in characters and, once a BPE tokenizer has seen them, in tokens.
_ONSETS = ["b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "", "", "n", "r", "l", "s"]
_COUNTRY_SUFFIXES = ["ria", "nia", "land", "stan"]
_COMPANY_KINDS = ["Labs", "Works", "Systems", "Motors", "Foods", "Group", "Energy", "Media"]
_UNIVERSITY_KINDS = ["University", "Institute", "College"]
_RESERVED = {w.lower() for t in list(DOC_TEMPLATES.values()) + list(QUESTION_TEMPLATES.values())
             for s in t for w in re.findall(r"[A-Za-z]+", s)} | {w.lower() for w in _COMPANY_KINDS + _UNIVERSITY_KINDS}
MAX_ENTITIES = 50_000  # far below what the syllable space holds; name checks stay fast


@dataclass
class Entity:
    id: str
    type: str
    name: str
    split: str = "train"  # people only: "test" (val/test questions) or "rl" (RL's questions) when held out


class _Names:
    """Draws unique names; none is a substring of another (case-insensitive) or of a template word."""

    def __init__(self, rng):
        self.rng = rng
        self.names = set()
        self.substrings = set()  # every substring of every accepted name

    def _word(self, n_syllables, coda=True):
        w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n_syllables))
        return (w + (self.rng.choice(_CODAS) if coda else "")).capitalize()

    def reserve(self, name):
        """Treat `name` as taken (a name from another world): no new name equals it, sits
        inside it, or contains it."""
        low = name.lower()
        self.names.add(low)
        self.substrings |= {low[i:j] for i in range(len(low)) for j in range(i + 1, len(low) + 1)}

    def _accept(self, name, words):
        # `words`: the invented words of the name (not "Labs", "University", ...).
        if any(w.lower() in r for w in words for r in _RESERVED):
            return False
        low = name.lower()
        if low in self.substrings:  # the candidate sits inside an accepted name
            return False
        subs = {low[i:j] for i in range(len(low)) for j in range(i + 1, len(low) + 1)}
        if subs & self.names:  # an accepted name sits inside the candidate
            return False
        self.names.add(low)
        self.substrings |= subs
        return True

    def draw(self, kind):
        for _ in range(10_000):
            r = self.rng
            if kind == "person":
                words = [self._word(2), self._word(r.choice([2, 3]))]
                name = " ".join(words)
            elif kind == "city":
                words = [self._word(r.choice([2, 3]))]
                name = words[0]
            elif kind == "country":
                words = [self._word(2, coda=False) + r.choice(_COUNTRY_SUFFIXES)]
                name = words[0]
            elif kind == "company":
                words = [self._word(2)]
                name = f"{words[0]} {r.choice(_COMPANY_KINDS)}"
            else:
                words = [self._word(r.choice([2, 3]))]
                name = f"{words[0]} {r.choice(_UNIVERSITY_KINDS)}"
            if self._accept(name, words):
                return name
        raise RuntimeError(f"could not draw a unique {kind} name; the world is too large for the name space")


def _join_names(names):
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def split_sentences(text):
    """Sentences of a world document (templates hold one relation each, no inner periods)."""
    return [s for s in re.split(r"(?<=[.?!])\s+", text.strip()) if s]


@dataclass
class World:
    seed: int
    entities: dict  # id -> Entity, in type order
    facts: dict  # original facts: id -> {relation: object id or int year}
    kb_facts: dict  # facts with the counterfactual edits applied
    edits: list = field(default_factory=list)  # [{"subject","relation","original","edited"}]
    max_mentions: int = 3

    def name(self, x):
        return str(x) if isinstance(x, int) else self.entities[x].name

    def ids(self, etype):
        return [e.id for e in self.entities.values() if e.type == etype]

    def test_people(self):
        return [e.id for e in self.entities.values() if e.split == "test"]

    # ---- rendering -------------------------------------------------------------------
    def _inverse(self, facts, exclude):
        inv = {}
        for subj, rels in facts.items():
            if subj in exclude:
                continue
            for rel, obj in rels.items():
                if isinstance(obj, str) and obj not in exclude:
                    inv.setdefault((obj, rel), []).append(subj)
        return inv

    def render(self, eid, variant, facts, exclude=frozenset(), inverse=None):
        """Text of entity `eid`'s document, rendering `variant` (template and order choices),
        from `facts` with every entity in `exclude` left out. The same variant draws the
        same choices whatever the facts, so an edited KB document differs from its corpus
        twin only where the facts differ."""
        e = self.entities[eid]
        inverse = self._inverse(facts, exclude) if inverse is None else inverse
        slots = [("fwd", r) for r in FORWARD[e.type]] + [("inv", s) for s in INVERSE[e.type]]
        if e.type == "country":
            slots = [("intro", "intro")] + slots
        order = list(range(len(slots)))
        random.Random(f"{self.seed}:{eid}:{variant}:order").shuffle(order)
        sentences = {}
        for i, (kind, slot) in enumerate(slots):
            rng = random.Random(f"{self.seed}:{eid}:{variant}:{i}")
            if kind == "intro":
                key, fill = (e.type, "intro"), {}
            elif kind == "fwd":
                obj = facts.get(eid, {}).get(slot)
                if obj is None or obj in exclude:
                    continue
                key, fill = (e.type, slot), {"o": self.name(obj)}
            else:
                name, rel, subj_type = slot
                members = [s for s in inverse.get((eid, rel), []) if self.entities[s].type == subj_type]
                if not members:
                    continue
                if len(members) > self.max_mentions:
                    members = sorted(rng.sample(members, self.max_mentions))
                plural = len(members) > 1
                key = (e.type, name)
                fill = {"o": _join_names([self.name(m) for m in members]), "was": "were" if plural else "was",
                        "is": "are" if plural else "is", "work": "work" if plural else "works"}
            template = rng.choice(DOC_TEMPLATES[key])
            sentences[i] = template.format(s=e.name, **fill)
        return " ".join(sentences[i] for i in order if i in sentences)

    def _doc(self, eid, text, **meta):
        e = self.entities[eid]
        return {"id": eid, "title": e.name, "text": text, "source": "world",
                "metadata": {"entity_type": e.type, "entity_split": e.split, **meta}}

    def kb_documents(self):
        """One document per entity, every fact stated, counterfactual edits applied."""
        inverse = self._inverse(self.kb_facts, frozenset())
        edited = {x["subject"] for x in self.edits}
        docs = []
        for eid in self.entities:
            text = self.render(eid, 0, self.kb_facts, inverse=inverse)
            docs.append(self._doc(eid, text, counterfactual=eid in edited or self._mentions_edit(eid)))
        return docs

    def _mentions_edit(self, eid):
        # True when an edited fact is stated in this (other) entity's document.
        return any(eid in (x["original"], x["edited"]) for x in self.edits if isinstance(x["original"], str))

    def corpus_documents(self, paraphrases=1):
        """Training-text renderings: every entity but the held-out (test and RL) people, original
        (pre-edit) facts, their facts left out; `paraphrases` renderings each (duplicates removed).
        Returns (docs, n_duplicates_removed)."""
        exclude = frozenset(e.id for e in self.entities.values() if e.split != "train")  # test and RL people
        inverse = self._inverse(self.facts, exclude)
        docs, dups = [], 0
        for eid in self.entities:
            if eid in exclude:
                continue
            seen = set()
            for v in range(paraphrases):
                text = self.render(eid, v, self.facts, exclude, inverse=inverse)
                if text in seen:
                    dups += 1
                    continue
                seen.add(text)
                docs.append(self._doc(eid, text, variant=v))
        return docs, dups


def build_world(seed, n_people=400, n_cities=40, n_countries=8, n_companies=60, n_universities=16,
                test_fraction=0.2, missing_fact_rate=0.15, n_counterfactual=0, max_mentions=3,
                birth_years=(1940, 2005), reserved_names=(), rl_fraction=0.0):
    """Builds the world deterministically from `seed`. See the module docstring."""
    counts = {"n_people": n_people, "n_cities": n_cities, "n_countries": n_countries,
              "n_companies": n_companies, "n_universities": n_universities}
    for k, v in counts.items():
        if not 1 <= v <= MAX_ENTITIES:
            raise ValueError(f"{k} must be between 1 and {MAX_ENTITIES}, got {v}")
    if n_people < 2 or n_cities < 2:
        raise ValueError("need at least 2 people (one train, one test) and 2 cities")
    if n_countries > n_cities:
        raise ValueError(f"n_countries ({n_countries}) must not exceed n_cities ({n_cities}): every country needs a city")
    rng = random.Random(f"world:{seed}")
    names = _Names(rng)
    for n in reserved_names:  # e.g. a drill world must not reuse (or nest) the real world's names
        names.reserve(n)
    entities = {}
    for etype, n in (("country", n_countries), ("city", n_cities), ("university", n_universities),
                     ("company", n_companies), ("person", n_people)):
        for i in range(n):
            eid = f"{etype}-{i:04d}"
            entities[eid] = Entity(eid, etype, names.draw(etype))
    countries, cities = [f"country-{i:04d}" for i in range(n_countries)], [f"city-{i:04d}" for i in range(n_cities)]
    unis, companies = [f"university-{i:04d}" for i in range(n_universities)], [f"company-{i:04d}" for i in range(n_companies)]
    people = [f"person-{i:04d}" for i in range(n_people)]
    n_test = min(n_people - 1, max(1, round(test_fraction * n_people)))
    for pid in rng.sample(people, n_test):
        entities[pid].split = "test"
    n_rl, train_people = round(rl_fraction * n_people), [p for p in people if entities[p].split == "train"]
    if n_rl >= len(train_people):
        raise ValueError(f"rl_fraction={rl_fraction} holds out {n_rl} RL people of the {len(train_people)} "
                         "who are not test people; at least one must stay a train person")
    for pid in random.Random(f"world:{seed}:rl").sample(train_people, n_rl):  # own generator: the rest stays the same
        entities[pid].split = "rl"

    facts = {eid: {} for eid in entities}
    for i, c in enumerate(cities):
        facts[c]["located_in"] = countries[i] if i < n_countries else rng.choice(countries)
    for u in unis:
        facts[u]["located_in"] = rng.choice(cities)
    founders = rng.sample(people, n_companies) if n_companies <= n_people else [rng.choice(people) for _ in companies]
    founded = {}
    for co, p in zip(companies, founders):
        facts[co]["founded_by"] = p
        facts[co]["headquartered_in"] = rng.choice(cities)
        founded.setdefault(p, set()).add(co)
    lo, hi = birth_years
    for p in people:
        f = facts[p]
        f["born_in"] = rng.choice(cities)
        if rng.random() >= missing_fact_rate:
            f["birth_year"] = rng.randint(lo, hi)
        if rng.random() >= missing_fact_rate:
            f["studied_at"] = rng.choice(unis)
        if rng.random() >= missing_fact_rate:
            # Nobody works at a company they founded: "works at" and "founded" stay distinct
            # facts, so a 2-hop "founder of P's employer" never loops back to P.
            options = [c for c in companies if c not in founded.get(p, ())]
            if options:
                f["works_at"] = rng.choice(options)

    # Counterfactual edits: train facts only, one per subject, a new valid value.
    kb_facts = {eid: dict(rels) for eid, rels in facts.items()}
    candidates = [(s, r) for s in people + companies if entities[s].split == "train"
                  for r in EDITABLE_RELATIONS if r in facts[s]]
    rng.shuffle(candidates)
    edits, edited_subjects = [], set()
    pools = {"city": cities, "university": unis, "company": companies}
    for s, r in candidates:
        if len(edits) >= n_counterfactual:
            break
        if s in edited_subjects:
            continue
        old = facts[s][r]
        if r == "birth_year":
            options = [y for y in range(lo, hi + 1) if y != old]
        else:
            options = [x for x in pools[RELATION_TARGET[r]] if x != old and x not in founded.get(s, ())]
        if not options:
            continue
        new = rng.choice(options)
        kb_facts[s][r] = new
        edits.append({"subject": s, "relation": r, "original": old, "edited": new})
        edited_subjects.add(s)
    return World(seed=seed, entities=entities, facts=facts, kb_facts=kb_facts, edits=edits,
                 max_mentions=max_mentions)


def fresh_people_world(seed, real_names, n_people):
    """The real world's places, companies and universities (`real_names`: type -> names) with
    n_people new people (no name equals or nests a real one) and new random facts."""
    counts = {t: len(real_names.get(t, ())) for t in ("city", "country", "company", "university")}
    missing = [t for t, n in counts.items() if not n]
    if missing:
        raise ValueError(f"a fresh-people world needs the real world's names of every entity type; none for {missing}")
    reserved = [n for names in real_names.values() for n in names]
    world = build_world(seed, n_people=n_people, n_cities=max(counts["city"], counts["country"]),
                        n_countries=counts["country"], n_companies=counts["company"],
                        n_universities=counts["university"], test_fraction=0.0, reserved_names=reserved)
    # Rename by index: cities beyond the real count (only when countries outnumber cities) stay fresh.
    for t, names in real_names.items():
        if t != "person":
            for eid, name in zip(world.ids(t), names):
                world.entities[eid].name = name
    return world


def fresh_people_corpus(world, n_people, seed):
    """Pretraining records about up to n_people people who exist nowhere else, each a document
    naming them in every sentence (two or more), over `world`'s places, companies, universities.
    Why: a real person's name recurs across the corpus, so the LM predicts it from memory and
    never learns to copy one, yet reading a held-out founder's name means copying it. Here each
    name occurs in one document, so predicting its later mentions is copying. Person documents
    only, without "X founded C" (it would contradict real founders) and birth years (thousands of
    random years taught a year prior: held-out birth-year RAG EM fell from 0.97 to 0.06-0.16)."""
    real = {}
    for e in world.entities.values():
        real.setdefault(e.type, []).append(e.name)
    fresh = fresh_people_world(f"fresh:{seed}", real, n_people)
    facts = {p: {r: o for r, o in fresh.facts[p].items() if r != "birth_year"} for p in fresh.ids("person")}
    rng = random.Random(f"fresh:{seed}:render")
    records = []
    for p in fresh.ids("person"):
        text = fresh.render(p, rng.randrange(3), facts, inverse={})
        if len(split_sentences(text)) >= 2:
            records.append({"text": text, "source": "fresh_people", "people": [fresh.name(p)]})
    return records
