"""What is done: the resume record a rerun plans with.

The writer builds it from the commit markers of the output (`writer.Output.resume`); the planner reads
it: a unit committed without errors, whose manifest still gives it as many rows, is left out; a unit
committed with error rows redoes only the manifest rows behind them; any other unit is done whole.
Error ids are manifest ids (a manifest row split into VAD segments is redone whole when one of its
segments failed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Committed:
    """A unit the output holds."""

    rows: int  # manifest rows it was committed with
    errors: frozenset[str] = frozenset()  # manifest ids of its rows that ended as error rows


@dataclass(frozen=True)
class Resume:
    """unit name -> what the output holds of it (units absent: never committed)."""

    units: Mapping[str, Committed] = field(default_factory=dict)

    def done(self, unit: str, rows: int) -> bool:
        """Nothing to do: committed without errors, with the `rows` rows the manifest now gives it."""
        c = self.units.get(unit)
        return c is not None and not c.errors and c.rows == rows

    def redo(self, unit: str) -> frozenset[str] | None:
        """The manifest ids to redo when only some rows of the unit are redone; None: all or nothing."""
        c = self.units.get(unit)
        return c.errors if c is not None and c.errors else None

    def todo(self, unit: str, table: pa.Table) -> pa.Table:
        """The rows of one unit (all of them, as the manifest gives them) this run processes."""
        if self.done(unit, table.num_rows):
            return table.slice(0, 0)
        ids = self.redo(unit)
        if ids is None:
            return table
        rows = table.filter(pc.is_in(table["id"], value_set=pa.array(sorted(ids), pa.string())))
        # an error row's id is gone from the manifest (a fixed path renames a default id): the unit's
        # rows are not those committed, so it is done whole (the writer then replaces it whole)
        return rows if rows.num_rows == len(ids) else table


NOTHING = Resume()
