"""A synthetic catalog, users and interactions with structure a model can find.

Planted structure: every item belongs to a topic (its category), with tags and title words
drawn mostly from that topic; every user prefers a few topics; a session tends to stay
on the topic of the previous item; within a topic, items are chosen by a skewed (Zipf)
popularity. So recent behaviour predicts the next item much better than popularity alone,
and a popularity baseline is still a fair opponent.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from towers.dataset import Dataset, DatasetError, Interaction

_DAY = 86_400.0


@dataclass(frozen=True)
class SynthConfig:
    items: int = 3000
    users: int = 2000
    topics: int = 20
    mean_interactions: float = 25.0
    stay_on_topic: float = 0.7  # chance the next item shares the previous item's topic
    popular_noise: float = 0.05  # chance of a globally popular item, whatever the topic
    zipf: float = 0.6  # popularity exponent within a topic
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    days: int = 60
    seed: int = 0

    def __post_init__(self) -> None:
        if self.items < self.topics:
            raise DatasetError(f"{self.items} items cannot cover {self.topics} topics",
                               f"ask for at least {self.topics} items")


def generate(config: SynthConfig = SynthConfig()) -> Dataset:
    rng = np.random.default_rng(config.seed)
    topic_tags = [[f"t{t}-tag{j}" for j in range(12)] for t in range(config.topics)]
    topic_words = [[f"w{t}x{j}" for j in range(15)] for t in range(config.topics)]
    generic_tags = [f"generic{j}" for j in range(30)]
    countries = [f"c{j}" for j in range(10)]

    item_topic = rng.permutation(np.arange(config.items) % config.topics)  # no empty topic
    popularity = 1.0 / (1.0 + rng.permutation(config.items)) ** config.zipf
    items: list[dict[str, Any]] = []
    for i in range(config.items):
        t = int(item_topic[i])
        tags = list(rng.choice(topic_tags[t], rng.integers(2, 5), replace=False))
        if rng.random() < 0.5:
            tags.append(str(rng.choice(generic_tags)))
        words = list(rng.choice(topic_words[t], rng.integers(3, 6)))
        words.append(str(rng.choice(topic_words[int(rng.integers(config.topics))])))
        items.append({
            "_id": f"i{i}",
            "title": " ".join(words),
            "category": f"cat{t}",
            "tags": [str(tag) for tag in tags],
            "price": float(np.round(rng.lognormal(3 + t % 4, 0.5), 2)),
            "created_at": config.start - timedelta(days=float(rng.uniform(1, 365))),
        })
    by_topic = [np.flatnonzero(item_topic == t) for t in range(config.topics)]
    topic_p = [popularity[ids] / popularity[ids].sum() for ids in by_topic]
    global_p = popularity / popularity.sum()

    users, interactions = [], []
    span = config.days * _DAY
    for u in range(config.users):
        preference = rng.dirichlet(np.full(config.topics, 0.15))
        favourite = int(preference.argmax())
        users.append({
            "_id": f"u{u}",
            "country": countries[favourite % len(countries)] if rng.random() < 0.6
            else str(rng.choice(countries)),
            "age": int(np.clip(rng.normal(35, 10), 16, 80)),
            "signup_at": config.start - timedelta(days=float(rng.uniform(1, 1000))),
        })
        count = 3 + int(rng.poisson(config.mean_interactions))
        times = np.sort(rng.uniform(0, span, count)) + config.start.timestamp()
        topic, seen = favourite, set()
        for ts in times:
            if rng.random() < config.popular_noise:
                item = int(rng.choice(config.items, p=global_p))
            else:
                if rng.random() >= config.stay_on_topic:
                    topic = int(rng.choice(config.topics, p=preference))
                item = int(rng.choice(by_topic[topic], p=topic_p[topic]))
            if item in seen:  # one more draw keeps repeats rare without forbidding them
                item = int(rng.choice(by_topic[topic], p=topic_p[topic]))
            seen.add(item)
            topic = int(item_topic[item])
            interactions.append(Interaction(f"u{u}", f"i{item}", round(float(ts), 3)))  # BSON: ms
    counts = Counter(interaction.item_id for interaction in interactions)
    for document in items:  # the counter a feed keeps for its "hot" channel
        document["popularity"] = float(counts[str(document["_id"])])
    return Dataset(items=items, users=users, interactions=interactions)
