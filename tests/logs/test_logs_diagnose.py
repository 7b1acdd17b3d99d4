"""The knowledge base: every shipped signature found from its own sample and nothing else
triggered by it; floods, `near` and `context` conditions; user files; disk figures."""

from __future__ import annotations

import io
import os
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import loggen
import pytest
from rich.console import Console

from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.logs import diagnose, render, sources
from novakeeper.logs.window import Window

SHIPPED = diagnose.load()
BY_ID = {s.id: s for s in SHIPPED}
REPO = Path(__file__).resolve().parents[2]
BACKGROUND: list[str] = []


def background() -> str:
    """Ordinary traffic around the samples, so a sample is found among other lines."""
    if not BACKGROUND:
        out = []
        for i in range(200):
            out.append(f"2026-11-20 09:{i // 60:02d}:{i % 60:02d}.000 4101 INFO "
                       "nova.compute.resource_tracker [None req-5e4d3c2b-1a09-4f8e-b7d6-"
                       f"c5b4a39281{i % 90 + 10:02d} - - - - - -] Final resource view: "
                       "name=compute1 phys_ram=257790MB used_ram=4608MB")
        BACKGROUND.append("\n".join(out) + "\n")
    return BACKGROUND[0]


def run(root: Path, sigs: list[diagnose.Signature] = SHIPPED,
        **kw: object) -> diagnose.DiagnoseResult:
    files = sources.discover([str(root)]).files
    return diagnose.diagnose(files, sigs, **kw)  # type: ignore[arg-type]


def test_the_knowledge_base_has_the_issues_thirteen() -> None:
    assert {"disk-full-base", "image-not-authorized", "ide-bus-unsupported",
            "cirrus-vga-unavailable", "compute-host-not-mapped", "service-catalog-duplicate",
            "ascii-locale", "bind-permission-denied", "db-access-denied",
            "evacuate-shared-storage", "imagecache-flood", "no-valid-host-capabilities",
            "memcached-refused"} <= set(BY_ID)
    assert all(s.sample and s.cause and s.fix and s.match for s in SHIPPED)


@pytest.mark.parametrize("sig", SHIPPED, ids=[s.id for s in SHIPPED])
def test_shipped_signature_is_found_from_its_sample(sig: diagnose.Signature,
                                                    tmp_path: Path) -> None:
    text = background() + (sig.sample.strip("\n") + "\n") * sig.min_count + background()
    (tmp_path / "nova-compute.log").write_text(text)
    result = run(tmp_path)
    assert [h.signature.id for h in result.hits] == [sig.id]  # and nothing else
    hit = result.hits[0]
    assert hit.count == sig.min_count
    assert hit.per_file == {str(tmp_path / "nova-compute.log"): sig.min_count}
    assert hit.examples and hit.examples[0].record.line is not None
    assert hit.examples[0].lines[0] in sig.sample.strip("\n").splitlines()


def test_every_shipped_signature_is_found_in_one_generated_log_set(tmp_path: Path) -> None:
    def extra(b: loggen.Builder, start: object, end: object) -> None:
        t = loggen.START + timedelta(minutes=20)
        for i, sig in enumerate(SHIPPED):
            for _ in range(sig.min_count):
                b.emit(t + timedelta(minutes=i), loggen.COMPUTE1, *sig.sample.strip(
                    "\n").splitlines())

    loggen.build(tmp_path, span=timedelta(hours=1), extra=extra)
    result = run(tmp_path)
    assert {h.signature.id for h in result.hits} == set(BY_ID)
    # the generated disk-full and no-valid-host failures are found too
    assert {h.signature.id: h.count for h in result.hits}["disk-full-base"] == 2
    assert {h.signature.id: h.count for h in result.hits}["no-valid-host-capabilities"] == 2


def test_a_flood_signature_needs_its_count(tmp_path: Path) -> None:
    sig = BY_ID["imagecache-flood"]
    lines = (sig.sample.strip("\n") + "\n") * (sig.min_count - 1)
    (tmp_path / "nova-compute.log").write_text(lines)
    result = run(tmp_path)
    assert result.hits == [] and result.below_threshold == {sig.id: sig.min_count - 1}


