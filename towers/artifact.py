"""A model version on disk: each tower exported on its own, plus a checksummed manifest.

    <dir>/manifest.json      name, version, dims, similarity, feature spec, fitted
                             statistics, training metrics, torch version, sha256 per file
    <dir>/item_tower.pt2     torch.export programs: serving needs no training code
    <dir>/user_tower.pt2     (TorchScript is deprecated as of torch 2.5; torch.export is
                             its successor)
    <dir>/vocabularies.json  fitted vocabularies per embedding table
    <dir>/probe_queries.npy  optional: user-tower vectors of held-out (validation) users,
                             the real query distribution of this version, for probes
                             such as the int8 quantization check
    <dir>/known_items.npz    optional: the content-only and full vectors of the items
                             the version learned by id, for the ``neighbours`` cold start
                             of items it did not (towers.coldstart)

The artifact's identity is the sha256 of manifest.json, which pins every other file.
Loading verifies all of it and refuses anything corrupt or inconsistent.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn
from torch.export import Dim

from towers import tower_cache
from towers.coldstart import ColdStart, KnownItems
from towers.features import FeatureSpec
from towers.featurizer import Featurizer, FittedState
from towers.manifest import (
    FORMAT_VERSION,
    ITEM_TOWER,
    KNOWN_ITEMS,
    MANIFEST,
    OPTIONAL_FILES,
    PROBE_QUERIES,
    REQUIRED_FILES,
    USER_TOWER,
    VOCABULARIES,
    ArtifactError,
    Manifest,
    sha256_file,
)
from towers.model import TwoTower, side_features
from towers.numpy_tower import TOLERANCE as NUMPY_TOLERANCE
from towers.numpy_tower import NumpyTower
from towers.tower_cache import Weights

log = logging.getLogger("esrec.towers")
_MAX_BATCH = 1 << 20
# torch.export.load sets a process-wide deserializer: two threads loading at once fail
# ("_CURRENT_DESERIALIZER is already set"), e.g. recall's refresh loading a canary's
# candidate while another thread loads a version
_LOADING = threading.Lock()


def _export(tower: torch.nn.Module, example: dict[str, torch.Tensor], path: Path) -> None:
    batch = Dim("batch", min=1, max=_MAX_BATCH)
    program = torch.export.export(
        tower.eval(), (example,), dynamic_shapes=({key: {0: batch} for key in example},))
    torch.export.save(program, path)


def export_artifact(model: TwoTower, featurizer: Featurizer, directory: Path, name: str,
                    version: str, training: Mapping[str, Any],
                    probe_queries: np.ndarray | None = None,
                    known_items: KnownItems | None = None,
                    cold_start: ColdStart | None = None) -> ModelArtifact:
    """Write a model version to ``directory`` (which must not hold another artifact);
    ``TrainResult.export`` is how a training writes one."""
    if (directory / MANIFEST).exists():
        raise ArtifactError(f"{directory} already holds an artifact; pick an empty directory")
    cold_start = cold_start or ColdStart()
    if cold_start.items == "neighbours" and known_items is None:
        raise ArtifactError("the neighbours cold start needs the known items' vectors")
    directory.mkdir(parents=True, exist_ok=True)
    probe = Featurizer(featurizer.spec, featurizer.state)  # empty docs: valid all-default inputs
    _export(model.item_tower, probe.items([{}, {}]), directory / ITEM_TOWER)
    _export(model.user_tower, probe.users([{}, {}]), directory / USER_TOWER)
    (directory / VOCABULARIES).write_text(json.dumps(featurizer.state.vocabularies))
    files = list(REQUIRED_FILES)
    if probe_queries is not None and len(probe_queries):
        np.save(directory / PROBE_QUERIES, probe_queries.astype(np.float32), allow_pickle=False)
        files.append(PROBE_QUERIES)
    if known_items is not None and cold_start.items == "neighbours":
        np.savez(directory / KNOWN_ITEMS, content=known_items.content, full=known_items.full)
        files.append(KNOWN_ITEMS)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=name,
        version=version,
        dims=model.out_dim,
        similarity="dot_product",
        feature_spec=featurizer.spec,
        numeric_stats=featurizer.state.numeric,
        vocabulary_sizes={t: len(v) for t, v in featurizer.state.vocabularies.items()},
        training=dict(training),
        cold_start=cold_start,
        torch_version=torch.__version__,
        created_at=datetime.now(UTC).isoformat(),
        files={f: sha256_file(directory / f) for f in files},
    )
    (directory / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return ModelArtifact.load(directory)


@dataclass(frozen=True, eq=False)
class ModelArtifact:
    """A verified model version, ready to embed items and users."""

    directory: Path
    manifest: Manifest
    sha256: str
    item_tower: torch.nn.Module
    user_tower: torch.nn.Module
    featurizer: Featurizer
    probe_queries: np.ndarray | None = None  # (n, dims) user vectors of held-out users
    known_items: KnownItems | None = None  # for the neighbours cold start
    # the user tower in numpy (serving: one user a request), when it agrees with the
    # exported program; None: the program itself serves
    user_numpy: NumpyTower | None = None

    @classmethod
    def load(cls, directory: Path, expected_sha256: str | None = None) -> ModelArtifact:
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise ArtifactError(f"{directory} is not a model artifact: no {MANIFEST}")
        sha256 = sha256_file(manifest_path)
        if expected_sha256 is not None and sha256 != expected_sha256:
            raise ArtifactError(
                f"{directory}: manifest sha256 {sha256[:12]} is not the expected "
                f"{expected_sha256[:12]}")
        try:
            manifest = Manifest.model_validate_json(manifest_path.read_text())
        except ValidationError as error:
            raise ArtifactError(f"{manifest_path} is not a valid manifest: {error}") from None
        if manifest.format_version != FORMAT_VERSION:
            raise ArtifactError(f"{directory}: format {manifest.format_version} is not "
                                f"supported (this esrec reads format {FORMAT_VERSION})")
        listed = set(manifest.files)
        if not set(REQUIRED_FILES) <= listed <= {*REQUIRED_FILES, *OPTIONAL_FILES}:
            raise ArtifactError(f"{directory}: manifest lists {sorted(manifest.files)}, "
                                f"expected {sorted(REQUIRED_FILES)} (and optionally "
                                f"{sorted(OPTIONAL_FILES)})")
        for name, expected in manifest.files.items():
            path = directory / name
            if not path.is_file():
                raise ArtifactError(f"{directory}: {name} is missing")
            if sha256_file(path) != expected:
                raise ArtifactError(f"{directory}: {name} is corrupt (sha256 mismatch)")
        vocabularies = json.loads((directory / VOCABULARIES).read_text())
        sizes = {t: len(v) for t, v in vocabularies.items()}
        if sizes != manifest.vocabulary_sizes:
            raise ArtifactError(f"{directory}: vocabularies do not match the manifest")
        featurizer = Featurizer(manifest.feature_spec,
                                FittedState(vocabularies=vocabularies,
                                            numeric=manifest.numeric_stats))
        probe = Featurizer(featurizer.spec, featurizer.state)  # keeps real fallback counts clean
        item_tower, user_tower, user_weights = _towers(directory, manifest, sha256, probe)
        for side, tower, inputs in (("item", item_tower, probe.items([{}])),
                                    ("user", user_tower, probe.users([{}]))):
            dims = _run(tower, inputs).shape[1]
            if dims != manifest.dims:
                raise ArtifactError(f"{directory}: the {side} tower outputs {dims} dims, "
                                    f"the manifest says {manifest.dims}")
        probe_queries = None
        if PROBE_QUERIES in listed:
            probe_queries = np.load(directory / PROBE_QUERIES, allow_pickle=False)
            if probe_queries.ndim != 2 or probe_queries.shape[1] != manifest.dims:
                raise ArtifactError(f"{directory}: {PROBE_QUERIES} has shape "
                                    f"{probe_queries.shape}, not (n, {manifest.dims})")
        known_items = None
        if KNOWN_ITEMS in listed:
            with np.load(directory / KNOWN_ITEMS, allow_pickle=False) as arrays:
                known_items = KnownItems(arrays["content"], arrays["full"])
            if known_items.full.shape != known_items.content.shape or (
                    len(known_items.full) and known_items.full.shape[1] != manifest.dims):
                raise ArtifactError(f"{directory}: {KNOWN_ITEMS} does not fit "
                                    f"{manifest.dims} dims")
        if manifest.cold_start.items == "neighbours" and known_items is None:
            raise ArtifactError(f"{directory}: the manifest's neighbours cold start needs "
                                f"{KNOWN_ITEMS}")
        return cls(directory, manifest, sha256, item_tower, user_tower, featurizer,
                   probe_queries, known_items,
                   _numpy_tower(manifest.feature_spec, user_weights, user_tower, probe))

    def embed_items(self, documents: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Unit-length item vectors, one row per document, float32; an item the version
        does not know by id as its cold start says (``towers.coldstart``)."""
        if not documents:
            return np.zeros((0, self.manifest.dims), np.float32)
        inputs = self.featurizer.items(documents)
        vectors = _run(self.item_tower, inputs)
        if self.known_items is None:
            return vectors
        return self.known_items.apply(self.manifest.cold_start, self.featurizer.spec, inputs,
                                      vectors)

    def embed_users(self, documents: Sequence[Mapping[str, Any]],
                    at: Sequence[float] | None = None) -> np.ndarray:
        """Unit-length user vectors as serving computes them: example age 0, ages measured
        from now (or from ``at``, epoch seconds per document, for offline evaluation)."""
        if not documents:
            return np.zeros((0, self.manifest.dims), np.float32)
        if self.user_numpy is not None:
            return self.user_numpy(self.featurizer.user_arrays(documents, at=at))
        return _run(self.user_tower, self.featurizer.users(documents, at=at))


