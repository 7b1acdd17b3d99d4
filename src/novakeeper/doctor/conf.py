"""nova.conf checks: files, values against type and choices, deprecated and unknown names,
and the image cache settings that make sense alone but not together.

Files are read with oslo.config's own parser and option types, never by executing
anything of nova's. The options and the releases that read them are in options.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from oslo_config import cfg

from novakeeper.doctor.facts import Facts, Unavailable
from novakeeper.doctor.model import Check, Finding, nearest
from novakeeper.doctor.options import NovaOption, catalogue, known_names

MIN_SANE_AGE = 600
"""Removal ages below 10 minutes are test settings: every such removal is a re-download."""
NOVA_DEFAULTS = {"manager_interval": 2400, "remove_unused_original_minimum_age_seconds": 86400,
                 "remove_unused_resized_minimum_age_seconds": 3600}

Sections = dict[str, dict[str, list[str]]]


def group_of(section: str) -> str:
    """oslo.config's rule: group names match case-insensitively, except DEFAULT."""
    return section if section == "DEFAULT" else section.lower()


@dataclass(frozen=True)
class Written:
    """Where an option is written: the file, the section and name as written, the value."""

    path: str
    section: str
    option: str
    value: str

    def where(self) -> str:
        return f"{self.path}: [{self.section}] {self.option}"


@dataclass
class NovaConf:
    files: list[str]
    sections: dict[str, Sections]
    """Per file, as oslo.config's parser reads it."""
    opts: cfg.ConfigOpts
    """The catalogue's options, with these files (and OS_<GROUP>__<NAME> variables)."""

    @classmethod
    def load(cls, files: Sequence[str]) -> NovaConf:
        """Raises Unavailable with the first file that cannot be read or parsed."""
        sections: dict[str, Sections] = {}
        for path in files:
            if not os.path.exists(path):
                raise Unavailable(f"{path}: config file not found")
            if os.path.isdir(path):
                raise Unavailable(f"{path}: is a directory, not a config file")
            if not os.access(path, os.R_OK):
                raise Unavailable(f"{path}: permission denied")
            parsed: Sections = {}
            try:
                cfg.ConfigParser(path, parsed).parse()
            except cfg.ParseError as exc:
                raise Unavailable(f"{path}: line {exc.lineno}: {exc.msg}") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise Unavailable(f"{path}: {exc}") from None
            sections[path] = parsed
        conf = cfg.ConfigOpts()
        for option in catalogue():
            if option.group == "DEFAULT":
                conf.register_opt(option.opt)
            else:
                conf.register_opt(option.opt, group=option.group)
        args: list[str] = []
        for path in files:
            args += ["--config-file", path]
        try:
            conf(args=args, project="novakeeper", default_config_files=[], use_env=True)
        except cfg.Error as exc:
            raise Unavailable(str(exc).splitlines()[0]) from None
        return cls(list(files), sections, conf)

    def written(self, names: Sequence[tuple[str, str]]) -> Written | None:
        """The line that sets one of `names` (current name first), as oslo.config picks it:
        the last file that sets it wins; within one file the current name wins."""
        found = None
        for path in self.files:
            for group, option in names:
                hit = self.find(path, group, option)
                if hit is not None:
                    found = hit
                    break
        return found

    def find(self, path: str, group: str, option: str) -> Written | None:
        for section, values in self.sections[path].items():
            if group_of(section) == group_of(group) and option in values:
                return Written(path, section, option, values[option][-1])
        return None

    def value(self, option: NovaOption) -> Any:
        """The value oslo.config gives; ValueError (or oslo's) when it is invalid."""
        node = self.opts if option.group == "DEFAULT" else self.opts[option.group]
        return node[option.opt.dest]

    def get(self, group: str, name: str) -> Any:
        """A valid value, or the default when the written one is invalid (conf.values
        reports that)."""
        option = next(o for o in catalogue() if (o.group, o.opt.dest) == (group, name))
        try:
            return self.value(option)
        except (ValueError, cfg.Error):
            return option.opt.default


def names_of(option: NovaOption) -> list[tuple[str, str]]:
    names = [(option.group, option.opt.dest)]
    for dep in option.opt.deprecated_opts:
        names.append((dep.group or option.group, dep.name or option.opt.dest))
    return names


def _conf(facts: Facts) -> NovaConf:
    return facts.conf()


# -- the checks ----------------------------------------------------------------------------


