import io

from tinylm.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_few_plain_lines_not_redraws(monkeypatch):
    monkeypatch.setenv("TINYLM_PROGRESS_INTERVAL", "30")
    log = io.StringIO()
    for _ in progress_bar(range(10_000), file=log, desc="eval"):
        pass
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) <= 3  # the start, the finish and at most one interval between
    assert lines[-1].startswith("eval: 100%")


def test_a_log_hears_nothing_of_a_quick_bar_a_terminal_would_erase(monkeypatch):
    monkeypatch.setenv("TINYLM_PROGRESS_INTERVAL", "30")
    log = io.StringIO()
    for _ in progress_bar(range(100), file=log, leave=False):
        pass
    assert log.getvalue() == ""


def test_the_log_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TINYLM_PROGRESS_INTERVAL", "0")
    log = io.StringIO()
    for _ in progress_bar(range(5), file=log, miniters=1):
        pass
    lines = log.getvalue().splitlines()
    assert [f"{k}/5" in line for k, line in enumerate(lines[:6])] == [True] * 6  # a line per update


def test_a_terminal_keeps_the_live_bar():
    screen = Terminal()
    for _ in progress_bar(range(5), file=screen, mininterval=0, miniters=1):
        pass
    assert screen.getvalue().count("\r") >= 5 and screen.getvalue().count("\n") == 1
