"""The fast suite's promise (it starts no process) is kept by a guard, not
by memory: these check the guard itself and the whole-module opt-out."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest

from tests.support.e2e import MODULE_MARK, ProcessGuard, skip_e2e_module


def test_the_guard_refuses_every_way_to_start_a_process_and_names_the_test():
    original = subprocess.Popen._execute_child
    with ProcessGuard("tests/x.py::test_y"):
        with pytest.raises(RuntimeError, match=r"tests/x.py::test_y starts a process but is not marked e2e"):
            subprocess.run([sys.executable, "-c", "pass"], timeout=10)
        with pytest.raises(RuntimeError):
            os.fork()
        with pytest.raises(RuntimeError):
            os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], dict(os.environ))
        with pytest.raises(RuntimeError):
            os.system("true")
        with pytest.raises(RuntimeError):
            multiprocessing.get_context("spawn").Process(target=print).start()
    assert subprocess.Popen._execute_child is original


def test_a_fast_run_does_not_import_a_module_that_says_it_is_all_e2e(tmp_path):
    marked = tmp_path / "test_stack.py"
    marked.write_text(f"import pytest\n\n{MODULE_MARK}\n\ndef test_x(): pass\n")
    plain = tmp_path / "test_plain.py"
    plain.write_text("import pytest\n\ndef test_x(): pass\n")
    helper = tmp_path / "support.py"
    helper.write_text(f"{MODULE_MARK}\n")
    assert skip_e2e_module(marked, "not e2e") and skip_e2e_module(marked, " not  e2e ")
    assert not skip_e2e_module(marked, "") and not skip_e2e_module(marked, "e2e")  # full and e2e runs import it
    assert not skip_e2e_module(plain, "not e2e") and not skip_e2e_module(helper, "not e2e")
