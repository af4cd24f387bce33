"""Why a khugepaged thread that was asked for never ran, from its own state."""

from __future__ import annotations

from scenario import HPAGE_PMD_SIZE, Scenario

from emu.kernel.config import ThpConfig


def test_no_time_reason_names_the_wake() -> None:
    """Registered, but the run ends before the thread's wake (daemon state only)."""
    sim = Scenario("x86_64", thp=ThpConfig(enabled="always"), preset="default")
    kh = sim.khugepaged
    p = sim.new_proc()
    kh.now_ns = 5_000_000                       # the machine's clock at the fault
    sim.mmap(p, 1 << 30, HPAGE_PMD_SIZE, now_ns=5_000_000)
    sim.write(p, 1 << 30)                       # a PMD-order fault registers the mm
    assert kh.why_idle(1_000_000) == ("no time: the run ended at 1.000 ms of simulated time,"
                                      " before the first wake at 5.000 ms")
    sim.tick(5_000_000)
    assert kh.passes == 1 and kh.why_idle(6_000_000) is None


def test_nothing_registered_when_checks_ran_and_found_nothing() -> None:
    sim = Scenario("arm64", thp=ThpConfig(enabled="always"), preset="fast")
    kh = sim.khugepaged
    kh.run(0)
    kh.run(5_000_000)
    p = sim.new_proc()
    sim.mmap(p, 1 << 30, HPAGE_PMD_SIZE)        # never written: no anon_vma, not registered
    assert kh.why_idle(5_000_000).startswith(
        "nothing registered: khugepaged_enter_vma() never added an mm")
    sim.thp.enabled = "never"
    assert kh.why_idle(5_000_000).startswith("THP disabled")