def test_no_valid_host_needs_compute_capabilities_filter_near_it(tmp_path: Path) -> None:
    sample = BY_ID["no-valid-host-capabilities"].sample.strip("\n").splitlines()
    log = tmp_path / "nova-conductor.log"
    log.write_text(sample[1] + "\n")  # No valid host alone: another cause
    assert run(tmp_path).hits == []
    # the filter line of another request, 10 minutes earlier: not near
    other = sample[0].replace("10:30:00.301", "10:20:00.301").replace(
        "req-803468b6", "req-99999999")
    log.write_text(other + "\n" + sample[1] + "\n")
    assert run(tmp_path).hits == []
    # same request, even far apart: near
    log.write_text(sample[0].replace("10:30:00.301", "10:20:00.301") + "\n" + sample[1] + "\n")
    assert [h.signature.id for h in run(tmp_path).hits] == ["no-valid-host-capabilities"]
    # another request, but within near_seconds
    log.write_text(sample[0].replace("req-803468b6", "req-99999999") + "\n" + sample[1] + "\n")
    assert [h.signature.id for h in run(tmp_path).hits] == ["no-valid-host-capabilities"]


def test_disk_full_needs_qemu_img_convert_of_a_base_in_the_same_record(tmp_path: Path) -> None:
    (tmp_path / "glance-api.log").write_text(
        "2026-11-20 10:00:00.000 3202 ERROR glance.api.v2.image_data [None req-1 u p - d d] "
        "Failed to upload image data: [Errno 28] No space left on device\n")
    assert run(tmp_path).hits == []


def test_user_signatures_add_replace_and_disable(tmp_path: Path) -> None:
    user = tmp_path / "mine.toml"
    user.write_text('''
[[signature]]
id = "rabbit-unreachable"
title = "RabbitMQ unreachable"
cause = "The broker is down."
fix = "Start it."
match = ['AMQP server on \\S+ is unreachable']

[[signature]]
id = "memcached-refused"
title = "Our own memcached words"
cause = "c"
fix = "f"
match = ['Marking dead']

[[signature]]
id = "imagecache-flood"
enabled = false
''')
    sigs = diagnose.load([str(user)])
    ids = [s.id for s in sigs]
    assert "rabbit-unreachable" in ids and "imagecache-flood" not in ids
    assert next(s for s in sigs if s.id == "memcached-refused").title == "Our own memcached words"
    assert next(s for s in sigs if s.id == "rabbit-unreachable").source == str(user)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "nova-scheduler.log").write_text(
        "2014-10-09 09:09:21.898 5395 ERROR oslo.messaging._drivers.impl_rabbit [-] AMQP "
        "server on localhost:5672 is unreachable: [Errno 111] ECONNREFUSED. Trying again in "
        "25 seconds.\n")
    assert [h.signature.id for h in run(logs, sigs).hits] == ["rabbit-unreachable"]


@pytest.mark.parametrize(("content", "message"), [
    ("[[signature]\n", "not valid TOML"),
    ('[[signature]]\nid = "x"\ntitle = "t"\ncause = "c"\nmatch = ["a"]\n', "'fix' is missing"),
    ('[[signature]]\nid = "x"\ntitle = "t"\ncause = "c"\nfix = "f"\nmatch = ["(a"]\n',
     "bad regex '(a' in 'match'"),
    ('[[signature]]\nid = "x"\ntitle = "t"\ncause = "c"\nfix = "f"\nmatch = ["a"]\nfoo = 1\n',
     "unknown key(s): foo"),
    ('[[signature]]\nid = "Bad Id"\n', "'id' must be a lower-case name"),
    ('[[signature]]\nid = "x"\ntitle = "t"\ncause = "c"\nfix = "f"\nmatch = []\n',
     "'match' needs at least one regex"),
    ('[[signature]]\nid = "x"\ntitle = "t"\ncause = "c"\nfix = "f"\nmatch = ["a"]\n'
     "min_count = 0\n", "'min_count' must be a positive integer"),
    ('[signature]\nid = "x"\n', "'signature' must be an array of tables"),
])
def test_bad_user_signatures_are_one_line_errors(tmp_path: Path, content: str,
                                                 message: str) -> None:
    user = tmp_path / "bad.toml"
    user.write_text(content)
    with pytest.raises(NovakeeperError) as err:
        diagnose.load([str(user)])
    assert err.value.code == ExitCode.CONFIG
    assert err.value.message.startswith(f"{user}: ") and message in err.value.message
    assert "\n" not in err.value.message