def _towers(directory: Path, manifest: Manifest, sha256: str,
            probe: Featurizer) -> tuple[nn.Module, nn.Module, Weights]:
    """The item and user towers, and the user tower's weights: rebuilt from the weights
    this machine kept (``towers.tower_cache``), else loaded from the exported programs,
    whose weights are kept once ``towers.model`` holding them computes what they do."""
    spec = manifest.feature_spec
    path = tower_cache.cache_path(sha256)
    kept = tower_cache.read(path)
    if kept is not None:
        try:
            return (tower_cache.rebuild(spec, "item", kept["item"]),
                    tower_cache.rebuild(spec, "user", kept["user"]), kept["user"])
        except (KeyError, RuntimeError, ValueError) as error:  # not this spec's towers
            log.warning("kept tower weights do not fit the version; loading the program",
                        extra={"path": str(path), "error": str(error)})
    try:
        with _LOADING:
            programs = {side: torch.export.load(directory / name)
                        for side, name in (("item", ITEM_TOWER), ("user", USER_TOWER))}
            modules = {side: program.module() for side, program in programs.items()}
    except Exception as error:  # torch raises many types for an unreadable program
        raise ArtifactError(
            f"{directory}: cannot load the exported towers with torch "
            f"{torch.__version__} (exported with {manifest.torch_version}): {error}"
        ) from None
    weights = {side: tower_cache.weights_of(program.state_dict)
               for side, program in programs.items()}
    defaults = {"item": probe.item_arrays([{}] * 16), "user": probe.user_arrays([{}] * 16)}
    differences: dict[str, float | str]
    try:
        rebuilt = {side: tower_cache.rebuild(spec, side, weights[side])
                   for side in tower_cache.SIDES}
        differences = {side: tower_cache.difference(
            modules[side], rebuilt[side], tower_cache.random_inputs(
                side_features(spec, side), weights[side], defaults[side]))
            for side in tower_cache.SIDES}
    except (KeyError, RuntimeError, ValueError) as error:
        differences = {"error": str(error)}
    if all(isinstance(d, float) and d <= tower_cache.TOLERANCE for d in differences.values()):
        tower_cache.write(path, weights)
        return rebuilt["item"], rebuilt["user"], weights["user"]
    log.warning("towers.model does not compute what the exported program does; serving "
                "with the program, loaded at every start", extra=differences)
    return modules["item"], modules["user"], weights["user"]