def check_files(facts: Facts) -> Iterator[Finding]:
    files = facts.files()
    if not files:
        yield FILES.warn("no configuration file found (looked for /etc/nova/nova.conf and "
                         "/etc/novakeeper/novakeeper.conf): nova's defaults assumed",
                         "novakeeper doctor --config-file /path/to/nova.conf")
        return
    try:
        _conf(facts)
    except Unavailable as exc:
        text = str(exc)
        if text.endswith("permission denied"):
            yield FILES.skip(f"cannot read {text} (run doctor as root or as nova)")
        else:
            yield FILES.fail(text, "correct the file (`novakeeper doctor --only conf.files` "
                                   "checks it again)")
        return
    yield FILES.ok(f"{len(files)} file{'s' if len(files) != 1 else ''} read: "
                   f"{', '.join(files)}", files=files)


def _invalid_words(option: NovaOption, text: str, exc: Exception) -> tuple[str, str]:
    """What is wrong with a written value, and the value to write instead."""
    opt = option.opt
    choices = list(getattr(opt.type, "choices", None) or {})
    if choices:
        near = nearest(text.strip().lower(), choices, cutoff=0.5)
        words = f"not one of {', '.join(choices)}"
        if near is not None:
            return f"{words} (did you mean {near!r}?)", near
        return words, str(opt.default if opt.default is not None else choices[0])
    reason = str(exc)
    if " is not valid: " in reason:
        reason = reason.split(" is not valid: ", 1)[1]
    default = opt.default
    if isinstance(default, bool):
        default = str(default).lower()
    return reason, "" if default is None else str(default)


def _release_words(option: NovaOption) -> str:
    words = option.read_by
    if option.removed_in:
        words += f"; ignored since {option.removed_in}"
    return words


def check_values(facts: Facts) -> Iterator[Finding]:
    conf = _conf(facts)
    bad = 0
    for option in catalogue():
        try:
            value = conf.value(option)
        except (ValueError, cfg.Error) as exc:
            bad += 1
            written = conf.written(names_of(option))
            text = written.value if written else ""
            what, instead = _invalid_words(option, text, exc)
            where = written.where() if written else f"[{option.group}] {option.opt.dest}"
            section = written.section if written else option.group
            name = written.option if written else option.opt.dest
            line = f"[{section}] {name} = {instead or '...'}"
            yield VALUES.fail(
                f"{where} = {text}: {what}; {_release_words(option)}",
                f"in {written.path if written else 'nova.conf'}: {line}",
                group=option.group, option=option.opt.dest, value=text,
                suggested=instead or None)
            continue
        if option is AUTH_STRATEGY_OPTION and value == "noauth2":
            written = conf.written(names_of(option))
            yield VALUES.warn(
                f"{written.where() if written else '[api] auth_strategy'} = noauth2: no "
                f"credential is checked (for tests only); {_release_words(option)}",
                f"[{written.section if written else 'api'}] auth_strategy = keystone",
                group=option.group, option=option.opt.dest, value=value)
    if bad:
        return
    try:
        facts.settings()
    except Unavailable as exc:
        if "unknown option" not in str(exc):  # conf.unknown reports those
            yield VALUES.fail(str(exc), "correct the option named")
            return
    groups = sorted({o.group for o in catalogue()}, key=lambda g: (g != "DEFAULT", g))
    yield VALUES.ok(f"{len(catalogue())} options valid in "
                    f"{', '.join(f'[{g}]' for g in groups)}")


def _corrected(option: NovaOption, text: str) -> str:
    """`text` if the option takes it, else the nearest valid value (never spread a typo)."""
    try:
        option.opt.type(text)
    except ValueError as exc:
        return _invalid_words(option, text, exc)[1] or text
    return text


def check_deprecated(facts: Facts) -> Iterator[Finding]:
    conf = _conf(facts)
    found = False
    for option in catalogue():
        current = (option.group, option.opt.dest)
        for path in conf.files:
            for group, name in names_of(option)[1:]:
                old = conf.find(path, group, name)
                if old is None:
                    continue
                found = True
                also = conf.find(path, *current)
                note = (f"; [{current[0]}] {current[1]} is set too and wins" if also
                        else "")
                renamed = (f" (renamed in {option.renamed_in}; the old name is still read)"
                           if option.renamed_in else "")
                removed = f"; ignored since {option.removed_in}" if option.removed_in else ""
                yield DEPRECATED.warn(
                    f"{old.where()} is the old name of [{current[0]}] {current[1]}{renamed}"
                    f"{note}{removed}",
                    f"in {path}: move it to [{current[0]}] {current[1]} = "
                    f"{_corrected(option, old.value)}"
                    if not also else f"in {path}: remove [{old.section}] {old.option}",
                    old=f"[{old.section}] {old.option}", new=f"[{current[0]}] {current[1]}")
    if not found:
        yield DEPRECATED.ok("no deprecated option names in use")


