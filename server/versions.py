"""Which USABLE learnware is the newest version of its (contributor, name).

A name belongs to its contributor's key; each submission of the same (key, name) is its next
version (``Store.add_learnware`` numbers them). Search answers, unless asked for every
version (``LearnwareFilter.all_versions``), only the newest USABLE version of each name: an
older one that is still USABLE is *superseded* and left out. Withdrawing the newest makes
the one before it the newest again.
"""

from __future__ import annotations

from server.records import LearnwareRecord


class NewestVersions:
    """The USABLE learnwares by (contributor, name) and version. Not locked: the market
    changes it under its own lock; readers take ``superseded``, a frozen snapshot."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], dict[str, int]] = {}
        self._group_of: dict[str, tuple[str, str]] = {}
        self.superseded: frozenset[str] = frozenset()

    def add(self, record: LearnwareRecord) -> None:
        group = (record.contributor_key_id, record.name)
        self._groups.setdefault(group, {})[record.id] = record.version
        self._group_of[record.id] = group
        self._refresh(group)

    def remove(self, learnware_id: str) -> None:
        group = self._group_of.pop(learnware_id, None)
        if group is None:
            return
        members = self._groups[group]
        members.pop(learnware_id, None)
        if not members:
            del self._groups[group]
        self._refresh(group, gone=learnware_id)

    def clear(self) -> None:
        self._groups.clear()
        self._group_of.clear()
        self.superseded = frozenset()

    def _refresh(self, group: tuple[str, str], gone: str | None = None) -> None:
        """Recompute the superseded members of one group (the rest stay as they are)."""
        members = self._groups.get(group, {})
        newest = max(members, key=members.__getitem__, default=None)
        stale = set(members) if gone is None else {gone, *members}
        older = {lid for lid in members if lid != newest}
        self.superseded = frozenset((self.superseded - stale) | older)
