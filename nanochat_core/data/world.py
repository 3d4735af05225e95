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
- The held-out entities are *people*: a `test_fraction` of them. A "test fact" is any fact
  with a test person as subject or object (born in, works at, founded by, ...).
- The KB (kb_documents) states every fact. The training corpus (corpus_records) renders
  every entity except the test people, from the original facts minus the test facts: a
  city's corpus document never lists a test person among its natives, and a company
  founded by a test person appears in the corpus without its founder. So no test person's
  name, and hence none of their facts, ever reaches pretraining; a closed-book answer
  about them is a hallucination by construction.
- Questions whose fact chain touches a test person are test questions (val/test files);
  the others are train questions.

Counterfactual edits
- `n_counterfactual` facts of train entities get a new valid value in the KB (the
  subject's document and every other document that states the fact are rendered from the
  edited facts). The corpus keeps the original. Questions on these facts answer with the
  edited value and keep `original_answer`. Chains through an edited fact are excluded from
  every other question set, so train questions never teach the edit.

Everything is deterministic from the seed: each random choice comes from a
random.Random seeded with a string (seeding with a str is stable across processes).
"""
import random
import re
from dataclasses import dataclass, field

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

# Document templates, one relation per sentence. {s}: this entity, {o}: the other side
# (a name, a year, or a list of names); {was}/{is}/{work} agree with a list's number.
DOC_TEMPLATES = {
    ("person", "born_in"): ["{s} was born in {o}.", "{s} is a native of {o}.", "The birthplace of {s} is {o}."],
    ("person", "birth_year"): ["{s} was born in {o}.", "{s} was born in the year {o}.",
                               "The birth year of {s} is {o}."],
    ("person", "studied_at"): ["{s} studied at {o}.", "{s} graduated from {o}.", "{s} is a graduate of {o}."],
    ("person", "works_at"): ["{s} works at {o}.", "{s} is employed by {o}.", "{s} works for {o}."],
    ("person", "founded"): ["{s} founded {o}.", "{s} is the founder of {o}.", "{s} started {o}."],
    ("company", "founded_by"): ["{s} was founded by {o}.", "The founder of {s} is {o}.", "{o} founded {s}."],
    ("company", "headquartered_in"): ["{s} is headquartered in {o}.", "{s} has its headquarters in {o}.",
                                      "The head office of {s} is in {o}."],
    ("company", "employs"): ["Employees of {s} include {o}.", "{s} employs {o}.", "{o} {work} at {s}."],
    ("university", "located_in"): ["{s} is located in {o}.", "{s} is in the city of {o}.",
                                   "The campus of {s} is in {o}."],
    ("university", "alumni"): ["Graduates of {s} include {o}.", "{o} studied at {s}.", "Alumni of {s} include {o}."],
    ("city", "located_in"): ["{s} is a city in {o}.", "{s} is located in {o}.", "{s} lies in {o}."],
    ("city", "natives"): ["People born in {s} include {o}.", "{o} {was} born in {s}.", "Natives of {s} include {o}."],
    ("city", "companies"): ["Companies headquartered in {s} include {o}.", "{o} {is} headquartered in {s}.",
                            "{s} is home to {o}."],
    ("city", "universities"): ["Universities in {s} include {o}.", "{o} {is} located in {s}."],
    ("country", "intro"): ["{s} is a country."],
    ("country", "cities"): ["Cities in {s} include {o}.", "{o} {is} in {s}.", "The cities of {s} include {o}."],
}

# Question chains: key = subject type + relations followed in order. 1 relation: single
# hop; 2 or 3: multi-hop. Several short phrasings each, so no single string is memorized.
QUESTION_TEMPLATES = {
    "person.born_in": ["Where was {s} born?", "In which city was {s} born?", "What is the birthplace of {s}?"],
    "person.birth_year": ["When was {s} born?", "In what year was {s} born?", "What is the birth year of {s}?"],
    "person.studied_at": ["Where did {s} study?", "Which university did {s} attend?",
                          "Where did {s} graduate from?"],
    "person.works_at": ["Where does {s} work?", "Which company employs {s}?", "Who is the employer of {s}?"],
    "company.founded_by": ["Who founded {s}?", "Who is the founder of {s}?", "Who started {s}?"],
    "company.headquartered_in": ["Where is {s} headquartered?", "In which city is {s} based?",
                                 "Where is the head office of {s}?"],
    "university.located_in": ["Where is {s} located?", "In which city is {s}?", "Where is the campus of {s}?"],
    "city.located_in": ["In which country is {s}?", "Which country is {s} in?", "{s} is a city in which country?"],
    # 2 hops
    "person.born_in.located_in": ["In which country was {s} born?", "Which country is {s} from?",
                                  "What is the home country of {s}?"],
    "company.founded_by.born_in": ["Where was the founder of {s} born?", "In which city was the founder of {s} born?"],
    "company.founded_by.birth_year": ["When was the founder of {s} born?",
                                      "In what year was the founder of {s} born?"],
    "company.founded_by.studied_at": ["Where did the founder of {s} study?",
                                      "Which university did the founder of {s} attend?"],
    "person.works_at.headquartered_in": ["Where is the company {s} works for headquartered?",
                                         "In which city is the employer of {s} based?"],
    "person.works_at.founded_by": ["Who founded the company {s} works for?",
                                   "Who is the founder of the employer of {s}?"],
    "person.studied_at.located_in": ["In which city did {s} study?", "In which city is the university {s} attended?"],
    "company.headquartered_in.located_in": ["In which country is {s} headquartered?",
                                            "In which country is {s} based?"],
    "university.located_in.located_in": ["In which country is {s}?", "In which country is {s} located?"],
    # 3 hops
    "company.founded_by.born_in.located_in": ["In which country was the founder of {s} born?",
                                              "Which country is the founder of {s} from?"],
    "person.works_at.headquartered_in.located_in": ["In which country is the company {s} works for headquartered?",
                                                    "In which country is the employer of {s} based?"],
    "person.studied_at.located_in.located_in": ["In which country did {s} study?",
                                                "In which country is the university {s} attended?"],
    "person.works_at.founded_by.born_in": ["Where was the founder of the company {s} works for born?",
                                           "In which city was the founder of the employer of {s} born?"],
    "person.works_at.founded_by.birth_year": ["When was the founder of the company {s} works for born?",
                                              "In what year was the founder of the employer of {s} born?"],
    "company.founded_by.studied_at.located_in": ["In which city did the founder of {s} study?",
                                                 "In which city is the university the founder of {s} attended?"],
}
QUESTION_TYPES = ("single", "2hop", "3hop", "unanswerable", "counterfactual")
HOP_TYPE = {1: "single", 2: "2hop", 3: "3hop"}

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
    split: str = "train"  # "test" only for held-out people


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
        """Training-text renderings: every entity but the test people, original (pre-edit)
        facts, test facts left out; `paraphrases` renderings each (duplicates removed).
        Returns (docs, n_duplicates_removed)."""
        exclude = frozenset(self.test_people())
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
                birth_years=(1940, 2005), reserved_names=()):
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


# ---- questions --------------------------------------------------------------------------
def _walk(world, key):
    """All chains for question key `key`: yields (subject, hops, complete) where hops is a
    list of (entity, relation, object) up to the end or up to a missing optional fact."""
    etype, *rels = key.split(".")
    for s in world.ids(etype):
        cur, hops = s, []
        for r in rels:
            obj = world.facts[cur].get(r)
            hops.append((cur, r, obj))
            if obj is None:
                break
            cur = obj
        yield s, hops, hops[-1][2] is not None


def _record(world, key, subject, hops, qtype, rng, answer=None):
    s_name = world.name(subject)
    hop_records = []
    for ent, rel, obj in hops:
        hop_records.append({"query": world.name(ent), "doc_id": ent,
                            "answer": ABSTAIN if obj is None else world.name(obj)})
    if answer is not None:
        hop_records[-1]["answer"] = answer
    touches = {e for e, _, _ in hops} | {o for _, _, o in hops if isinstance(o, str)}
    split = "test" if any(world.entities[x].split == "test" for x in touches) else "train"
    return {"id": None, "type": qtype, "question": rng.choice(QUESTION_TEMPLATES[key]).format(s=s_name),
            "answers": [hop_records[-1]["answer"]], "gold_doc_ids": [[h["doc_id"]] for h in hop_records],
            "hops": hop_records, "entity_split": split, "relation": key, "subject": s_name,
            "subject_id": subject}


def _balanced_sample(cands, n, rng):
    """Up to n candidates, round-robin over relations so rare relations are not drowned."""
    groups = {}
    for c in cands:
        groups.setdefault(c["relation"], []).append(c)
    for k in sorted(groups):
        rng.shuffle(groups[k])
    out, i = [], 0
    keys = sorted(groups)
    while len(out) < n and any(i < len(groups[k]) for k in keys):
        for k in keys:
            if i < len(groups[k]) and len(out) < n:
                out.append(groups[k][i])
        i += 1
    rng.shuffle(out)
    return out


def question_pools(world, seed):
    """Every possible question, as {(entity_split, type): [records]} (ids unset).
    Chains through an edited fact are left out; the edits become counterfactual questions."""
    rng = random.Random(f"questions:{seed}")
    edited = {(x["subject"], x["relation"]) for x in world.edits}
    pools = {}
    for key in QUESTION_TEMPLATES:
        for subject, hops, complete in _walk(world, key):
            if any((e, r) in edited for e, r, _ in hops):
                continue
            if complete:
                qtype = HOP_TYPE[len(hops)]
            elif hops[-1][1] in OPTIONAL_RELATIONS:
                qtype = "unanswerable"
            else:
                continue
            rec = _record(world, key, subject, hops, qtype, rng)
            pools.setdefault((rec["entity_split"], qtype), []).append(rec)
    cf = []
    for x in world.edits:
        s, r = x["subject"], x["relation"]
        key = f"{world.entities[s].type}.{r}"
        rec = _record(world, key, s, [(s, r, x["edited"])], "counterfactual", rng)
        rec["original_answer"] = world.name(x["original"])
        cf.append(rec)
    pools[("train", "counterfactual")] = cf
    return pools


def make_questions(world, seed, train_counts, eval_counts, n_known=0, val_fraction=0.25):
    """Question files {"train": [...], "val": [...], "test": [...]} and a summary.

    train_counts / eval_counts: {type: max count} for single, 2hop, 3hop, unanswerable.
      train: questions about train entities only (no test person anywhere in the chain).
      eval: questions touching a test person, split into val (val_fraction) and test.
    test also gets every counterfactual question and `n_known` single-hop questions about
    train facts (entity_split "train", "known": true), held out of train, so evaluation can
    compare closed-book accuracy on facts seen in pretraining with unseen ones.
    Counts are caps: when fewer questions exist, all are used and the summary says so.
    """
    rng = random.Random(f"sample:{seed}")
    pools = question_pools(world, seed)
    summary = {"requested": {}, "available": {}, "produced": {}}
    known = _balanced_sample(pools.get(("train", "single"), []), n_known, rng)
    known_ids = {id(r) for r in known}
    for r in known:
        r["known"] = True
    files = {"train": [], "val": [], "test": []}
    for qtype in ("single", "2hop", "3hop", "unanswerable"):
        pool = [r for r in pools.get(("train", qtype), []) if id(r) not in known_ids]
        files["train"] += _balanced_sample(pool, train_counts.get(qtype, 0), rng)
        summary["requested"][f"train.{qtype}"] = train_counts.get(qtype, 0)
        summary["available"][f"train.{qtype}"] = len(pool)
        ev = _balanced_sample(pools.get(("test", qtype), []), eval_counts.get(qtype, 0), rng)
        n_val = round(len(ev) * val_fraction)
        files["val"] += ev[:n_val]
        files["test"] += ev[n_val:]
        summary["requested"][f"eval.{qtype}"] = eval_counts.get(qtype, 0)
        summary["available"][f"eval.{qtype}"] = len(pools.get(("test", qtype), []))
    rng.shuffle(files["train"])
    files["test"] += pools[("train", "counterfactual")] + known
    summary["requested"]["known_single"] = n_known
    summary["available"]["known_single"] = len(pools.get(("train", "single"), []))
    for name, recs in files.items():
        counters = {}
        for r in recs:
            tag = "known" if r.get("known") else r["type"]
            counters[tag] = counters.get(tag, 0) + 1
            r["id"] = f"{name}-{tag}-{counters[tag]:05d}"
        summary["produced"][name] = len(recs)
    return files, summary
