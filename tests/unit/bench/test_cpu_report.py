"""bench.cpu_report's window: the CPU between two scrapes that both reached every service."""

from pathlib import Path

from bench.cpu_report import RunWatch


def test_window_ends_at_the_newest_scrape_that_reached_every_service():
    watch = RunWatch(up_pid=0, run_dir=Path("."), base_port=0, first_step=4)
    watch.scrapes = {
        4: {("generator", "generate"): 10.0, ("learner", "forward_backward"): 3.0},
        5: {("generator", "generate"): 10.8, ("learner", "forward_backward"): 3.4},
        6: {("generator", "generate"): 11.6, ("learner", "forward_backward"): 3.8},
        7: {("generator", "generate"): 12.4},   # the learner had exited when its last record was scraped
    }
    # steps 5-6 (2 steps): the generator 1.6 CPU-s, the learner 0.8; before, the window ended at step 7
    # and dropped the learner's rows
    first, last, spent = watch.window()
    assert (first, last) == (4, 6)
    assert spent == {("generator", "generate"): 11.6 - 10.0, ("learner", "forward_backward"): 3.8 - 3.0}


def test_window_is_empty_without_a_second_complete_scrape():
    watch = RunWatch(up_pid=0, run_dir=Path("."), base_port=0, first_step=4)
    watch.scrapes = {4: {("learner", "wait"): 1.0}, 5: {("generator", "generate"): 2.0}}
    assert watch.window() == (4, 4, {})
