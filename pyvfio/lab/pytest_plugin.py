"""pytest plugin: run the ``device`` tests against real kernel drivers in lab guests.

Enable it from ``conftest.py``::

    pytest_plugins = ["pyvfio.lab.pytest_plugin"]

Markers:

``device``
    The test drives a device.  It runs on the host against the mock, then
    once in each guest against the real kernel.
``host``
    The test runs on the host only (as do tests with neither marker).

After the host's tests, unless ``--lab=off``, one guest boots per
configuration — stock kernel with IOMMU; full kernel with IOMMU; full kernel
without (IOMMUFD mock domains and VFIO no-IOMMU need that one) — and runs
``python -m pytest -m device`` on the same paths.  Its output streams under a
header naming the configuration; its junit results are added to the
session's, so failures in a guest fail the session.  The fixture
``lab_target`` tells a test where it runs (real driver or mock, which
kernel), and ``-v`` lines of device tests say it too.
"""
from __future__ import annotations

import codecs
import os
import shlex
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Dict, Generator, List, Optional, Set, Tuple

import pytest

from pyvfio.lab import in_guest

__all__ = ["LabTarget", "GuestConfig", "GuestOutcome", "parse_junit", "guest_configs"]

_X86 = (("stock", True), ("full", True), ("full", False))
_ARCHES = (("stock", True, "ppc64le"), ("stock", True, "aarch64"))
_FLAVOURS_OF_MODE = {
    "stock": (("stock", True),),
    "full": (("full", True), ("full", False)),
    "all": _X86 + _ARCHES,
    "x86_64": _X86,
    "arches": _ARCHES,
    "ppc64le": (("stock", True, "ppc64le"),),
    "ppc64le-64k": (("stock", True, "ppc64le", 64),),
    "aarch64": (("stock", True, "aarch64"),),
}
_MODES = ("auto", "off", "stock", "full", "x86_64", "aarch64", "ppc64le", "ppc64le-64k",
          "arches", "all")
_JUNIT = "junit.xml"
_NO_QEMU = "QEMU not found: guest tests skipped, device tests ran against the mock only"
_PROP_TARGET = "lab_target"
_PROP_NODEID = "lab_nodeid"


@dataclass(frozen=True)
class LabTarget:
    """Where the tests of this session run."""
    #: ``"real"`` (a lab guest: the real kernel driver) or ``"mock"`` (the host: pyvfio's mock).
    kind: str
    #: Kernel release of the guest (``uname -r``), None for the mock.
    kernel: Optional[str] = None
    #: ``"stock"`` or ``"full"`` in a guest, None for the mock.
    flavour: Optional[str] = None
    #: Whether the guest has the emulated IOMMU.
    iommu: bool = False
    #: The machine's architecture (``uname -m``): ``x86_64``, ``aarch64``, ``ppc64le``.
    arch: str = os.uname().machine

    @classmethod
    def current(cls) -> LabTarget:
        """The target of this process: a lab guest (``PYVFIO_LAB=1``) or the mock."""
        if not in_guest():
            return cls("mock")
        return cls("real", os.environ.get("PYVFIO_LAB_KERNEL_RELEASE") or os.uname().release,
                   os.environ.get("PYVFIO_LAB_KERNEL") or None,
                   os.environ.get("PYVFIO_LAB_IOMMU") == "on", os.uname().machine)

    @property
    def label(self) -> str:
        """``real 6.12.95+deb12-amd64 stock iommu=on``, ``real 6.12.95+deb12-powerpc64le
        ppc64le stock iommu=on`` or ``mock``."""
        if self.kind == "mock":
            return "mock"
        arch = "" if self.arch == "x86_64" else f" {self.arch}"
        return f"real {self.kernel}{arch} {self.flavour} iommu={'on' if self.iommu else 'off'}"


@dataclass(frozen=True)
class GuestConfig:
    """One guest boot of the session."""
    flavour: str
    iommu: bool
    arch: str = "x86_64"
    #: Kernel page size in KiB.
    page_kib: int = 4

    @property
    def name(self) -> str:
        arch = "" if self.arch == "x86_64" else self.arch + (
            f"-{self.page_kib}k " if self.page_kib != 4 else " ")
        return f"{arch}{self.flavour} iommu={'on' if self.iommu else 'off'}"