@pytest.mark.parametrize(("pattern", "anchor"), [
    ("No space left on device", "No space left on device"),
    (r"Access denied for user \S+ to database", "Access denied for user "),
    (r"ComputeCapabilitiesFilter: \(start: \d+, end: 0\)", "ComputeCapabilitiesFilter: (start: "),
    (r"could not bind|Permission denied", None),  # alternation: no single literal
    ("(?i)memcache", None),  # flags: case may differ
    ("ab?c", None),  # too short once the optional b is dropped
    ("colou?r scheme", "r scheme"),
    ("[Ee]rror: disk (full|gone)", "rror: disk "),
])
def test_literal_anchor(pattern: str, anchor: str | None) -> None:
    assert diagnose.literal_anchor(pattern) == anchor


def test_a_signature_without_an_anchor_is_still_found(tmp_path: Path) -> None:
    sig = diagnose.Signature("any-case", "t", "c", "f", ("(?i)NO SPACE left",))
    (tmp_path / "x.log").write_text(background() + "disk: no space LEFT on device\n")
    assert [h.count for h in run(tmp_path, [sig]).hits] == [1]


def test_disk_facts(tmp_path: Path) -> None:
    base = tmp_path / "_base"
    base.mkdir()
    for i in range(3):
        (base / f"{i:040x}").write_bytes(b"\1" * 8192)
    facts = diagnose.disk_facts(str(base))
    st = os.statvfs(base)
    assert facts.total == st.f_blocks * st.f_frsize and facts.free is not None
    assert facts.cache_files == 3 and facts.cache_bytes is not None
    assert facts.cache_bytes >= 3 * 8192 and facts.used_pct is not None
    assert "the cache folder holds 3 files" in render.disk_text(facts)
    missing = diagnose.disk_facts(str(tmp_path / "nope"))
    assert missing.note and "cannot stat it" in render.disk_text(missing)
    assert diagnose.disk_facts(None, "configuration not loaded: x").note == (
        "configuration not loaded: x")


def test_text_and_json_output(tmp_path: Path) -> None:
    sig = BY_ID["disk-full-base"]
    (tmp_path / "nova-compute.log").write_text(background() + sig.sample.strip("\n") + "\n")
    result = run(tmp_path)
    result.disk = diagnose.disk_facts(str(tmp_path))
    out = io.StringIO()
    render.diagnose_text(result, Console(file=out, width=120, color_system=None))
    text = out.getvalue()
    assert text.startswith("diagnose: 1 known problem in 1 file (")
    for word in ("disk-full-base", "cause", "fix", "novakeeper cache clean", "disk",
                 f"{tmp_path}: ", "free of", "No space left on device", "nova-compute.log:201"):
        assert word in text
    assert not [line for line in text.splitlines() if line.endswith(" ")]  # no padding
    data = render.diagnose_data(result)
    hit = data["hits"][0]
    assert hit["id"] == "disk-full-base" and hit["count"] == 1 and hit["disk"]["path"] == str(
        tmp_path)
    assert hit["examples"][0]["line"] == 201 and hit["files"] == {
        str(tmp_path / "nova-compute.log"): 1}


def test_the_knowledge_base_is_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "logs/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["novakeeper"]
    assert (REPO / "src/novakeeper/logs/signatures.toml").is_file()


def test_a_window_limits_what_is_diagnosed(tmp_path: Path) -> None:
    text = "".join(BY_ID[i].sample.strip("\n") + "\n" for i in (
        "db-access-denied", "disk-full-base", "image-not-authorized"))  # 10:05, 10:24, 15:01
    (tmp_path / "nova-compute.log").write_text(text)
    since = datetime(2026, 11, 20, 10, 10, tzinfo=UTC)
    until = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    found = run(tmp_path, window=Window(since, until))
    assert [h.signature.id for h in found.hits] == ["disk-full-base"]
