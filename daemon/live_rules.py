"""The daemon's rules while it runs: the first load, each reload, and the engine check.

``RuleSet`` reads and caches the rule files; this adds what the running daemon makes
of a load: a plain warning when no rule (or no rules folder) is there, and, once per
rule version, a warning when a rule's engine cannot run on this host, so nobody drops
a hundred images to learn it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .config import Settings
from .engines import Engine, EngineUnavailable, get_engine
from .last_good import record_path
from .render import engine_options
from .rules import LoadedRule
from .ruleset import RuleSet

log = logging.getLogger(__name__)


class LiveRules:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ruleset = RuleSet(settings.rules_dir, record=record_path(settings.state_dir))
        # Engines built only to check that rules' engines can run here (never rendered
        # with), kept so a reload does not build them again.
        self._engine_checks: dict[str, Engine] = {}

    def load(self) -> None:
        """The load at start."""
        rules_dir = self.settings.rules_dir
        result = self.ruleset.reload()  # logs each problem, and each rule loaded
        if result.folder_missing:
            log.error(
                "rules folder %s does not exist (or cannot be read): no image will be "
                "processed. Create it (examples are in the i2vd repository's rules/) or set "
                "rules_dir; it is looked for again every rescan_seconds and on SIGHUP",
                rules_dir,
            )
            return
        if not self.ruleset.snapshot:
            log.warning("no valid rules in %s: images will wait in the inbox", rules_dir)
        self._check_engines(self.ruleset.snapshot)

    def reload(self) -> bool:
        """A reload after a change, a rescan or SIGHUP. True when a rule is new or
        changed, so images that waited unmatched deserve another look."""
        result = self.ruleset.reload()
        if not result.changed:
            return False
        if not self.ruleset.snapshot:
            log.warning(
                "no valid rules in %s: images will wait in the inbox", self.settings.rules_dir
            )
        self._check_engines(result.new_or_changed)
        return bool(result.new_or_changed)

    def _check_engines(self, rules: Iterable[LoadedRule]) -> None:
        for loaded in rules:
            try:
                get_engine(loaded.rule.engine, self._engine_checks, engine_options(self.settings))
            except EngineUnavailable as exc:
                # Said once per rule version, so nobody drops a hundred images to learn it.
                log.warning(
                    "rule %s: %s; its images will go to %s (%s)",
                    loaded.rule.name,
                    exc,
                    self.settings.failed_dir,
                    exc.hint,
                )