@dataclass
class GuestOutcome:
    """What one guest session gave."""
    config: GuestConfig
    release: Optional[str] = None
    #: (nodeid, outcome, message) per test: outcome is passed, failed or skipped.
    results: List[Tuple[str, str, str]] = field(default_factory=list)
    #: Why the guest gave no (or incomplete) results.
    error: Optional[str] = None
    #: Stopped by Ctrl-C or a signal (the remaining guests are not booted).
    interrupted: bool = False
    #: Warnings about the guest (e.g. out-of-tree modules that could not be built).
    notes: Tuple[str, ...] = ()

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r[1] == outcome)


def guest_configs(mode: str) -> List[GuestConfig]:
    """The guests ``--lab=MODE`` boots (``auto`` must be resolved first)."""
    return [GuestConfig(*c) for c in _FLAVOURS_OF_MODE.get(mode, ())]


def parse_junit(data: bytes) -> List[Tuple[str, str, str]]:
    """``(nodeid, outcome, message)`` for each test case of a junit XML report."""
    results = []
    for case in ET.fromstring(data).iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        nodeid = props.get(_PROP_NODEID) or f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for tag, name in (("failure", "failed"), ("error", "failed"), ("skipped", "skipped")):
            element = case.find(tag)
            if element is not None:
                outcome, message = name, element.get("message") or ""
                break
        results.append((nodeid, outcome, message))
    return results


# --------------------------------------------------------------------------- hooks
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pyvfio lab", "real kernel drivers in QEMU guests")
    group.addoption("--lab", choices=_MODES, default="auto",
                    help="after the host's tests, run the device tests in QEMU guests: "
                         "stock (Debian kernel, IOMMU on), full (lab kernel, IOMMU on and "
                         "off), x86_64 (both), ppc64le (pseries, Debian's ppc64el kernel), "
                         "ppc64le-64k (its 64K-page kernel), aarch64 (virt, Debian's "
                         "arm64 kernel), arches (ppc64le and aarch64), all (x86_64 and "
                         "arches), off; auto (default) = all when QEMU is installed")
    group.addoption("--lab-timeout", type=float, default=3600.0, metavar="S",
                    help="seconds each guest session may take, boot included (default 3600)")
    group.addoption("--lab-cpu", metavar="MODEL", default=None,
                    help="the guests' CPU model (e.g. max: AMD with SVM under TCG, so the "
                         "guests have /dev/kvm and the KVM tests run nested)")
    parser.addini("lab_arch_skip", type="args", default=[],
                  help="test paths or node ids the aarch64 and ppc64le guests leave out "
                       "(families not ported to those guests yet)")
    parser.addini("lab_devices", type="args", default=["edu", "edu", "nvme", "e1000e", "igb"],
                  help="emulated PCI devices of the lab guests (igb only when QEMU has it)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "device: drives a device: runs on the host against "
                                       "the mock and in each lab guest against the real driver")
    config.addinivalue_line("markers", "host: runs on the host only, never in a lab guest")
    config.stash[_STATE] = _LabState(config)