def check_unknown(facts: Facts) -> Iterator[Finding]:
    conf = _conf(facts)
    known = known_names()
    found = False
    for path in conf.files:
        for section, values in conf.sections[path].items():
            group = group_of(section)
            if group not in known:
                continue
            for name, written in values.items():
                if name in known[group]:
                    continue
                found = True
                near = nearest(name, known[group])
                value = written[-1]
                if near:
                    yield UNKNOWN.warn(
                        f"{path}: [{section}] {name} is read by nobody (not an option of "
                        f"nova 34 or novakeeper in [{section}]); did you mean {near}?",
                        f"in {path}: [{section}] {near} = {value}",
                        section=section, option=name, nearest=near)
                else:
                    yield UNKNOWN.warn(
                        f"{path}: [{section}] {name} is read by nobody (not an option of "
                        f"nova 34 or novakeeper in [{section}])",
                        f"in {path}: remove [{section}] {name}, or move it to the section "
                        "that reads it", section=section, option=name, nearest=None)
    if not found:
        yield UNKNOWN.ok(f"every option in [{'], ['.join(sorted(known))}] is known")


def check_cache_ages(facts: Facts) -> Iterator[Finding]:
    conf = _conf(facts)
    if not conf.get("image_cache", "remove_unused_base_images"):
        yield CACHE_AGES.ok("[image_cache] remove_unused_base_images = false: no age applies")
        return
    original = conf.get("image_cache", "remove_unused_original_minimum_age_seconds")
    resized = conf.get("image_cache", "remove_unused_resized_minimum_age_seconds")
    found = False
    for name, age in (("remove_unused_original_minimum_age_seconds", original),
                      ("remove_unused_resized_minimum_age_seconds", resized)):
        if age < MIN_SANE_AGE:
            found = True
            yield CACHE_AGES.warn(
                f"[image_cache] {name} = {age}: unused bases are removed after {age} s "
                f"(under {MIN_SANE_AGE // 60} minutes: a test setting left in production?); "
                "every removal is a download again at the next boot of that image",
                f"[image_cache] {name} = {NOVA_DEFAULTS[name]}  (nova's default)",
                option=name, seconds=age)
    if resized > original:
        found = True
        yield CACHE_AGES.warn(
            f"resized copies are kept longer than their originals ([image_cache] "
            f"remove_unused_resized_minimum_age_seconds = {resized} > "
            f"remove_unused_original_minimum_age_seconds = {original})",
            f"[image_cache] remove_unused_resized_minimum_age_seconds = "
            f"{min(original, NOVA_DEFAULTS['remove_unused_resized_minimum_age_seconds'])}",
            original=original, resized=resized)
    if not found:
        yield CACHE_AGES.ok(f"unused originals removed after {original} s, resized copies "
                            f"after {resized} s")


def _cleans(conf: NovaConf) -> bool:
    return bool(conf.get("image_cache", "manager_interval") != -1
                and conf.get("image_cache", "remove_unused_base_images"))


def check_cache_manager(facts: Facts) -> Iterator[Finding]:
    conf = _conf(facts)
    nova = facts.nova_conf()
    interval = nova.get("image_cache", "manager_interval")
    mode = conf.get("novakeeper", "service_mode")
    nova_cleans = _cleans(nova)
    if not nova_cleans and mode != "clean":
        why = ("manager_interval = -1" if interval == -1
               else "remove_unused_base_images = false")
        yield CACHE_MANAGER.warn(
            f"nothing removes unused bases: nova's image cache manager is off ([image_cache] "
            f"{why}) and novakeeper's service only plans ([novakeeper] service_mode = "
            f"{mode}); _base grows until the disk is full, unless `novakeeper cache clean` "
            "runs from cron",
            "[novakeeper] service_mode = clean  (with `novakeeper cache serve` running), or "
            "[image_cache] manager_interval = 2400 in nova.conf",
            manager_interval=interval, service_mode=mode)
        return
    if nova_cleans and mode == "clean":
        differ = []
        for name in ("remove_unused_original_minimum_age_seconds",
                     "remove_unused_resized_minimum_age_seconds"):
            ours, theirs = conf.get("image_cache", name), nova.get("image_cache", name)
            if ours != theirs:
                differ.append(f"{name}: nova {theirs} s, novakeeper {ours} s")
        if differ:
            yield CACHE_MANAGER.warn(
                "two cleaners with different ages: nova's image cache manager and "
                f"novakeeper (service_mode = clean) both remove unused bases; "
                f"{'; '.join(differ)}: the shorter age wins",
                "set the same ages in nova.conf and novakeeper.conf, or leave cleaning to "
                "one: [image_cache] remove_unused_base_images = false in nova.conf",
                differ=differ)
            return
    who = []
    if nova_cleans:
        who.append(f"nova's image cache manager (every {interval or 60} s)")
    if mode == "clean":
        who.append("novakeeper's service (service_mode = clean)")
    yield CACHE_MANAGER.ok(f"unused bases are removed by {' and '.join(who)}")


