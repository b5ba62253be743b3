"""The Recaller: one request -> user state (one MongoDB read) -> serving version -> user
vector -> every channel's searches in one ``_msearch`` on the concrete index -> fusion.

A cold-start user (no profile, no history) gets no kNN and a quota mix of the channels
that need no history, rather than whatever one popularity channel would fill alone.
A channel that errors or times out is left out (or kept partial) and named in
``reasons`` with ``degraded: true``; only a failure of the whole round trip is an error.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from elasticsearch import Elasticsearch
from pydantic import BaseModel

from indexer.canary_store import Canary, CanaryStore
from indexer.layout import VECTOR
from recall.canary import CanaryCollector, CanaryObserver
from recall.channels import CHANNELS, Channel, Context
from recall.fusion import quota, rrf
from recall.metrics import RecallMetrics
from recall.popularity import ClusterPopularity, Popular, Popularity
from recall.refresh import Refreshed
from recall.request import CanaryArm, RecallResponse, filter_clauses, request_model
from recall.seeds import SeedVectors
from recall.serving import Route, ServingResolver
from recall.settings import RecallConfig
from recall.state import UserStates
from runtime.clients import MongoDatabase
from towers.dataset import RECENT_ITEMS
from towers.registry import ModelRegistry

SEED_LOOKUP_THREADS = 8
SHADOW_QUEUE = 4  # canary overlap comparisons waiting at most; more are skipped
log = logging.getLogger("esrec.recall")


# the stages of a request, in order: resolve (request validation, serving version; an
# alias lookup once per alias_ttl_s), state (MongoDB read), user_tower, cluster (the
# nearest centroid and that cluster's popular items, re-read every popularity_ttl_s),
# seeds (the wait for the i2i mget that the user tower did not hide), queries, msearch,
# rank (each channel's hits -> its ranked list, the seen items out), fusion
STAGES = ("resolve", "state", "user_tower", "cluster", "seeds", "queries", "msearch",
          "rank", "fusion")


class Stopwatch:
    """Wall time per stage of one request, for the response and the stage histogram."""

    def __init__(self) -> None:
        self.started = self.mark = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round((now - self.mark) * 1000, 3)
        self.mark = now


class Recaller:
    def __init__(self, es: Elasticsearch, db: MongoDatabase, registry: ModelRegistry,
                 settings: RecallConfig, metrics: RecallMetrics | None = None) -> None:
        self.es = es
        self.settings = settings
        self.request_model = request_model(settings)  # validates the channel/filter config
        self.states = UserStates(db, settings)
        popularity = Popularity(db, settings)
        self.popularity = Refreshed(lambda _: popularity.top(),
                                    settings.recall.popularity_ttl_s, "the popular items")
        self.cluster_popularity = ClusterPopularity(db, settings)
        self._cluster_tops: dict[tuple[str, int], Refreshed[Popular]] = {}
        canaries = CanaryStore(db, settings)
        self.resolver = ServingResolver(es, registry, settings.index.serving_alias,
                                        settings.recall.alias_ttl_s, canaries)
        self.canary = CanaryObserver(canaries)
        self.channels: dict[str, Channel] = {
            name: CHANNELS[name](config, settings.recall)
            for name, config in settings.recall.channels.items() if config.enabled}
        self.metrics = metrics or RecallMetrics()
        # each labelled child looked up once: a lookup costs about what an observation does
        self._channel_took = {name: self.metrics.channel_took.labels(name)
                              for name in self.channels}
        self._stage = {stage: self.metrics.stage.labels(stage) for stage in STAGES}
        self._seeds_kept = self.metrics.seeds.labels("kept")
        self._seeds_looked_up = self.metrics.seeds.labels("looked_up")
        self.metrics.registry.register(CanaryCollector(self._canary_or_none))
        self.seed_vectors = SeedVectors(settings.recall.i2i_seed_cache_items,
                                        settings.recall.i2i_seed_ttl_s)
        self._pool = ThreadPoolExecutor(SEED_LOOKUP_THREADS, thread_name_prefix="esrec-i2i")
        self._shadows = ThreadPoolExecutor(1, thread_name_prefix="esrec-canary-shadow")
        self._shadow_slot = threading.Semaphore(SHADOW_QUEUE)

    def recall(self, request: BaseModel | dict[str, Any]) -> RecallResponse:
        """Recall for one user; ``request`` is a RecallRequest (or a dict validated as one)."""
        watch = Stopwatch()
        valid = self._valid(request)
        route: Route | None = None
        try:
            route = self.resolver.route(valid.user_id)
            response = self._recall(valid, watch, route)
        except Exception:
            self._observe(route, watch, None)
            raise
        self._observe(route, watch, response)
        if route.arm == "candidate" and \
                random.random() < self.settings.recall.canary_overlap_sample:
            self._shadow(valid, route, response)
        return response

    def _valid(self, request: BaseModel | dict[str, Any]) -> Any:
        return request if isinstance(request, self.request_model) else \
            self.request_model.model_validate(request)

    def explain(self, request: BaseModel | dict[str, Any]
                ) -> tuple[RecallResponse, dict[str, list[str]]]:
        """A recall and every channel's own ranked list (what the fusion saw): for
        studies of the fusion offline (bench.quality); no metrics are recorded."""
        valid = self._valid(request)
        lists: dict[str, list[str]] = {}
        response = self._recall(valid, Stopwatch(), self.resolver.route(valid.user_id), lists)
        return response, lists

    def _observe(self, route: Route | None, watch: Stopwatch,
                 response: RecallResponse | None) -> None:
        """Latency by outcome and answering version, stage timings, the canary arm's."""
        seconds = time.perf_counter() - watch.started
        outcome = "error" if response is None else "degraded" if response.degraded else "ok"
        self.metrics.latency.labels(outcome, route.version.model if route else "none"
                                    ).observe(seconds)
        if response is not None:
            for stage, ms in watch.stages.items():
                self._stage[stage].observe(ms / 1000)
        if route is not None and route.canary is not None and route.arm is not None:
            self.canary.record(route.canary, route.arm, seconds, error=response is None,
                               empty=response is not None and not response.candidates,
                               degraded=response is not None and response.degraded)

    def _shadow(self, request: Any, route: Route, response: RecallResponse) -> None:
        """In the background: what the baseline would have answered this candidate-arm
        request, and the overlap of the two (skipped when shadows queue up)."""
        if route.canary is None or not self._shadow_slot.acquire(blocking=False):
            return
        canary = route.canary

        def compare() -> None:
            try:
                baseline = self._recall(request, Stopwatch(), Route(self.resolver.current()))
                ours = {candidate.item_id for candidate in response.candidates}
                theirs = {candidate.item_id for candidate in baseline.candidates}
                self.canary.overlap(canary, len(ours & theirs) / max(len(theirs), 1))
            except Exception as error:  # a comparison only: the answer was given
                log.debug("canary shadow request failed", extra={"error": repr(error)})
            finally:
                self._shadow_slot.release()

        self._shadows.submit(compare)

    def _canary_or_none(self) -> Canary | None:
        try:
            return self.resolver.canary()
        except Exception:  # no serving version yet: no canary to show
            return None

    def _recall(self, request: Any, watch: Stopwatch, route: Route,
                lists: dict[str, list[str]] | None = None) -> RecallResponse:
        serving = route.version
        watch.lap("resolve")
        view = self.states.read(request.user_id, request.recent_items)
        popular = self.popularity.current()
        watch.lap("state")
        user = view.document
        weights = request.channels or {name: channel.settings.weight
                                       for name, channel in self.channels.items()}
        seed_ids = user.get(RECENT_ITEMS, [])[:self.settings.recall.i2i_items] \
            if "i2i" in weights else []
        kept, missing = self.seed_vectors.kept(serving.index, seed_ids)
        if seed_ids:
            self._seeds_kept.inc(len(kept))
            self._seeds_looked_up.inc(len(missing))
        # the i2i seeds not kept are looked up while the user tower runs here
        lookup = self._pool.submit(self._seed_docs, serving.index, missing) if missing else None
        user_vector = serving.artifact.embed_users([user])[0] if user else None
        watch.lap("user_tower")
        cluster = None if serving.clusters is None or user_vector is None else int(
            serving.clusters.assign(user_vector[None])[0])
        cluster_popular = self._cluster_top(serving.clusters.lineage, cluster) if (
            serving.clusters is not None and cluster is not None and "cluster" in weights
        ) else None
        watch.lap("cluster")
        in_query = self.settings.recall.seen_in_query
        ctx = Context(user=user, user_vector=user_vector, seen=view.seen,
                      seeds=self._seeds(seed_ids, kept, missing, lookup, serving.index),
                      filters=filter_clauses(request.filters), popular=popular,
                      seen_in_query=in_query,
                      overfetch=min(max(0, len(view.seen) - in_query),
                                    self.settings.recall.max_overfetch),
                      index=serving.index, cluster=cluster, cluster_popular=cluster_popular)
        watch.lap("seeds")
        plan: list[tuple[str, int]] = []  # (channel, how many searches)
        searches: list[dict[str, Any]] = []
        for name in weights:
            bodies = self.channels[name].searches(ctx)
            plan.append((name, len(bodies)))
            for body in bodies:
                searches += [{"index": serving.index}, body]
        watch.lap("queries")
        responses = self.es.msearch(searches=searches)["responses"] if searches else []
        watch.lap("msearch")
        ranked, reasons = self._rank(plan, responses, ctx)
        watch.lap("rank")
        if lists is not None:
            lists.update({name: [item for item, _ in pairs] for name, pairs in ranked.items()})
        fuse_weights = {name: weights[name] for name in ranked}
        if self.settings.recall.fusion == "quota" or not user:  # a cold start gets a mix
            fused = quota(ranked, fuse_weights, request.k, cluster)
        else:
            fused = rrf(ranked, fuse_weights, request.k, self.settings.recall.rrf_k, cluster)
        watch.lap("fusion")
        # built from values esrec made itself: validating ~100 candidates would cost ~0.5 ms
        return RecallResponse.model_construct(
            user_id=request.user_id, request_id=uuid.uuid4().hex, model=serving.model,
            index=serving.index, canary=None if route.canary is None or route.arm is None
            else CanaryArm(id=route.canary.id, arm=route.arm),
            cold_start=not user, cluster=cluster, degraded=bool(reasons), reasons=reasons,
            took_ms=round((watch.mark - watch.started) * 1000, 3), stages_ms=watch.stages,
            candidates=fused)

    def _cluster_top(self, lineage: str, cluster: int) -> Popular:
        """A cluster's popular items, re-read in the background like ``hot``'s."""
        key = (lineage, cluster)
        top = self._cluster_tops.get(key)
        if top is None:
            top = self._cluster_tops.setdefault(key, Refreshed(
                lambda _: self.cluster_popularity.top(lineage, cluster),
                self.settings.recall.popularity_ttl_s, f"cluster {cluster} of {lineage}"))
        return top.current()

    def _seed_docs(self, index: str, ids: list[str]) -> list[dict[str, Any]]:
        """The items as stored in the serving index (the seed thread's only work: it waits
        on Elasticsearch and takes no CPU from the user tower)."""
        docs: list[dict[str, Any]] = self.es.mget(index=index, ids=ids,
                                                  source_includes=[VECTOR])["docs"]
        return docs

    def _seeds(self, ids: list[str], kept: dict[str, np.ndarray | None], missing: list[str],
               lookup: Future[list[dict[str, Any]]] | None, index: str
               ) -> dict[str, np.ndarray]:
        """The seeds' vectors in the user's order, those looked up now kept for later."""
        if lookup is not None:
            kept.update(self.seed_vectors.keep(index, missing, lookup.result()))
        return {item: vector for item in ids if (vector := kept.get(item)) is not None}

    def _rank(self, plan: list[tuple[str, int]], responses: list[dict[str, Any]],
              ctx: Context) -> tuple[dict[str, list[tuple[str, float]]], dict[str, str]]:
        ranked: dict[str, list[tuple[str, float]]] = {}
        reasons: dict[str, str] = {}
        # the other seen items were in every search's must_not: usually none are left to
        # check, and no hit is looked at (~20 us a request)
        over_fetched = ctx.over_fetched
        position = 0
        for name, count in plan:
            mine, position = responses[position:position + count], position + count
            errors = [r["error"] for r in mine if "error" in r]
            if errors:
                error = errors[0]
                reasons[name] = f"{error.get('type', 'error')}: {error.get('reason', error)}" \
                    if isinstance(error, dict) else str(error)
                self.metrics.degraded.labels(name, "error").inc()
                continue
            took = self._channel_took[name]
            for response in mine:
                took.observe(response.get("took", 0) / 1000)
            if any(response.get("timed_out") for response in mine):
                reasons[name] = "timed out: partial results"
                self.metrics.degraded.labels(name, "timeout").inc()
            channel = self.channels[name]
            pairs = channel.rank(mine, ctx)
            if over_fetched:
                pairs = [pair for pair in pairs if pair[0] not in over_fetched]
            ranked[name] = pairs[:channel.settings.size]
        return ranked, reasons
