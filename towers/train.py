"""Training: in-batch softmax with logQ sampling-bias correction (Yi et al., RecSys 2019).

In-batch negatives are the other examples' items, so popular items show up as negatives
in proportion to their frequency; subtracting log q(item) from each logit removes that
bias. A repeated item in one batch would be a false negative, so those logits are masked
("accidental hits"). ``train`` is a plain function; the CLI is a thin layer on top.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from towers.artifact import ModelArtifact, export_artifact
from towers.coldstart import DEFAULT_K, ColdStart, KnownItems, Method
from towers.dataset import Dataset, DatasetError, EvalCase, Example, Split, leave_last_out
from towers.evaluate import K_VALUES, evaluate_popularity, evaluate_vectors, usable_cases
from towers.features import OOV, PAD, FeatureSpec, ItemId, default_spec
from towers.featurizer import Featurizer
from towers.model import TwoTower

_DAY = 86_400.0
PROBE_USERS = 256  # probe queries kept in an artifact: ~64 KB at 64 dims


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 6
    batch_size: int = 512
    learning_rate: float = 3e-3
    temperature: float = 0.05  # sharpens the softmax over unit-length dot products
    logq: float = 1.0  # strength of the sampling-bias correction (0: none, 1: full)
    dims: int = 64  # output vector size: the dense_vector dims
    hidden: int = 256
    embedding_dim: int = 32
    history_len: int = 50
    max_examples_per_user: int = 0  # > 0 keeps only each user's newest examples; 0: all
    id_dropout: float = 0.1  # teaches the item tower to embed an unseen id from content
    weight_decay: float = 0.0  # Adam's L2 penalty
    recency_half_life: float = 3.0  # of the user tower's recent-items pooling, in positions
    # feed each example's age (days before the newest example) to the user tower, 0 when
    # serving (YouTube DNN). Off by default: it teaches the tower that "now" means the
    # items of the log's last days, which is wrong for every user whose history ended
    # earlier (MovieLens leave-last-out HR@100: 0.30 with it, 0.41 without; no change on
    # the synthetic set). Turn it on when every request is served right after the log.
    example_age: bool = False
    # how the version embeds items it does not know by id (towers.coldstart): measured
    # on held-out new items, content-only won on the synthetic set, the mean of the 5
    # nearest known items by 0.7 points of HR@100 on MovieLens (README)
    cold_start: Method = "content"
    cold_start_k: int = DEFAULT_K
    seed: int = 0
    k_values: tuple[int, ...] = K_VALUES
    # the epoch exported is the one with the best validation ``monitor``; training stops
    # after ``patience`` epochs without a better one (0: run every epoch)
    monitor: str = "hr@100"
    patience: int = 2

    def __post_init__(self) -> None:
        allowed = {f"{m}@{k}" for m in ("hr", "ndcg") for k in self.k_values}
        if self.monitor not in allowed:
            raise ValueError(f"monitor must be one of {sorted(allowed)}, not {self.monitor!r}")


@dataclass
class EpochLog:
    epoch: int
    loss: float
    seconds: float
    metrics: dict[str, float]  # on the test cases (each user's last interaction)
    validation: dict[str, float] = field(default_factory=dict)  # second-to-last


@dataclass
class TrainResult:
    model: TwoTower
    featurizer: Featurizer
    split: Split
    baseline: dict[str, float]  # most-popular, on the same split
    config: TrainConfig = field(default_factory=TrainConfig)
    history: list[EpochLog] = field(default_factory=list)
    examples_per_second: float = 0.0
    best_epoch: int = 0  # the epoch whose weights the model holds
    known: KnownItems | None = None  # the catalog items learned by id (cold start)

    @property
    def metrics(self) -> dict[str, float]:
        """Test metrics of the exported (best validation) epoch."""
        return self.history[self.best_epoch - 1].metrics if self.history else {}

    def probe_queries(self, limit: int = PROBE_USERS) -> np.ndarray:
        """User vectors of held-out users (validation, else test): the queries this model
        will really send, for probes of the index it builds (int8 recall)."""
        self.model.eval()
        cases = (self.split.validation or self.split.cases)[:limit]
        return user_vectors_for(self.model, self.featurizer, cases)

    def export(self, directory: Path, name: str, version: str,
               training: Mapping[str, Any] | None = None,
               cold_start: ColdStart | None = None) -> ModelArtifact:
        """Write this model as a version: towers, probe queries, the known items, and
        the cold start (``config``'s, unless measured and passed in)."""
        return export_artifact(
            self.model, self.featurizer, directory, name, version, training or {},
            self.probe_queries(), self.known,
            cold_start or ColdStart(items=self.config.cold_start, k=self.config.cold_start_k))


def _rows(inputs: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {key: tensor[index] for key, tensor in inputs.items()}


def _drop_ids(inputs: dict[str, torch.Tensor], spec: FeatureSpec, rate: float,
              generator: torch.Generator) -> dict[str, torch.Tensor]:
    if rate <= 0:
        return inputs
    dropped = dict(inputs)
    for feature in spec.item:
        if isinstance(feature, ItemId):
            ids = inputs[feature.name]
            drop = (torch.rand(ids.shape, generator=generator) < rate) & (ids != PAD)
            dropped[feature.name] = torch.where(drop, torch.full_like(ids, OOV), ids)
    return dropped


def item_vectors(model: TwoTower, inputs: dict[str, torch.Tensor],
                 batch: int = 4096) -> np.ndarray:
    n = len(next(iter(inputs.values())))
    with torch.no_grad():
        parts = [model.item_tower(_rows(inputs, torch.arange(s, min(s + batch, n))))
                 for s in range(0, n, batch)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, model.out_dim), np.float32)


def user_vectors_for(model: TwoTower, featurizer: Featurizer,
                     cases: Sequence[EvalCase]) -> np.ndarray:
    """User vectors as serving computes them: example age 0, state just before the target."""
    if not cases:
        return np.zeros((0, model.out_dim), np.float32)
    inputs = featurizer.users([c.user for c in cases], at=[c.ts for c in cases])
    with torch.no_grad():
        vectors: np.ndarray = model.user_tower(inputs).numpy()
    return vectors


def example_inputs(featurizer: Featurizer, examples: Sequence[Example], train_end: float,
                   example_age: bool) -> dict[str, torch.Tensor]:
    """User-tower inputs of training examples: each user as they were at the example's
    time, and (``example_age``) the example's age in log1p days before ``train_end``,
    else 0 as when serving."""
    ages = [math.log1p((train_end - e.ts) / _DAY) for e in examples] if example_age else None
    return featurizer.users([e.user for e in examples], at=[e.ts for e in examples],
                            example_age_days=ages)


def in_batch_softmax_loss(users: torch.Tensor, items: torch.Tensor, item_rows: torch.Tensor,
                          log_q: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row i's positive is item i; the batch's other items are its negatives.

    ``log_q[j]`` is the log sampling probability of item j (its training frequency): the
    correction that keeps popular items from being over-penalised as negatives. A column
    holding the same item as row i's positive is an accidental hit and is masked.
    """
    logits = users @ items.T / temperature - log_q.unsqueeze(0)
    accidental = (item_rows.unsqueeze(0) == item_rows.unsqueeze(1)) & ~torch.eye(
        len(item_rows), dtype=torch.bool)
    logits = logits.masked_fill(accidental, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(item_rows)))


def train(dataset: Dataset, config: TrainConfig = TrainConfig(),
          spec: FeatureSpec | None = None,
          on_epoch: Callable[[EpochLog], None] | None = None) -> TrainResult:
    """Fit the featurizer and the towers; evaluate after every epoch on the validation and
    the test cases (each epoch's log goes to ``on_epoch``: the CLI prints it) and keep the
    weights of the epoch with the best validation ``config.monitor``."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    spec = spec or default_spec(config.embedding_dim, config.recency_half_life)
    split = leave_last_out(dataset, config.history_len, config.max_examples_per_user)
    items = dataset.items_for(spec.relations)
    featurizer = Featurizer.fit(spec, items, dataset.users, split.item_counts,
                                now=split.train_end)
    item_ids = [str(item["_id"]) for item in dataset.items]
    row_of = {item_id: row for row, item_id in enumerate(item_ids)}
    catalog = featurizer.items(items, at=split.train_end)

    examples = [e for e in split.train if e.item_id in row_of]
    if not examples:
        raise DatasetError("no training example refers to an item in the catalog",
                           "the interactions' item ids must be the items' _id texts: check "
                           "the import mapping's item column against the items' id column")
    users = example_inputs(featurizer, examples, split.train_end, config.example_age)
    targets = torch.tensor([row_of[e.item_id] for e in examples])
    frequency = torch.bincount(targets, minlength=len(item_ids)).float()
    # unseen rows are never sampled: their clamp never matters
    log_q = config.logq * torch.log(frequency / frequency.sum()).clamp(min=-30.0)
    cases = usable_cases(split.cases, row_of)

    validation = usable_cases(split.validation, row_of)
    model = TwoTower(spec, featurizer.state, out_dim=config.dims, hidden=config.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate,
                                 weight_decay=config.weight_decay)
    baseline = evaluate_popularity(split.item_counts, item_ids, cases, config.k_values)
    result = TrainResult(model=model, featurizer=featurizer, split=split, baseline=baseline,
                         config=config)
    trained, train_seconds = 0, 0.0
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    for epoch in range(1, config.epochs + 1):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(examples), generator=generator)
        batches = [order[s:s + config.batch_size] for s in range(0, len(order), config.batch_size)]
        total = 0.0
        for batch in batches:
            rows = targets[batch]
            u = model.user_tower(_rows(users, batch))
            v = model.item_tower(_drop_ids(_rows(catalog, rows), spec, config.id_dropout,
                                           generator))
            loss = in_batch_softmax_loss(u, v, rows, log_q[rows], config.temperature)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += loss.item() * len(batch)
        train_seconds += time.perf_counter() - started
        trained += len(examples)
        model.eval()
        vectors = item_vectors(model, catalog)
        metrics = evaluate_vectors(vectors, item_ids, user_vectors_for(model, featurizer, cases),
                                   cases, config.k_values)
        checked = evaluate_vectors(vectors, item_ids,
                                   user_vectors_for(model, featurizer, validation), validation,
                                   config.k_values) if validation else {}
        result.history.append(EpochLog(epoch, total / len(examples),
                                       time.perf_counter() - started, metrics, checked))
        if on_epoch is not None:
            on_epoch(result.history[-1])
        # no validation users (tiny data): the last epoch is the best one known
        score = checked.get(config.monitor, float(epoch)) if checked else float(epoch)
        if best is None or score > best[0]:
            best = (score, copy.deepcopy(model.state_dict()))
            result.best_epoch = epoch
        elif config.patience and epoch - result.best_epoch >= config.patience:
            break
    if best is not None:
        model.load_state_dict(best[1])
    model.eval()
    result.known = KnownItems.of(spec, catalog, lambda inputs: item_vectors(model, inputs))
    result.examples_per_second = trained / train_seconds if train_seconds else 0.0
    return result

