"""The live progress display, driven by a fake clock (milliseconds)."""

import io

from or1.progress import CLEAR_LINE, Progress, duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_durations_read_like_a_person_writes_them():
    assert [duration(s) for s in (0, 42, 185, 7620)] == ["0s", "42s", "3m05s", "2h07m"]


def test_status_names_the_phase_its_counts_and_the_etas():
    clock = Clock()
    p = Progress(total_steps=10, first_step=2, stream=io.StringIO(), tty=False, clock=clock, interval_s=30)
    assert p.text(0.0) == "step 2/10"
    p.begin_step(2)
    p.enter("generate", "256 prompts x 16")
    clock.now = 40.0
    assert p.text(clock.now) == "step 3/10 | generate (256 prompts x 16) 40s | step 40s"  # no ETA before a step ends
    p.exit("generate")
    clock.now = 100.0
    p.end_step()  # a 100-second step
    p.begin_step(3)
    p.enter("validate", "30 problems x 8")
    p.enter("generate")  # nested phases show innermost last
    clock.now = 130.0
    assert p.text(clock.now) == ("step 4/10 | validate (30 problems x 8) 30s | generate 30s | step 30s, ~1m10s left "
                                 "| run ETA 11m10s")  # 70 s of this step + 6 more steps of 100 s


def test_plain_lines_only_for_long_phases_and_then_every_interval():
    clock = Clock()
    p = Progress(total_steps=3, stream=io.StringIO(), tty=False, clock=clock, interval_s=30)
    p.begin_step(0)
    p.enter("update", "8 groups")
    clock.now = 29.0
    assert p.due(clock.now) is None  # a quick phase prints nothing
    clock.now = 30.0
    assert p.due(clock.now) == "step 1/3 | update (8 groups) 30s | step 30s"
    clock.now = 45.0
    assert p.due(clock.now) is None
    clock.now = 61.0
    assert p.due(clock.now).startswith("step 1/3 | update (8 groups) 1m01s")
    p.exit("update")
    clock.now = 200.0
    assert p.due(clock.now) is None  # between phases: nothing


def test_a_terminal_gets_one_line_redrawn_and_log_lines_clear_it(monkeypatch):
    import logging

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    handler = logging.StreamHandler(terminal)
    logging.getLogger("or1").addHandler(handler)
    try:
        p = Progress(total_steps=2, stream=terminal, interval_s=30).start()
        p.begin_step(0)
        p.enter("generate", "4 prompts x 2")
        p._stop.wait(1.3)  # one redraw
        logging.getLogger("or1").warning("a log line")
        p.close()
    finally:
        logging.getLogger("or1").removeHandler(handler)
    out = terminal.getvalue()
    assert CLEAR_LINE + "step 1/2 | generate (4 prompts x 2) 1s" in out
    assert CLEAR_LINE + "a log line\n" in out and out.endswith(CLEAR_LINE)
