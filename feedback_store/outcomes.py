"""What became of each correction: its instruction group, the version that learned it, or why
not yet.

A correction (a buffer item) is *learned* once a promoted version was trained on it, or was
checked on it (held out) and answers it right; ``learned_in`` names that version and never
changes afterwards. Until then a run that tried it leaves ``pending_reason`` (the guard's
refusal, or "held out and still answered wrong"), and the item stays in its group's pool, to
be trained again by the group's next run. The worker assigns the group (``group_id``) when it
claims the buffer, so a retried run after a crash sees the same assignment.

Every write is one transaction; the store knows group ids only as strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .base import StoreBase
from .errors import InvalidInputError
from .queries import one, require_adapter, set_item_column
from .records import BufferItem, from_row
from .status import MAX_REFUSALS, BufferStatus


def _ids(item_ids: Iterable[int]) -> list[int]:
    ids = list(dict.fromkeys(item_ids))
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InvalidInputError("item ids must be integers", field="item_ids", value=ids)
    return ids


class Outcomes(StoreBase):
    """Group assignment and learning outcome of buffer items."""

    def set_item_groups(self, buffer_id: int, groups: Mapping[int, str]) -> None:
        """Assign items of ``buffer_id`` to instruction groups (all or nothing)."""
        for item_id, group in groups.items():
            if not isinstance(group, str) or not group.strip():
                raise InvalidInputError(f"group of item {item_id} must be a non-empty string, not {group!r}",
                                        field="group_id", value=group)
        with self._conns.write() as db:
            set_item_column(db, buffer_id, "group_id", dict(groups), self._now())

    def group_items(self, group_id: str) -> list[tuple[BufferItem, str]]:
        """Every item of ``group_id`` with its buffer's status, oldest first."""
        with self._conns.read() as db:
            rows = db.query("""SELECT bi.*, tb.status AS buffer_status FROM buffer_items bi
                               JOIN task_buffers tb ON tb.id = bi.buffer_id
                               WHERE bi.group_id = ? ORDER BY bi.buffer_id, bi.id""", [group_id])
            return [(from_row(BufferItem, r), BufferStatus(r["buffer_status"])) for r in rows]

    def grouped_heldout_items(self) -> dict[str, list[BufferItem]]:
        """Held-out items of every group, over all its buffers that a run has finished or is
        running (the pooled held-out sets the routed guard checks)."""
        with self._conns.read() as db:
            rows = db.query("""SELECT bi.* FROM buffer_items bi JOIN task_buffers tb ON tb.id = bi.buffer_id
                               WHERE bi.group_id IS NOT NULL AND bi.split = 'heldout'
                               AND tb.status IN ('training', 'promoted', 'rejected')
                               ORDER BY bi.group_id, bi.buffer_id, bi.id""")
            out: dict[str, list[BufferItem]] = {}
            for r in rows:
                out.setdefault(r["group_id"], []).append(from_row(BufferItem, r))
            return out

    def mark_learned(self, item_ids: Iterable[int], version: str) -> int:
        """Record that promoted ``version`` learned these items (those not learned before);
        returns how many changed."""
        ids = _ids(item_ids)
        with self._conns.write() as db:
            require_adapter(db, version)
            now, changed = self._now(), 0
            for item_id in ids:
                changed += db.execute("UPDATE buffer_items SET learned_in = ?, pending_reason = NULL, updated_at = ? "
                                      "WHERE id = ? AND learned_in IS NULL", [version, now, item_id]).rowcount
            return changed

    def mark_pending(self, item_ids: Iterable[int], reason: str, refused: bool = False) -> int:
        """Say why these items are not learned yet (items already learned are left alone);
        ``refused``: a run that trained on them was refused by the guard (counted)."""
        ids = _ids(item_ids)
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidInputError("a pending item needs a reason", field="reason", value=reason)
        with self._conns.write() as db:
            now, changed = self._now(), 0
            for item_id in ids:
                changed += db.execute("UPDATE buffer_items SET pending_reason = ?, refusals = refusals + ?, "
                                      "updated_at = ? WHERE id = ? AND learned_in IS NULL",
                                      [reason[:4000], int(refused), now, item_id]).rowcount
            return changed

    def set_aside(self, item_ids: Iterable[int], reason: str) -> int:
        """Stop retrying these unlearned items (a run that trained on them contradicted other
        authors): they keep ``reason`` (which starts "conflict: ") until an admin acts, and no
        later run of the group trains on them meanwhile. Forgetting the author they conflicted
        with lets them be retried (``Forgetting``)."""
        ids = _ids(item_ids)
        with self._conns.write() as db:
            now, changed = self._now(), 0
            for item_id in ids:
                changed += db.execute("UPDATE buffer_items SET refusals = ?, pending_reason = ?, updated_at = ? "
                                      "WHERE id = ? AND learned_in IS NULL",
                                      [MAX_REFUSALS, reason[:4000], now, item_id]).rowcount
            return changed

    def train_on(self, item_ids: Iterable[int]) -> None:
        """Move held-out items that a later run trains on into the training split."""
        ids = _ids(item_ids)
        with self._conns.write() as db:
            now = self._now()
            for item_id in ids:
                db.execute("UPDATE buffer_items SET split = 'train', updated_at = ? WHERE id = ?", [now, item_id])

    def learned_share(self) -> tuple[int, int]:
        """(learned, all) corrections with an image: how much of what users taught is served."""
        with self._conns.read() as db:
            row = one(db, "SELECT COUNT(*) AS n, SUM(learned_in IS NOT NULL) AS learned FROM buffer_items "
                          "WHERE image_sha256 IS NOT NULL")
        return int(row["learned"] or 0), int(row["n"] or 0)

    def group_counts(self) -> dict[str, tuple[int, int]]:
        """{group: (learned, taught)} corrections with an image, per instruction group."""
        with self._conns.read() as db:
            rows = db.query("SELECT group_id, COUNT(*) AS n, SUM(learned_in IS NOT NULL) AS learned FROM buffer_items "
                            "WHERE group_id IS NOT NULL AND image_sha256 IS NOT NULL GROUP BY group_id")
            return {r["group_id"]: (int(r["learned"] or 0), int(r["n"])) for r in rows}
