"""The bundled task: continue the opening of a short review (films, restaurants, products, hotels, books).

Demonstrations are complete reviews of mixed sentiment, generated from templates and word lists written for
this project (fixed seed, nothing downloaded). The gold reward is VADER's compound sentiment of the response,
in [-1, 1]: the policy should learn to continue reviews positively.
"""

from __future__ import annotations

import random
from functools import cache

from rlhfkit.tasks.base import Task

DOMAINS = {
    "film": {
        "subjects": [
            "the new thriller",
            "this comedy",
            "the documentary",
            "the sequel",
            "this animated film",
            "the war drama",
            "the musical",
            "this horror film",
            "the biopic",
            "the space epic",
        ],
        "openings": [
            "I watched {s} last {when} and",
            "We saw {s} at the cinema on {day}.",
            "My verdict on {s}:",
            "Just got home from {s}, and",
            "Everyone told me to see {s}, so",
        ],
        "aspects": [
            "the acting",
            "the plot",
            "the soundtrack",
            "the ending",
            "the dialogue",
            "the pacing",
            "the camera work",
            "the cast",
        ],
    },
    "restaurant": {
        "subjects": [
            "the little cafe downtown",
            "the pizza place on the corner",
            "this sushi bar",
            "the new taco truck",
            "the steakhouse",
            "the vegan bistro",
            "the noodle shop",
            "the hotel restaurant",
            "the bakery near the station",
            "the curry house",
        ],
        "openings": [
            "We had dinner at {s} on {day}.",
            "I went to {s} last {when} and",
            "Lunch today was at {s}:",
            "Our family tried {s} for a birthday, and",
            "A quick review of {s}:",
        ],
        "aspects": [
            "the food",
            "the service",
            "the staff",
            "the prices",
            "the dessert",
            "the atmosphere",
            "the portions",
            "the coffee",
        ],
    },
    "product": {
        "subjects": [
            "this phone",
            "the wireless headphones",
            "this blender",
            "the new laptop",
            "this backpack",
            "the smart watch",
            "this coffee machine",
            "the running shoes",
            "this desk lamp",
            "the electric kettle",
        ],
        "openings": [
            "I bought {s} a {period} ago and",
            "After a {period} with {s},",
            "My honest take on {s}:",
            "I ordered {s} on {day}, and",
            "So I finally tried {s}:",
        ],
        "aspects": [
            "the battery",
            "the screen",
            "the sound",
            "the design",
            "the price",
            "the build quality",
            "the delivery",
            "the instructions",
        ],
    },
    "hotel": {
        "subjects": [
            "the seaside hotel",
            "this hostel",
            "the airport hotel",
            "the mountain lodge",
            "the city centre hotel",
            "this bed and breakfast",
            "the resort",
            "the motel by the highway",
        ],
        "openings": [
            "We stayed at {s} last {when} and",
            "Two nights at {s}:",
            "I booked {s} for a {period}, and",
            "Checking out of {s} today,",
        ],
        "aspects": [
            "the room",
            "the bed",
            "the breakfast",
            "the staff",
            "the view",
            "the pool",
            "the wifi",
            "the location",
        ],
    },
    "book": {
        "subjects": [
            "the new mystery novel",
            "this cookbook",
            "the memoir",
            "this fantasy series",
            "the history book",
            "this self-help book",
            "the poetry collection",
            "the travel guide",
        ],
        "openings": [
            "I finished {s} last {when} and",
            "My book club read {s}, and",
            "A few thoughts on {s}:",
            "I picked up {s} on {day}, and",
        ],
        "aspects": [
            "the writing",
            "the characters",
            "the story",
            "the ending",
            "the recipes",
            "the pictures",
            "the first chapter",
            "the cover",
        ],
    },
}
WHEN = ["night", "week", "weekend", "month", "summer", "winter"]
DAYS = ["Monday", "Friday", "Saturday", "Sunday", "a rainy Tuesday"]
PERIODS = ["week", "month", "year", "few days"]

