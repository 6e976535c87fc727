"""The code sandbox (revjax.tasks.sandbox): who the program runs as, what it may write, the output cap, the limits,
no fork of the (JAX) caller, and HumanEval reported as not run where there is no sandbox.

The attacks themselves (a .pth in site-packages, signals, setsid children, floods, fork storms, memory) are the
sandbox cases of scripts/security_drill.py, run by tests/test_security.py. These tests need bubblewrap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import pytest

from revjax.tasks import get_task, sandbox
from revjax.tasks.graders import grade_code
from revjax.tasks.sandbox import SandboxUnavailable, run_program, sandbox_problem

FIX = Path(__file__).resolve().parent / "fixtures" / "tasks"
# what the sandbox's fresh /tmp holds: the program, and the way to the Python it runs where that lies under /tmp
# (it is mounted back read-only there, e.g. a checkout's .venv in /tmp/<checkout>)
TMP_LISTING = sorted({"program.py"} | {Path(f).relative_to("/tmp").parts[0] for f in sandbox._python_folders()
                                       if f.startswith("/tmp/")})


def _sandbox() -> None:
    if shutil.which("bwrap") is None:
        pytest.fail("the sandbox tests need bubblewrap from the system's packages (Debian: apt-get install "
                    "bubblewrap)")
    problem = sandbox_problem()
    if problem is not None:
        pytest.fail(problem)


@pytest.fixture
def no_bwrap(monkeypatch, tmp_path):
    """bubblewrap missing: nothing may be started."""
    monkeypatch.setattr(sandbox, "BWRAP", str(tmp_path / "bwrap-not-installed"))
    monkeypatch.setattr(sandbox, "_problems", {})

    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started without a sandbox: {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "Popen", refuse)


PROBE = """\
import ctypes, os
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(" ".join(status[k].split()[0] for k in ("Uid", "Gid", "CapEff", "CapBnd", "NoNewPrivs")))
print(os.getpid(), os.readlink("/proc/self/ns/pid"), os.readlink("/proc/self/ns/net"))
print(open("/proc/self/uid_map").read().split()[:3])
print(os.getcwd(), os.environ["HOME"], sorted(os.listdir("/tmp")))
print(ctypes.CDLL(None, use_errno=True).unshare(0x10000000), ctypes.get_errno() != 0)  # a user namespace of its own
"""


def test_program_runs_unprivileged_in_namespaces_of_its_own():
    _sandbox()
    result = run_program(PROBE, timeout=10)
    assert result.success, result.stderr
    ids, spaces, uid_map, places, nested = result.stdout.splitlines()
    uid, gid, cap_eff, cap_bnd, no_new_privs = ids.split()
    assert (uid, gid, int(cap_eff, 16), no_new_privs) == ("65534", "65534", 0, "1")
    if os.geteuid() == 0:  # root's sandbox runs the program as the real uid 65534, not as root renamed
        assert uid_map == "['65534', '65534', '1']" and int(cap_bnd, 16) == 0
    assert nested.split()[0] == "-1"  # and it may not make a user namespace of its own
    pid, pid_ns, net_ns = spaces.split()
    assert int(pid) <= 3 and pid_ns != os.readlink("/proc/self/ns/pid") and net_ns != os.readlink("/proc/self/ns/net")
    assert places == f"/tmp /tmp {TMP_LISTING}"


def test_user_namespace_sandbox_of_an_unprivileged_evaluator():
    """The setup an evaluator that is not root gets (exercised here whoever runs the tests)."""
    _sandbox()
    program = PROBE + "open('/written', 'w')\n"
    result = sandbox._run(program, 10.0, 1 << 30, 1 << 16, as_root=False)
    ids, spaces, _, places, nested = result.stdout.splitlines()
    uid, gid, cap_eff = ids.split()[:3]
    assert (uid, gid, int(cap_eff, 16), spaces.split()[0]) == ("65534", "65534", 0, "2")
    assert places == f"/tmp /tmp {TMP_LISTING}" and nested.split()[0] == "-1"  # no further user namespaces
    assert result.returncode == 1 and "Read-only file system: '/written'" in result.stderr


def test_only_its_own_tmp_is_writable_and_it_vanishes():
    _sandbox()
    program = (
        "import os, sys\n"
        "open('/tmp/mine', 'w').write('x' * 1000)\n"
        "for path in ('/written', sys.prefix + '/written', sys.base_prefix + '/written', '/root/written'):\n"
        "    try:\n        open(path, 'w')\n        print('wrote', path)\n"
        "    except OSError as e:\n        print(e.strerror)\n"
        "try:\n    open('/tmp/big', 'wb').write(b'x' * (2 << 20))\n"
        "except OSError as e:\n    print('big:', e.strerror)\n"
        "for n in range(80):\n    try:\n        open(f'/tmp/{n}', 'wb').write(b'x' * (1 << 20))\n"
        "    except OSError as e:\n        print(f'file {n}:', e.strerror)\n        break\n"
    )
    result = run_program(program, timeout=20)
    said = result.stdout.splitlines()
    assert said[:5] == ["Read-only file system"] * 4 + ["big: File too large"]  # files of 1 MiB at most
    assert said[5].endswith("No space left on device") and 60 <= int(said[5].split()[1][:-1]) < 64  # /tmp: 64 MiB
    again = run_program("import os\nprint(sorted(os.listdir('/tmp')))\n")
    assert again.stdout == f"{TMP_LISTING}\n"
    huge = run_program("#" * (2 << 20))  # could not even be written to /tmp/program.py
    assert not huge.success and huge.returncode is None and "larger than the sandbox's file size limit" in huge.stderr


def test_output_is_capped_and_read_as_it_comes():
    _sandbox()
    started = time.perf_counter()
    flood = run_program("import sys\nprint('start', flush=True)\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
                        timeout=10, output_bytes=1000)
    assert time.perf_counter() - started < 5 and not flood.timed_out
    assert flood.truncated and len(flood.stdout) == 1000 and flood.stdout.startswith("start\nxxx")
    assert not flood.success and "BrokenPipeError" in flood.stderr
    fits = run_program("print('y' * 998)\n", output_bytes=1000)  # 999 bytes with the newline: kept whole
    assert fits.success and fits.stdout == "y" * 998 + "\n" and not fits.truncated


def test_time_limit_ends_everything_it_started():
    _sandbox()
    token = f"{3600 + time.time() % 1:.6f}"
    program = (f"import os, time\nif os.fork() == 0:\n    os.setsid()\n    os.execvp('sleep', ['sleep', '{token}'])\n"
               "print('before the limit', flush=True)\ntime.sleep(60)\n")
    started = time.perf_counter()
    result = run_program(program, timeout=1.0)
    assert result.timed_out and not result.success and result.returncode is None
    assert time.perf_counter() - started < 3 and result.stdout == "before the limit\n"
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and token.encode() in _cmdline(p)]
    assert left == []


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_no_fork_of_the_jax_process():
    """JAX warns on os.fork() (it may deadlock a multithreaded process); the sandbox is started with a plain argv."""
    _sandbox()
    import jax

    jax.devices()  # JAX installs its fork warning with its backends
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_program("print(6 * 7)\n").stdout == "42\n"
    assert [str(w.message) for w in caught if "fork" in str(w.message)] == []


def test_without_bubblewrap_code_is_never_run(no_bwrap):
    problem = sandbox_problem()
    assert problem == ("the code sandbox needs bubblewrap, which is not installed; install bubblewrap "
                       "(apt-get install bubblewrap) to run code-executing tasks")
    with pytest.raises(SandboxUnavailable, match=r"apt-get install bubblewrap"):
        run_program("print(1)\n")
    with pytest.raises(SandboxUnavailable, match=r"not installed"):
        grade_code("", "def f():\n    return 1\n", "def check(f):\n    assert f() == 1\n", "f")


def test_bubblewrap_that_cannot_make_namespaces_is_reported(monkeypatch, tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox, "BWRAP", str(fake))
    monkeypatch.setattr(sandbox, "_problems", {})
    problem = sandbox_problem()
    assert problem.startswith("bubblewrap cannot create the sandbox here (bwrap: setting up uid map: Permission "
                              "denied); allow unprivileged user namespaces")
    with pytest.raises(SandboxUnavailable):
        run_program("print(1)\n")


def test_evaluation_reports_humaneval_not_run(no_bwrap, monkeypatch):
    from revjax.eval import chat
    from revjax.eval.run import format_markdown

    def no_generation(*args, **kwargs):
        raise AssertionError("replies were generated for a task that cannot be graded")

    monkeypatch.setattr(chat, "generative_replies", no_generation)
    task = get_task("HumanEval", path=FIX / "openai_humaneval", shuffle_seed=None)
    out = chat.evaluate_chat({"HumanEval": task}, None, None, None, None, "forward", "sequence")
    answer = out["ways"]["forward"]["answer"]
    reason = "not run: " + sandbox_problem()
    assert answer["not_run"] == {"HumanEval": reason} and answer["tasks"] == {} and answer["score"] is None
    table = format_markdown({"run_dir": "run", "step": 1, "direction": "forward", "suites": {"chat": out}})
    assert "| HumanEval | n/a [1] |" in table and f"[1] {reason}" in table
