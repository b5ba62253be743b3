"""The towers rebuilt from their weights, kept per machine.

Loading an exported program costs more than importing torch: ``torch.export.load``
imports torch._dynamo and sympy, and deserialising a dynamic batch dimension imports the
export tracer (2-4 s a start on the VMs measured, against 1.2-3 s for ``import torch``).
So the first load of a version on a machine checks that ``towers.model`` with the
program's weights computes what the program computes (``difference``), and keeps those
weights here; every later load (each daemon, worker and recall start) builds the towers
from them. The exported program stays the version's definition: the key covers the
artifact, torch's version and ``towers.model``'s source, so a change to any of them
checks against the program again.

    $XDG_CACHE_HOME/esrec/towers/<artifact sha256>-<code key>.npz   item/* and user/* weights
                                                      .npz.sha256   its digest
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

import towers.model
from runtime.local_cache import UNUSED_DAYS, cache_dir, unused
from towers.features import Feature, FeatureSpec, embedded
from towers.featurizer import NUMERIC
from towers.manifest import sha256_file
from towers.model import side_tower

log = logging.getLogger("esrec.towers")
CACHE = cache_dir("towers")
TOLERANCE = 1e-5  # float32, per component, against the program on random valid inputs
SIDES = ("item", "user")

Weights = dict[str, np.ndarray]


def cache_path(artifact_sha256: str, root: Path | None = None) -> Path:
    code = hashlib.sha256(torch.__version__.encode()
                          + Path(towers.model.__file__).read_bytes()).hexdigest()[:16]
    return (root or CACHE) / f"{artifact_sha256}-{code}.npz"


def read(path: Path) -> dict[str, Weights] | None:
    """The kept weights per side, or None: never kept, or not what was written."""
    digest = path.with_name(path.name + ".sha256")
    try:
        if digest.read_text().strip() != sha256_file(path):
            log.warning("kept tower weights do not match their digest; checking against "
                        "the program again", extra={"path": str(path)})
            return None
        with np.load(path, allow_pickle=False) as arrays:
            flat = {name: arrays[name] for name in arrays.files}
        os.utime(path)  # used: what ``prune`` goes by
    except (OSError, ValueError):
        return None
    return {side: {name.removeprefix(f"{side}/"): array for name, array in flat.items()
                   if name.startswith(f"{side}/")} for side in SIDES}


def write(path: Path, weights: Mapping[str, Weights]) -> None:
    """Atomically (a crash leaves no half file); a cache that cannot be written only
    costs the next start the program's load."""
    flat = {f"{side}/{name}": array for side in SIDES for name, array in weights[side].items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as out:
            np.savez(out, allow_pickle=False, **flat)
        os.replace(out.name, path)
        digest = path.with_name(path.name + ".sha256")
        digest_tmp = digest.with_suffix(".tmp")
        digest_tmp.write_text(sha256_file(path))
        os.replace(digest_tmp, digest)
        prune(path.parent)
    except OSError as error:
        log.warning("cannot keep the tower weights; each start loads the exported program",
                    extra={"path": str(path), "error": str(error)})


def prune(root: Path, unused_days: float = UNUSED_DAYS) -> None:
    """Remove the kept weights no start has read for ``unused_days`` (every version a
    machine ever loaded would otherwise stay, a tower's size each)."""
    for kept in root.glob("*.npz"):
        try:
            if unused(kept, unused_days):
                kept.unlink()
                kept.with_name(kept.name + ".sha256").unlink(missing_ok=True)
        except OSError:  # another process pruned it first
            continue


def rebuild(spec: FeatureSpec, side: str, weights: Weights) -> nn.Module:
    """``towers.model``'s tower of ``side`` holding ``weights`` (strict: every tensor the
    program has, nothing else). The tables take the weights as they are (a
    million-row table is not initialised only to be overwritten; nor on the meta device,
    whose initialisers import torch._dynamo)."""
    tensors = {name: torch.from_numpy(array) for name, array in weights.items()}
    modules = nn.ModuleDict({
        name.removeprefix("tables.").removesuffix(".weight"):
            nn.Embedding(tensor.shape[0], tensor.shape[1], _weight=tensor, _freeze=True)
        for name, tensor in tensors.items() if name.startswith("tables.")})
    hidden, out_dim = tensors["mlp.0.weight"].shape[0], tensors["mlp.2.weight"].shape[0]
    tower = side_tower(spec, side, modules, hidden, out_dim)
    tower.load_state_dict(tensors, strict=True, assign=True)
    return tower.eval().requires_grad_(False)


def weights_of(program_state: Mapping[str, torch.Tensor]) -> Weights:
    return {name: value.detach().numpy().copy() for name, value in program_state.items()}


def random_inputs(features: list[Feature], weights: Weights, defaults: dict[str, np.ndarray],
                  seed: int = 0) -> dict[str, np.ndarray]:
    """``defaults`` (a featurizer's arrays of empty documents) with every id drawn within
    its table, positive bag weights and any numbers: inputs that reach every part."""
    rng = np.random.default_rng(seed)
    probe = dict(defaults)
    for feature in embedded(features):
        size = len(weights[f"tables.{feature.table_name}.weight"])
        probe[feature.name] = rng.integers(0, size, probe[feature.name].shape, dtype=np.int64)
        if f"{feature.name}_weights" in probe:
            probe[f"{feature.name}_weights"] = rng.uniform(
                0, 3, probe[feature.name].shape).astype(np.float32)
    probe[NUMERIC] = rng.normal(size=probe[NUMERIC].shape).astype(np.float32)
    return probe


def difference(expected: nn.Module, candidate: nn.Module,
               inputs: dict[str, np.ndarray]) -> float:
    """The largest difference between two towers' outputs on ``inputs``."""
    tensors = {name: torch.from_numpy(array) for name, array in inputs.items()}
    with torch.inference_mode():
        return float((expected(tensors) - candidate(tensors)).abs().max())
