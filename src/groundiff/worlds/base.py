"""What every world shares: its name, class vocabulary and seen/unseen splits.

A world supplies what the method consumes from outside (DESIGN.md): a diffusers pipeline, an
oracle detector, a class vocabulary with seen/unseen splits, and real labelled data. This module
holds the vocabulary part, which every stage needs and which must fail loudly on bad params.
"""

from __future__ import annotations

from dataclasses import dataclass

from groundiff.core.errors import WorldError
from groundiff.core.schema import WORLDS, check_world_name


@dataclass(frozen=True)
class ClassSplit:
    """A world's classes, split into those seen in training and those held out."""

    world: str
    classes: tuple[str, ...]  # label order: label = index + 1, 0 = background
    seen: tuple[str, ...]
    unseen: tuple[str, ...]

    def label(self, name: str) -> int:
        """The semantic label of class `name` (1-based; 0 is background)."""
        try:
            return self.classes.index(name) + 1
        except ValueError:
            raise WorldError(self._unknown(name)) from None

    def check_known(self, names: list[str] | tuple[str, ...], where: str = "") -> None:
        for name in names:
            if name not in self.classes:
                raise WorldError(self._unknown(name, where))

    def _unknown(self, name: str, where: str = "") -> str:
        at = f" ({where})" if where else ""
        return f"unknown class {name!r}{at}; the {self.world} world knows: {', '.join(self.classes)}"


def make_split(
    world: str,
    classes: tuple[str, ...] | list[str],
    unseen: list[str] | tuple[str, ...],
    seen: list[str] | tuple[str, ...] | None = None,
    where: str = "split",
) -> ClassSplit:
    """Validate a seen/unseen split. `seen` defaults to every class not unseen."""
    classes = tuple(classes)
    if len(set(classes)) != len(classes):
        raise WorldError(f"{world}: duplicate class names in the vocabulary")
    for role, names in (("unseen", unseen), ("seen", seen or ())):
        twice = sorted({n for n in names if list(names).count(n) > 1})
        if twice:
            raise WorldError(f"{where}: {role} lists {', '.join(twice)} more than once; list each class once")
    if not unseen:
        raise WorldError(f"{where}: no unseen classes; a zero-shot split holds out at least one class "
                         "(Protocol II's unseen mIoU and hIoU need one)")
    probe = ClassSplit(world, classes, (), ())
    probe.check_known(list(unseen), f"{where}: unseen")
    if seen is None:
        seen = [c for c in classes if c not in unseen]
    else:
        probe.check_known(list(seen), f"{where}: seen")
        overlap = sorted(set(seen) & set(unseen))
        if overlap:
            raise WorldError(f"{where}: classes both seen and unseen: {', '.join(overlap)}; a class is one or the other")
    if not seen:
        raise WorldError(f"{where}: no seen classes left; the grounding module needs at least one class to train on")
    # Keep vocabulary order, so labels and tables read the same everywhere.
    return ClassSplit(
        world=world,
        classes=classes,
        seen=tuple(c for c in classes if c in set(seen)),
        unseen=tuple(c for c in classes if c in set(unseen)),
    )
