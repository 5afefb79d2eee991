"""From plain Python, detkd's INFO messages show while a detkd call runs, unless the host set up logging."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_info_shows_inside_a_call_and_nothing_is_left_behind():
    err = _run(
        """
        import logging
        from detkd.logs import console_logging, logged

        log = logging.getLogger("detkd.demo")

        @logged
        def work():
            log.info("inside the call")

        work()
        log.info("outside the call")
        assert not logging.getLogger("detkd").handlers and logging.getLogger("detkd").level == logging.NOTSET
        """
    )
    assert "INFO detkd.demo: inside the call" in err and "outside the call" not in err


def test_a_host_that_configured_logging_keeps_its_choice():
    err = _run(
        """
        import logging
        logging.basicConfig(level=logging.WARNING, format="HOST %(message)s")
        from detkd.logs import logged

        @logged
        def work():
            logging.getLogger("detkd.x").info("info")
            logging.getLogger("detkd.x").warning("warned")

        work()
        """
    )
    assert "HOST warned" in err and "info" not in err.replace("HOST warned", "")
