"""The one batch type that travels between controller, rollout actors and learner actors.

A `Batch` is a table: named columns of equal length (Python lists: arrays, ints, dicts...) plus
`meta` (values shared by every row: step, policy version, normalisers). It splits into
contiguous shards, one per worker, and merges back in order, so a batch sent out to N actors
comes back row-aligned with what was sent (as verl's DataProto does, without its magic).

    shards = batch.split(len(workers))
    results = [w.generate.remote(s) for w, s in zip(workers, shards)]
    merged = Batch.merge(ray.get(results))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence


@dataclass
class Batch:
    columns: dict[str, list[Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lengths = {k: len(v) for k, v in self.columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"batch columns differ in length: {lengths}")
        self.columns = {k: list(v) for k, v in self.columns.items()}

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> list[Any]:
        try:
            return self.columns[name]
        except KeyError:
            raise KeyError(f"batch has no column {name!r}; "
                           f"columns: {sorted(self.columns)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def with_columns(self, **columns: Sequence[Any]) -> "Batch":
        """A new batch with columns added or replaced (same length as this one)."""
        return Batch({**self.columns, **{k: list(v) for k, v in columns.items()}}, dict(self.meta))

    def select(self, rows: Iterable[int]) -> "Batch":
        idx = list(rows)
        return Batch({k: [v[i] for i in idx] for k, v in self.columns.items()}, dict(self.meta))

    def repeat_interleave(self, n: int) -> "Batch":
        """Every row `n` times in a row (a prompt batch → one row per completion)."""
        return self.select(i for i in range(len(self)) for _ in range(n))

    def split(self, n: int) -> list["Batch"]:
        """`n` contiguous shards whose sizes differ by at most one (earlier shards larger)."""
        if n < 1:
            raise ValueError(f"cannot split a batch into {n} shards (allowed: n >= 1)")
        size, extra = divmod(len(self), n)
        out, start = [], 0
        for i in range(n):
            stop = start + size + (1 if i < extra else 0)
            out.append(self.select(range(start, stop)))
            start = stop
        return out

    @staticmethod
    def merge(batches: Sequence["Batch"]) -> "Batch":
        """Concatenate shards in order; meta from the first, columns must match."""
        if not batches:
            return Batch()
        names = set(batches[0].columns)
        for b in batches[1:]:
            if set(b.columns) != names:
                raise ValueError(f"cannot merge batches with different columns: "
                                 f"{sorted(names)} vs {sorted(b.columns)}")
        return Batch({k: [x for b in batches for x in b.columns[k]] for k in batches[0].columns},
                     dict(batches[0].meta))