POSITIVE = [
    "great",
    "wonderful",
    "excellent",
    "superb",
    "lovely",
    "amazing",
    "fantastic",
    "brilliant",
    "charming",
    "perfect",
    "delightful",
    "impressive",
]
NEGATIVE = [
    "terrible",
    "awful",
    "dull",
    "boring",
    "disappointing",
    "horrible",
    "poor",
    "bland",
    "annoying",
    "mediocre",
    "ugly",
    "painful",
]
NEUTRAL = ["okay", "fine", "average", "ordinary", "standard", "simple", "plain", "typical"]
POSITIVE_CLOSE = [
    "I would recommend it to anyone.",
    "I loved it.",
    "I will definitely be back.",
    "Highly recommended.",
    "It made my day.",
    "Worth every penny.",
]
NEGATIVE_CLOSE = [
    "I would not recommend it.",
    "What a waste of money.",
    "Never again.",
    "I was really disappointed.",
    "Avoid it.",
    "I regret it.",
]
NEUTRAL_CLOSE = ["It was fine overall.", "Nothing special.", "It did the job.", "Maybe I will try again."]
LINKS = {"same": [", and", ", and also", "; even"], "contrast": [", but", ", although", "; however,"]}


def _fill(template: str, rng: random.Random, subject: str) -> str:
    return template.format(s=subject, when=rng.choice(WHEN), day=rng.choice(DAYS), period=rng.choice(PERIODS))


def _completion(rng: random.Random, domain: dict, mood: str) -> str:
    """A short continuation: one or two aspect clauses and sometimes a closing sentence."""
    words = {"positive": POSITIVE, "negative": NEGATIVE, "neutral": NEUTRAL}
    first, second = rng.sample(domain["aspects"], 2)
    if mood == "mixed":
        moods = rng.sample(["positive", "negative"], 2)
        text = (
            f" {first} was {rng.choice(words[moods[0]])}{rng.choice(LINKS['contrast'])} {second} was "
            f"{rng.choice(words[moods[1]])}."
        )
        return text
    text = f" {first} was {rng.choice(words[mood])}"
    if rng.random() < 0.6:
        text += f"{rng.choice(LINKS['same'])} {second} was {rng.choice(words[mood])}"
    text += "."
    if rng.random() < 0.5:
        closing = {"positive": POSITIVE_CLOSE, "negative": NEGATIVE_CLOSE, "neutral": NEUTRAL_CLOSE}[mood]
        text += " " + rng.choice(closing)
    return text


def all_openings() -> list[tuple[str, str]]:
    """Every distinct (opening, domain) the templates produce with a fixed seed, in a fixed order."""
    rng = random.Random(0)
    openings = set()
    for name, domain in DOMAINS.items():
        for template in domain["openings"]:
            for subject in domain["subjects"]:
                for _ in range(3):  # a few fillings of when / day / period
                    openings.add((_fill(template, rng, subject), name))
    return sorted(openings)


@cache
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def gold(prompt: str, response: str) -> float:
    """VADER compound sentiment of the response alone, in [-1, 1] (the prompt is neutral by design)."""
    return float(_analyzer().polarity_scores(response)["compound"])


def sentiment_task(n_demonstrations: int = 4000, n_eval_prompts: int = 128, seed: int = 0) -> Task:
    """Openings split into training and held-out sets; demonstrations only continue training openings."""
    rng = random.Random(seed)
    openings = all_openings()
    rng.shuffle(openings)
    held_out, train = openings[:n_eval_prompts], openings[n_eval_prompts:]
    moods = ["positive", "negative", "neutral", "mixed"]
    demonstrations = []
    for _ in range(n_demonstrations):
        prompt, domain = rng.choice(train)
        demonstrations.append(
            {"prompt": prompt, "completion": _completion(rng, DOMAINS[domain], rng.choice(moods))}
        )
    return Task("sentiment", demonstrations, [p for p, _ in train], [p for p, _ in held_out], gold)
