"""Log lines go through the standard logger "bench" (issue 25, item 14): a program importing the suite controls them."""

import logging
import re

from bench import log


def test_a_program_controls_the_suites_log_lines(capsys):
    logger = logging.getLogger("bench")
    level = logger.level
    try:
        log.info("first line")
        assert re.fullmatch(r"\[bench \d\d:\d\d:\d\d\] first line\n", capsys.readouterr().err)
        logger.setLevel(logging.WARNING)  # what an embedding program does to silence the suite
        log.info("not shown")
        assert capsys.readouterr().err == ""
        seen = []
        handler = logging.Handler()
        handler.emit = lambda record: seen.append(record.getMessage())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        log.info("to the program's handler too")
        logger.removeHandler(handler)
        assert seen == ["to the program's handler too"]
    finally:
        logger.setLevel(level)


def test_verbosity_sets_the_level(capsys):
    try:
        log.set_verbosity(0)
        log.info("hidden when quiet")
        assert capsys.readouterr().err == ""
        log.set_verbosity(2)
        log.debug("shown when verbose")
        assert "shown when verbose" in capsys.readouterr().err
        log.set_verbosity(1)
        log.debug("hidden at normal verbosity")
        assert capsys.readouterr().err == ""
    finally:
        log.set_verbosity(1)