def pytest_report_header(config: pytest.Config) -> str:
    state = config.stash[_STATE]
    if in_guest():
        return f"pyvfio lab guest: {LabTarget.current().label}"
    if state.no_qemu:
        return f"pyvfio lab: {_NO_QEMU}"
    if not state.configs:
        return "pyvfio lab: off (device tests run against the mock only)"
    return ("pyvfio lab: device tests run against the mock here, then in guests: "
            + ", ".join(c.name for c in state.configs))


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    if not in_guest():
        return
    deselected = [i for i in items if i.get_closest_marker("host") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [i for i in items if i.get_closest_marker("host") is None]


@pytest.fixture(scope="session")
def lab_target() -> LabTarget:
    """Where the device tests of this session run: real driver (and which kernel) or mock."""
    return LabTarget.current()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # properties of the item go into each of its reports (and the junit XML)
    if item.get_closest_marker("device") is None:
        return
    props = [(_PROP_TARGET, LabTarget.current().label)]
    if in_guest():
        props.append((_PROP_NODEID, item.nodeid))
    item.user_properties.extend(p for p in props if p not in item.user_properties)


@pytest.hookimpl(hookwrapper=True)
def pytest_report_teststatus(report: pytest.TestReport,
                             config: pytest.Config) -> Generator[None, Any, None]:
    outcome = yield
    target = dict(getattr(report, "user_properties", ())).get(_PROP_TARGET)
    result = outcome.get_result()
    if target and result and isinstance(result, tuple) and len(result) == 3:
        category, letter, word = result
        if isinstance(word, tuple):
            word = (f"{word[0]} [{target}]", word[1])
        elif word:
            word = f"{word} [{target}]"
        outcome.force_result((category, letter, word))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash[_STATE]
    if not state.should_run(session, exitstatus):
        return
    capman = session.config.pluginmanager.getplugin("capturemanager")
    reporter = session.config.pluginmanager.getplugin("terminalreporter")
    with capman.global_and_fixture_disabled():
        for config in state.configs:
            outcome = _run_guest(session, config, reporter)
            state.outcomes.append(outcome)
            if reporter is not None:
                _add_to_stats(reporter, outcome)
            if outcome.interrupted:
                session.exitstatus = pytest.ExitCode.INTERRUPTED
                return
    if any(o.error or o.count("failed") for o in state.outcomes):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and any(
            o.results for o in state.outcomes):
        session.exitstatus = pytest.ExitCode.OK


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    if in_guest():
        return
    state = config.stash[_STATE]
    tr = terminalreporter
    tr.write_sep("=", "pyvfio lab")
    if state.no_qemu:
        tr.write_line(_NO_QEMU, yellow=True)
    elif not state.configs:
        tr.write_line("lab off: device tests ran against the mock only")
    elif state.skip_reason:
        tr.write_line(f"no lab guests: {state.skip_reason}")
    host = _host_counts(tr.stats, {id(r) for r in state.injected})
    tr.write_line(f"host (mock): {_counts_text(host)}")
    for o in state.outcomes:
        name = f"guest {o.config.name}" + (f" ({o.release})" if o.release else "")
        text = _counts_text((o.count("passed"), o.count("failed"), o.count("skipped")))
        line = f"{name}: {text}" + (f"; FAILED: {o.error.splitlines()[0]}" if o.error else "")
        tr.write_line(line, red=bool(o.error or o.count("failed")))
        for note in o.notes:
            tr.write_line(f"  note: {note.splitlines()[0]}", yellow=True)
    real = sum(len(o.results) for o in state.outcomes)
    mock = sum(1 for cat in _CATEGORIES for r in tr.stats.get(cat, ())
               if dict(getattr(r, "user_properties", ())).get(_PROP_TARGET) == "mock")
    tr.write_line(f"device test results: {real} real, {mock} mock")
    # a guest that gave no results at all counts as one failure
    totals = [a + b for a, b in zip(host, _guest_totals(state.outcomes))]
    totals[1] += sum(1 for o in state.outcomes if o.error and not o.results)
    tr.write_line(f"{totals[0]} passed, {totals[1]} failed, {totals[2]} skipped")


# --------------------------------------------------------------------------- internals
_CATEGORIES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


class _LabState:
    """Per-session state of the plugin."""

    def __init__(self, config: pytest.Config) -> None:
        mode = config.getoption("--lab")
        self.no_qemu = False
        if in_guest() or hasattr(config, "workerinput"):
            mode = "off"
        elif mode == "auto":
            from pyvfio.lab.machine import find_qemu
            from pyvfio.lab.errors import QemuNotFoundError
            try:
                find_qemu()
                mode = "all"
            except QemuNotFoundError:
                self.no_qemu = True
                mode = "off"
        self.configs = guest_configs(mode)
        self.outcomes: List[GuestOutcome] = []
        self.injected: List[pytest.TestReport] = []
        self.skip_reason = ""

    def should_run(self, session: pytest.Session, exitstatus: int) -> bool:
        if not self.configs or session.config.option.collectonly:
            return False
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            self.skip_reason = "the session was interrupted"
            return False
        if not any(i.get_closest_marker("device") for i in session.items):
            self.skip_reason = "no device tests selected"
            return False
        return True


_STATE = pytest.StashKey[_LabState]()


def _guest_command(config: pytest.Config, color: bool, arch: str = "x86_64") -> List[str]:
    """The pytest command line of a guest session."""
    markexpr = config.option.markexpr
    marker = f"device and ({markexpr})" if markexpr else "device"
    python = sys.executable if arch == "x86_64" else "python3"
    cmd = [python, "-m", "pytest", "-p", "pyvfio.lab.pytest_plugin",
           "-p", "no:cacheprovider", "-m", marker, f"--junitxml=/run/lab/{_JUNIT}",
           "-o", "junit_family=xunit2", f"--color={'yes' if color else 'no'}"]
    if config.option.keyword:
        cmd += ["-k", config.option.keyword]
    if config.option.verbose > 0:
        cmd.append("-" + "v" * config.option.verbose)
    if config.option.reportchars:
        cmd.append(f"-r{config.option.reportchars}")
    if config.option.maxfail:
        cmd.append(f"--maxfail={config.option.maxfail}")
    if arch != "x86_64":
        for item in config.getini("lab_arch_skip"):
            cmd.append(f"--deselect={item}" if "::" in item else f"--ignore={item}")
    cmd += config.args
    return [shlex.quote(a) for a in cmd]


def _cpu_args(config: pytest.Config) -> Tuple[str, ...]:
    cpu = config.getoption("--lab-cpu")
    return ("-cpu", cpu) if cpu else ()      # QEMU takes the last -cpu given


def _run_guest(session: pytest.Session, config: GuestConfig,
               reporter: Optional[pytest.TerminalReporter]) -> GuestOutcome:
    """Boot the guest of ``config``, run the device tests in it, collect the results."""
    from pyvfio.lab._host import interruptible
    from pyvfio.lab.errors import LabError, LabInterrupted
    from pyvfio.lab.machine import find_qemu, qemu_device_models
    from pyvfio.lab.runner import LabOptions, prepare, run

    outcome = GuestOutcome(config)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(text: str) -> None:
        if reporter is not None:
            reporter.write(text, flush=True)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    title = f"pyvfio lab guest: {config.flavour} kernel, iommu={'on' if config.iommu else 'off'}"
    if config.arch != "x86_64":
        title = f"pyvfio lab guest: {config.name}"
    if reporter is not None:
        reporter.line("")  # end the progress line of the host's tests
        reporter.write_sep("=", title, cyan=True)
    else:
        write(f"=== {title} ===\n")
    try:
        with interruptible():
            image = prepare(config.flavour, config.arch, config.page_kib)
            outcome.release, outcome.notes = image.kernel.release, image.notes
            models = qemu_device_models(find_qemu(config.arch))
            devices = tuple(d for d in session.config.getini("lab_devices")
                            if d.split(",")[0] != "igb"
                            or ("igb" in models and config.arch != "ppc64le"))
            options = LabOptions(kernel=config.flavour, arch=config.arch,
                                 page_kib=config.page_kib, iommu=config.iommu, devices=devices,
                                 timeout=session.config.getoption("--lab-timeout"),
                                 qemu_args=_cpu_args(session.config),
                                 cwd=session.config.invocation_params.dir, fetch=(_JUNIT,))
            write(f"kernel {image.kernel.release}, devices: {' '.join(devices)}\n")
            color = reporter is not None and reporter.hasmarkup
            result = run(" ".join(_guest_command(session.config, color, config.arch)), options,
                         lambda data: write(decoder.decode(data)), image=image)
    except LabInterrupted as exc:
        outcome.error, outcome.interrupted = str(exc), True
        return outcome
    except LabError as exc:
        outcome.error = str(exc)
        write(f"\npyvfio lab: guest {config.name} failed: {exc}\n")
        return outcome
    junit = result.files.get(_JUNIT)
    if junit is not None:
        outcome.results = parse_junit(junit)
    if result.returncode not in (0, 1, 5) or junit is None:
        outcome.error = f"pytest in the guest exited with status {result.returncode}" + (
            "" if junit is not None else " without results")
    return outcome


def _add_to_stats(reporter: pytest.TerminalReporter, outcome: GuestOutcome) -> None:
    """Count a guest's results in the session's own summary line (and its FAILED list)."""
    label = f"real {outcome.release or '?'} {outcome.config.name}"
    state = reporter.config.stash[_STATE]
    results = list(outcome.results)
    if outcome.error and not results:
        results.append((f"pyvfio-lab guest {outcome.config.name}", "failed", outcome.error))
    for nodeid, result, message in results:
        path = nodeid.split("::", 1)[0]
        name = f"{nodeid} [{label}]"
        longrepr: Any = None
        if result == "failed":
            longrepr = f"{message}\n(in lab guest {outcome.config.name}: see its output above)"
        elif result == "skipped":
            longrepr = (path, 0, message)
        report = pytest.TestReport(name, (path, None, name), {}, result,  # type: ignore[arg-type]
                                   longrepr, "call")
        reporter.stats.setdefault(result, []).append(report)
        state.injected.append(report)


def _host_counts(stats: Dict[str, List[Any]], injected: Set[Any]) -> Tuple[int, int, int]:
    def n(*cats: str) -> int:
        return sum(1 for c in cats for r in stats.get(c, ()) if id(r) not in injected)
    return n("passed", "xpassed"), n("failed", "error"), n("skipped", "xfailed")


def _guest_totals(outcomes: List[GuestOutcome]) -> Tuple[int, int, int]:
    return (sum(o.count("passed") for o in outcomes), sum(o.count("failed") for o in outcomes),
            sum(o.count("skipped") for o in outcomes))


def _counts_text(counts: Tuple[int, int, int]) -> str:
    return f"{counts[0]} passed, {counts[1]} failed, {counts[2]} skipped"
