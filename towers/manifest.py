"""A model version's manifest and file layout, without torch: commands that only read
the registry or the indices (`esrec indexer status`, `esrec models status`) never import
it (~1.5-3 s of start-up); ``towers.artifact`` loads the towers themselves."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from runtime.errors import Refused
from towers.coldstart import ColdStart
from towers.features import FeatureSpec
from towers.featurizer import NumericStats

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ITEM_TOWER = "item_tower.pt2"
USER_TOWER = "user_tower.pt2"
VOCABULARIES = "vocabularies.json"
PROBE_QUERIES = "probe_queries.npy"
KNOWN_ITEMS = "known_items.npz"
REQUIRED_FILES = (ITEM_TOWER, USER_TOWER, VOCABULARIES)
OPTIONAL_FILES = (PROBE_QUERIES, KNOWN_ITEMS)

class ArtifactError(Refused):
    """An artifact that cannot be used, with the reason."""


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int
    name: str
    version: str
    dims: int
    similarity: Literal["dot_product"]  # towers end in L2 normalisation
    feature_spec: FeatureSpec
    numeric_stats: dict[str, NumericStats]
    vocabulary_sizes: dict[str, int]
    training: dict[str, Any]
    cold_start: ColdStart = ColdStart()  # how an item unknown by id is embedded
    torch_version: str
    created_at: str
    files: dict[str, str]  # file name -> sha256

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
