"""The sentences the synthetic world speaks: document templates and question templates.

Kept apart from world.py so the text can be read (and extended) in one place; world.py
draws names that clash with none of these words.
"""

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