def check_budget(facts: Facts) -> Iterator[Finding]:
    from novakeeper.passes import plan_pass
    settings = facts.settings()
    budget = settings.policy.budget
    if not budget.enabled:
        yield BUDGET.ok("no budget set ([novakeeper] max_cache_size, watermarks, "
                        "min_free_space)")
        return
    if not os.path.isdir(settings.cache_path):
        yield BUDGET.skip(f"no cache folder at {settings.cache_path}")
        return
    try:
        with plan_pass(settings, now=facts.now, use_state=True) as result:
            outcome = result.plan.budget
    except Exception as exc:  # any failure of the scan is a reason to skip
        from novakeeper.errors import NovakeeperError
        why = (exc.message if isinstance(exc, NovakeeperError)
               else f"{type(exc).__name__}: {exc}")
        yield BUDGET.skip(f"cannot plan the cache: {why}")
        return
    if outcome is None:
        yield BUDGET.ok("no budget set")
        return
    if outcome.shortfall:
        kept = {k: v for k, v in outcome.kept.items() if v}
        yield BUDGET.warn(
            f"the budget cannot be met: {outcome.shortfall_words()} (in-use and pinned "
            "bases are never evicted)",
            f"[novakeeper] max_cache_size = "
            f"{-(-(budget.max_cache_size + outcome.shortfall) // (1 << 30))}G or more, or "
            "fewer pins (`novakeeper cache pins`)"
            if budget.max_cache_size is not None else
            "lower [novakeeper] min_free_space or raise high_watermark, or unpin images "
            "(`novakeeper cache pins`)",
            shortfall=outcome.shortfall, kept=kept)
        return
    yield BUDGET.ok(outcome.words())



FILES = Check(
    "conf.files", "configuration files", "that nova.conf and novakeeper.conf exist, can be "
    "read and parse (oslo.config's parser)", "the file and line to correct", check_files)
VALUES = Check(
    "conf.values", "option values", "every option novakeeper reads and nova's options "
    "whose mistakes are in operators' notes ([api]/[DEFAULT] auth_strategy, [image_cache], "
    "[libvirt] images_type and virt_type, instances_path, force_raw_images, use_cow_images, "
    "disk_allocation_ratio, reserved_host_disk_mb, [vnc]/[spice] enabled): type, range, "
    "choices; FAIL naming the releases that read it", "the line with the nearest valid "
    "value (`auth_strategy = keystone` for `keyston`)", check_values)
DEPRECATED = Check(
    "conf.deprecated", "deprecated option names", "old names still read, such as [DEFAULT] "
    "image_cache_manager_interval", "the option's current group and name", check_deprecated)
UNKNOWN = Check(
    "conf.unknown", "unknown options", "options in [DEFAULT], [api], [image_cache], "
    "[libvirt], [vnc], [spice], [cache], [oslo_concurrency], [novakeeper] that neither "
    "nova 34 nor novakeeper reads (typos)", "the nearest known name", check_unknown)
CACHE_AGES = Check(
    "conf.cache-ages", "image cache ages", "removal ages under 10 minutes; resized copies "
    "kept longer than originals", "nova's default ages", check_cache_ages)
CACHE_MANAGER = Check(
    "conf.cache-manager", "who cleans the cache", "nova's manager off ([image_cache] "
    "manager_interval = -1) with no novakeeper service cleaning; nova and novakeeper both "
    "cleaning with different ages", "the option that leaves exactly one cleaner",
    check_cache_manager)
BUDGET = Check(
    "conf.budget", "novakeeper's budget", "whether [novakeeper] max_cache_size / "
    "watermarks / min_free_space can be met at all, or in-use and pinned bases alone exceed "
    "it (scans the cache as `cache plan` does)", "a budget that fits, or fewer pins",
    check_budget)

AUTH_STRATEGY_OPTION = next(o for o in catalogue() if o.opt.dest == "auth_strategy")

CHECKS: tuple[Check, ...] = (FILES, VALUES, DEPRECATED, UNKNOWN, CACHE_AGES, CACHE_MANAGER,
                             BUDGET)
