"""A write-back buffer over the index's tables: what :class:`~dsq_chain.services.index.apply.Applier` writes.

Applying events one SQL statement at a time cost milliseconds an event (building statements dominates).
Here current-state rows (``jobs``, ``providers``) are read once into memory, changed there, and written
back with one ``executemany`` per table at :meth:`Store.flush`; history rows are appended in memory and
inserted the same way. The caller flushes before it commits, so the database and the checkpoint still
change together.

Undo: the first change of a row in a block saves the row as it was before that block (a row created in
that block needs none: a reorg deletes it by its creation block).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert, select, update

from dsq_chain.services.index import schema as s

#: Current-state tables and their creation-block column.
STATE = {s.jobs.name: (s.jobs, "submitted_block"), s.providers.name: (s.providers, "registered_block")}


class Store:
    """Rows of one transaction, written back at :meth:`flush`."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._select = {name: select(t).where(_pk(t) == bindparam("k")) for name, (t, _) in STATE.items()}
        self._update = {name: update(t).where(_pk(t) == bindparam("_k")).values(
            {c.name: bindparam(c.name) for c in t.columns if not c.primary_key}) for name, (t, _) in STATE.items()}
        self.reset()

    def reset(self) -> None:
        """Forgets everything not flushed (after a rollback)."""
        self.rows: dict[str, dict[Any, dict[str, Any]]] = {name: {} for name in STATE}
        self.new: dict[str, set[Any]] = {name: set() for name in STATE}
        self.dirty: dict[str, set[Any]] = {name: set() for name in STATE}
        self.saved: set[tuple[str, Any, int]] = set()
        self.appended: dict[str, list[dict[str, Any]]] = {}

    def get(self, table: Table, key: Any) -> dict[str, Any] | None:
        cache = self.rows[table.name]
        row = cache.get(key)
        if row is None:
            found = self.conn.execute(self._select[table.name], {"k": key}).mappings().first()
            if found is None:
                return None
            row = cache[key] = dict(found)
        return row

    def insert(self, table: Table, row: dict[str, Any]) -> None:
        key = row[_pk(table).name]
        self.rows[table.name][key] = row
        self.new[table.name].add(key)

    def update(self, table: Table, row: dict[str, Any], block: int, **values: Any) -> None:
        """Changes ``row`` (from :meth:`get`) in place; saves its old values for a reorg first."""
        key = row[_pk(table).name]
        created = row[STATE[table.name][1]]
        if created != block and (table.name, key, block) not in self.saved:
            self.saved.add((table.name, key, block))
            self.append(s.undo, {"block": block, "tbl": table.name, "key": str(key), "old": json.dumps(row)})
        row.update(values)
        if key not in self.new[table.name]:
            self.dirty[table.name].add(key)

    def append(self, table: Table, row: dict[str, Any]) -> None:
        self.appended.setdefault(table.name, []).append(row)

    def extend(self, table: Table, rows: list[dict[str, Any]]) -> None:
        self.appended.setdefault(table.name, []).extend(rows)

    def flush(self) -> None:
        """Writes everything buffered (new rows, changed rows, history, undo) through the connection."""
        for name, (table, _) in STATE.items():
            cache = self.rows[name]
            if self.new[name]:
                self.conn.execute(insert(table), [cache[k] for k in sorted(self.new[name])])
            if self.dirty[name]:
                pk = _pk(table).name
                self.conn.execute(self._update[name], [{**{c: v for c, v in cache[k].items() if c != pk}, "_k": k}
                                                       for k in self.dirty[name]])
        tables = {t.name: t for t in s.metadata.sorted_tables}
        for name, rows in self.appended.items():
            if rows:
                self.conn.execute(insert(tables[name]), rows)
        # Providers are few and read by every event: keep them; jobs are many: let them go.
        providers = self.rows[s.providers.name]
        self.reset()
        self.rows[s.providers.name] = providers


def _pk(table: Table) -> Any:
    return next(iter(table.primary_key.columns))
