"""What the parents' cards say, as the card of a merge uses it: each input's own card, and the license
policy (inherited when every parent agrees, ``other`` plus a table of them otherwise; an override wins)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hubmerge.errors import HubmergeError
from hubmerge.sources.model import ModelSource
from hubmerge.spec.cards import CardInfo, card_info, find_recipe, recipe_file

logger = logging.getLogger(__name__)

OTHER = "other"


@dataclass
class ParentCard:
    """One input model of a merge and its own card."""

    name: str  # Hub repo id or local path, as the recipe names it
    revision: str | None  # pinned commit SHA (Hub) or None (local)
    is_hub: bool
    info: CardInfo
    folder: Path | None = None  # local models: where the merge found it

    @property
    def license(self) -> str | None:
        value = self.info.meta.get("license")
        if isinstance(value, list):
            value = value[0] if len(value) == 1 else None
        return str(value) if isinstance(value, (str, int, float)) and str(value).strip() else None

    @property
    def license_name(self) -> str | None:
        return self.info.meta.get("license_name") if isinstance(self.info.meta.get("license_name"), str) else None

    @property
    def license_link(self) -> str | None:
        return self.info.meta.get("license_link") if isinstance(self.info.meta.get("license_link"), str) else None

    @property
    def pipeline_tag(self) -> str | None:
        tag = self.info.meta.get("pipeline_tag")
        return tag if isinstance(tag, str) and tag else None


def _read_text(model, name: str) -> str | None:
    try:
        data = model.read_file(name)
    except HubmergeError as exc:
        logger.warning("%s: cannot read %s (%s)", model.name, name, exc.message)
        return None
    return data.decode("utf-8", errors="replace") if data is not None else None


def parent_cards(models: list[ModelSource]) -> list[ParentCard]:
    """The card of every input model (read through the Hub facade or from the local folder), by name."""
    out: dict[str, ParentCard] = {}
    for m in models:
        if m.name in out:
            continue
        try:
            files = list(m.list_files())
        except HubmergeError:
            files = []
        info = card_info(_read_text(m, "README.md"), files, source=f"{m.name}/README.md")
        if find_recipe(info) is None and recipe_file(files):
            info = card_info(_read_text(m, "README.md"), files, _read_text(m, recipe_file(files)),
                             source=f"{m.name}/README.md")
        folder = None if m.is_hub else getattr(m.reader, "root", None)
        out[m.name] = ParentCard(m.name, m.revision if m.is_hub else None, m.is_hub, info,
                                 Path(folder) if folder is not None else None)
    return list(out.values())


@dataclass
class LicenseDecision:
    metadata: dict[str, str]  # license (+ license_name/license_link when inherited as "other")
    table: list[tuple[str, str | None]]  # (parent, its license) when the parents do not all agree
    mixed: bool  # parents differ or some are unknown


def decide_license(override: str | None, parents: list[ParentCard]) -> LicenseDecision:
    """All parents agree on one known license: inherit it (with license_name/link for a shared 'other').
    Otherwise 'other' plus a table of the parents' licenses. An explicit override always wins."""
    licenses = [(p.name, p.license) for p in parents]
    known = {lic for _, lic in licenses if lic is not None}
    if parents and len(known) == 1 and all(lic is not None for _, lic in licenses):
        lic = next(iter(known))
        meta = {"license": lic}
        agree = True
        if lic == OTHER:  # custom licenses: the same only if they name the same one
            names = {p.license_name for p in parents}
            links = {p.license_link for p in parents}
            agree = len(names) == 1 and len(links) == 1
            if agree and None not in names:
                meta["license_name"] = next(iter(names))
            if agree and None not in links:
                meta["license_link"] = next(iter(links))
        if agree:
            return LicenseDecision({"license": override} if override else meta, [], False)
    return LicenseDecision({"license": override or OTHER}, licenses, True)


def license_summary(table: list[tuple[str, str | None]]) -> str:
    known = {lic for _, lic in table if lic}
    unknown = [name for name, lic in table if not lic]
    parts = []
    if len(known) > 1:
        parts.append("differ (" + ", ".join(f"{n}: {lic}" for n, lic in table if lic) + ")")
    if unknown:
        parts.append("are unknown for " + ", ".join(unknown))
    return " and ".join(parts) or "are unknown"
