"""The feature spec: which document fields feed the towers, and how.

A spec is data (pydantic), saved inside every model version, so a served model always
featurizes exactly as it was trained. Index convention for every embedding table:
0 = padding / missing, 1 = out-of-vocabulary (shared by every unseen value, which is what
gives a brand-new item a content-based vector), 2.. = fitted vocabulary or hash buckets.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from towers.relations import Relation

PAD, OOV, FIRST = 0, 1, 2


class _Feature(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str  # key of the tensor this feature produces
    field: str  # document field; dots reach into sub-documents ("stats.views")


class _Embedded(_Feature):
    """A feature looked up in an embedding table; features naming the same table share it."""

    table: str = ""  # defaults to the feature's name
    dim: int = Field(default=16, gt=0)
    max_vocab: int = Field(default=0, ge=0)  # > 0: fitted vocabulary of the most frequent values
    hash_buckets: int = Field(default=0, ge=0)  # > 0: hashing instead of a vocabulary

    @model_validator(mode="after")
    def _vocab_or_hash(self) -> _Embedded:
        if (self.max_vocab > 0) == (self.hash_buckets > 0):
            raise ValueError(f"{self.name}: set exactly one of max_vocab or hash_buckets")
        return self

    @property
    def table_name(self) -> str:
        return self.table or self.name


class Categorical(_Embedded):
    kind: Literal["categorical"] = "categorical"


class Tags(_Embedded):
    """A multi-valued field, mean-pooled."""

    kind: Literal["tags"] = "tags"
    max_len: int = Field(default=16, gt=0)


class Text(_Embedded):
    """Short text as a hashed bag of lowercase tokens, mean-pooled."""

    kind: Literal["text"] = "text"
    max_len: int = Field(default=32, gt=0)


class ItemId(_Embedded):
    """The item's own id; ids seen fewer than ``min_count`` times share the OOV bucket."""

    kind: Literal["item_id"] = "item_id"
    min_count: int = Field(default=2, gt=0)


class RecentItems(_Embedded):
    """A user's recent item ids (newest first), pooled through the item-id table.

    Position p weighs 0.5 ** (p / half_life): the last few items say most about what comes
    next. ``half_life=0`` is a plain mean.
    """

    kind: Literal["recent_items"] = "recent_items"
    max_len: int = Field(default=50, gt=0)
    half_life: float = Field(default=0.0, ge=0)


class TagCounts(_Embedded):
    """A user's {tag: count} from recent behaviour, count-weighted through the tag table."""

    kind: Literal["tag_counts"] = "tag_counts"
    max_len: int = Field(default=32, gt=0)


class Numeric(_Feature):
    """A number, optionally log1p-compressed, standardised with statistics fitted at training."""

    kind: Literal["numeric"] = "numeric"
    log: bool = False


class Age(_Feature):
    """A timestamp turned into log1p(age in days) at featurization time, then standardised."""

    kind: Literal["age"] = "age"


Feature = Annotated[
    Categorical | Tags | Text | ItemId | RecentItems | TagCounts | Numeric | Age,
    Field(discriminator="kind"),
]
EmbeddedFeature = Categorical | Tags | Text | ItemId | RecentItems | TagCounts
ScalarFeature = Numeric | Age


class FeatureSpec(BaseModel):
    """The fields of item documents and of user documents (profile + recent behaviour),
    and the related documents an item is joined with first (towers.relations)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    item: list[Feature]
    user: list[Feature]
    relations: list[Relation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent_tables(self) -> FeatureSpec:
        names = [f.name for f in self.item] + [f.name for f in self.user]
        if len(names) != len(set(names)):
            raise ValueError(f"feature names must be unique: {names}")
        tables: dict[str, tuple[int, int, int]] = {}
        for feature in self.embedded():
            shape = (feature.dim, feature.max_vocab, feature.hash_buckets)
            if tables.setdefault(feature.table_name, shape) != shape:
                raise ValueError(
                    f"features sharing table {feature.table_name!r} must agree on "
                    "dim, max_vocab and hash_buckets"
                )
        return self

    def embedded(self) -> list[EmbeddedFeature]:
        return embedded([*self.item, *self.user])


def embedded(features: list[Feature]) -> list[EmbeddedFeature]:
    return [f for f in features if not isinstance(f, Numeric | Age)]


def scalar_count(features: list[Feature]) -> int:
    return sum(isinstance(f, Numeric | Age) for f in features)


def default_spec(dim: int = 32, recency_half_life: float = 3.0) -> FeatureSpec:
    """The spec for the catalog shape esrec's synthetic data (and many feeds) have."""
    tag_vocab, id_vocab = 5000, 200_000
    return FeatureSpec(
        item=[
            ItemId(name="item_id", field="_id", table="item_id", dim=dim, max_vocab=id_vocab),
            Categorical(name="category", field="category", dim=dim, max_vocab=1000),
            Tags(name="item_tags", field="tags", max_len=16, table="tags", dim=dim,
                 max_vocab=tag_vocab),
            Text(name="title", field="title", dim=dim, hash_buckets=1 << 14, max_len=16),
            Numeric(name="price", field="price", log=True),
        ],
        user=[
            RecentItems(name="recent_items", field="recent_items", max_len=50,
                        half_life=recency_half_life,
                        table="item_id", dim=dim, max_vocab=id_vocab),
            TagCounts(name="recent_tags", field="tag_counts", max_len=64, table="tags",
                      dim=dim, max_vocab=tag_vocab),
            Categorical(name="country", field="country", dim=8, max_vocab=300),
            Numeric(name="age", field="age"),
            Age(name="account_age", field="signup_at"),
        ],
    )
