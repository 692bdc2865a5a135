"""The hierarchical data set of Saxe et al. (2019): eight living things and their features.

The hierarchy is kept as data (levels, nodes and which items each node covers), and the
output matrix is derived from it: one column per node of a three-level binary tree, with
``Y[i, node] = 1`` when item ``i`` lies under that node.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from functools import cached_property
from typing import NamedTuple

import numpy as np

ITEMS: tuple[str, ...] = ("sparrow", "penguin", "cat", "dog", "pine", "oak", "rose", "lily")

# Each level maps its nodes to the items they cover, from the root down to the leaves.
LEVELS: tuple[tuple[str, dict[str, tuple[str, ...]]], ...] = (
    ("living", {"living": ITEMS}),
    ("kingdom", {"animal": ITEMS[:4], "plant": ITEMS[4:]}),
    ("class", {"bird": ITEMS[:2], "mammal": ITEMS[2:4], "tree": ITEMS[4:6], "flower": ITEMS[6:]}),
    ("item", {item: (item,) for item in ITEMS}),
)


class Split(NamedTuple):
    """One branching of the tree: node ``parent`` divides into two child nodes and their items."""

    level: str
    parent: str
    left_node: str
    right_node: str
    left: tuple[str, ...]
    right: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.left_node} | {self.right_node}"


@dataclass(frozen=True)
class Hierarchy:
    """Items, the tree of nodes over them, and the input/output matrices it defines."""

    items: tuple[str, ...] = ITEMS
    levels: tuple[tuple[str, dict[str, tuple[str, ...]]], ...] = LEVELS

    @property
    def nodes(self) -> tuple[str, ...]:
        """Feature names, level by level: living | animal, plant | bird, … | sparrow, …"""
        return tuple(node for _, nodes in self.levels for node in nodes)

    def index(self, item: str) -> int:
        """Position of ``item`` in :attr:`items`; a clear error for an unknown name."""
        try:
            return self.items.index(item)
        except ValueError:
            raise ValueError(f"unknown item {item!r}; items are {', '.join(self.items)}") from None

    @cached_property
    def inputs(self) -> np.ndarray:
        """One-hot inputs ``X = I``, shape ``(items, items)``."""
        return np.eye(len(self.items))

    @cached_property
    def outputs(self) -> np.ndarray:
        """Feature matrix ``Y``, shape ``(items, nodes)`` = ``(8, 15)``, entries 0 or 1."""
        columns = [
            [float(item in covered) for item in self.items]
            for _, nodes in self.levels
            for covered in nodes.values()
        ]
        return np.array(columns).T

    def query_weights(self, source: int, queries: Sequence[int]) -> np.ndarray:
        """Weights ``(Q,)`` summing to one that give every *distinct* query of ``source`` the same
        share: queries sharing the same number of features with ``source`` (the same entry of
        ``YYᵀ``) are copies of each other under the tree's symmetry, so the four plants, for the
        dog, share one weight between them instead of taking 4/7 of a plain mean."""
        queries = list(queries)
        if not queries or not all(0 <= q < len(self.items) for q in [source, *queries]):
            raise ValueError(f"source and queries must be item indices in [0, {len(self.items)}), "
                             f"got {source} and {queries}")
        shared = (self.outputs @ self.outputs.T)[source, queries]
        classes, counts = np.unique(shared, return_counts=True)
        per_query = 1.0 / (len(classes) * counts[np.searchsorted(classes, shared)])
        return per_query

    def splits(self) -> list[Split]:
        """Every branching of the tree, from the root down.

        The level is that of the children: ``kingdom`` for animal | plant, ``class`` for bird |
        mammal and tree | flower, ``item`` for sparrow | penguin and the other leaf pairs.
        """
        result = []
        for (_, parents), (level, children) in zip(self.levels, self.levels[1:]):
            for parent, covered in parents.items():
                kids = [(name, items) for name, items in children.items() if set(items) <= set(covered)]
                if len(kids) == 2:
                    (left_node, left), (right_node, right) = kids
                    result.append(Split(level, parent, left_node, right_node, left, right))
        return result

    def split(self, parent: str) -> Split:
        """The branching of node ``parent`` (e.g. ``"living"`` for animal | plant)."""
        for candidate in self.splits():
            if candidate.parent == parent:
                return candidate
        raise ValueError(f"{parent!r} does not branch; branching nodes: "
                         f"{', '.join(s.parent for s in self.splits())}")


def hierarchy() -> Hierarchy:
    """The 8-item, 15-feature hierarchy of the paper (App. C.1)."""
    return Hierarchy()