def _numpy_tower(spec: FeatureSpec, weights: Weights, tower: nn.Module,
                 probe: Featurizer, rows: int = 16) -> NumpyTower | None:
    """The user tower in numpy if it computes what the torch tower computes."""
    candidate = NumpyTower(spec.user, weights, example_age=True)
    inputs = tower_cache.random_inputs(spec.user, weights, probe.user_arrays([{}] * rows))
    expected = _run(tower, {name: torch.from_numpy(array) for name, array in inputs.items()})
    difference = float(np.abs(candidate(inputs) - expected).max())
    if difference > NUMPY_TOLERANCE:
        log.warning("the numpy user tower disagrees with the exported program; serving "
                    "with the program", extra={"difference": difference})
        return None
    return candidate


def use_one_torch_thread() -> None:
    """For a long-running process: esrec's batches are small (a recall's one user, an
    indexer's 500 items), so torch's intra-op threads gain little time and spin on every
    core meanwhile (measured: featurize + item tower 19.5 -> 11 us of CPU per item, 9.8 ->
    11 us of wall; recall p99 overhead 17 -> 7 ms at one client). Process-wide, so each
    command calls it, not the library."""
    torch.set_num_threads(1)


def _run(tower: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    with torch.inference_mode():
        vectors: np.ndarray = tower(inputs).numpy()
    return vectors
