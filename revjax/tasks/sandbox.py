"""The sandbox that runs code a model wrote (HumanEval): bubblewrap namespaces, an unprivileged user, limits.

:func:`run_program` starts ``bwrap`` with a plain argv (``subprocess.Popen``, no ``preexec_fn``: nothing runs in a
fork of the calling process, which may be a multithreaded JAX process) and the program runs in a fresh Python
(``-I``) fed on stdin. What the sandbox guarantees on Linux with bubblewrap:

* **an unprivileged user in a user namespace of its own**: when the evaluator is root, bubblewrap sets the sandbox
  up, ``setpriv`` drops to the real uid/gid 65534 (``nobody``) with no capabilities, no supplementary groups and
  ``no_new_privs``, and a second, now unprivileged bubblewrap adds the user namespace; otherwise the program keeps
  the evaluator's own unprivileged uid, seen as 65534 inside the user namespace. Either way it has no capabilities
  and may not create further user namespaces;
* **its own PID, network, IPC and UTS namespaces**: it sees only its own processes and the sandbox's bubblewrap
  helpers, so it cannot signal the evaluator or anything else outside; the network namespace is empty (sockets
  are also refused in-process);
* **files**: the whole file system is mounted read-only; ``/tmp`` (its working folder and ``HOME``) is a fresh
  tmpfs of :data:`TMP_BYTES` that vanishes with it and is the only writable place; ``/root``, ``/home``, ``/run``,
  ``/var/tmp``, ``/mnt``, ``/media``, the evaluator's home and temporary folders are replaced by empty read-only
  folders (the Python it runs, ``sys.prefix`` and ``sys.base_prefix``, is mounted back read-only where it lies
  under them); ``/etc/shadow`` and ``/etc/gshadow`` are covered; ``/dev`` holds only the harmless devices and
  ``/proc`` is its own;
* **limits per process**, set by the ``prlimit`` wrapper: address space ``memory_bytes``, files of at most
  :data:`FILE_BYTES`, no core dumps, 256 open files, and at most :data:`MAX_PROCESSES` processes (counted in its
  own user namespace on kernels from 5.14; nothing relies on it);
* **time**: at ``timeout`` seconds of wall time the sandbox's PID 1 is killed, which kills every process in the
  PID namespace (``setsid`` and double-forked children included); :func:`run_program` returns only after they are
  all gone, and the sandbox also dies if the evaluator does;
* **output**: at most ``output_bytes`` of stdout and of stderr are kept, read as they arrive; the pipe is closed
  at the cap, so a flood costs neither memory nor time.

Limits: memory is capped per process, not in total (until the time limit a program may hold up to
:data:`MAX_PROCESSES` processes of ``memory_bytes`` each, plus :data:`TMP_BYTES` of files); CPU time within the limit
is not shared out; it can read what every user may read outside the hidden folders (the system, the repository);
the kernel is reachable as from any unprivileged process (no seccomp filter). Where bubblewrap is missing or cannot
create namespaces, :func:`sandbox_problem` says so in one sentence and :func:`run_program` raises
:class:`SandboxUnavailable`: code is never run unconfined.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from revjax.errors import RevjaxError

BWRAP = "bwrap"
SANDBOX_UID = 65534
TMP_BYTES = 64 << 20
MAX_PROCESSES = 256
FILE_BYTES = 1 << 20
OUTPUT_BYTES = 1 << 20
INSTALL = "install bubblewrap (apt-get install bubblewrap) to run code-executing tasks"

# Run before the program (``python -I -c _BOOT``, the program on stdin): every socket constructor and name lookup
# raises, the program is written to /tmp/program.py and runs as ``__main__`` with its own line numbers.
_BOOT = """\
import socket as _s, _socket as _c
def _refuse(*args, **kwargs):
    raise PermissionError("network access is disabled in the revjax sandbox")
class _NoSocket(_c.socket):
    def __init__(self, *args, **kwargs):
        _refuse()
for _name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "create_connection",
              "create_server", "socketpair", "fromfd"):
    for _module in (_s, _c):
        if hasattr(_module, _name):
            setattr(_module, _name, _refuse)
_s.socket = _s.SocketType = _c.socket = _c.SocketType = _NoSocket
import runpy, sys
_source = sys.stdin.buffer.read()
with open("/tmp/program.py", "wb") as _f:
    _f.write(_source)
del _s, _c, _name, _module, _refuse, _NoSocket, _source, _f
sys.argv = ["/tmp/program.py"]
runpy.run_path("/tmp/program.py", run_name="__main__")
"""


class SandboxUnavailable(RevjaxError):
    """No working sandbox here (bubblewrap missing or unable to create namespaces); the message says what to do."""


@dataclass(frozen=True)
class RunResult:
    """Outcome of :func:`run_program`; ``truncated`` when stdout or stderr reached the output cap."""

    success: bool
    timed_out: bool
    returncode: int | None
    stdout: str
    stderr: str
    truncated: bool = False


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _hidden_folders() -> list[str]:
    """Folders replaced by empty read-only ones: private places, and places other programs leave files in."""
    wanted = ["/root", "/home", "/run", "/var/tmp", "/mnt", "/media", os.path.expanduser("~"),
              tempfile.gettempdir()]
    hidden: list[str] = []
    for folder in sorted({os.path.realpath(f) for f in wanted}):
        if folder in ("/", "/tmp") or not os.path.isdir(folder) or _under("/tmp", folder):
            continue
        if not any(_under(folder, h) for h in hidden + ["/tmp"]):
            hidden.append(folder)
    return hidden


def _python_folders() -> list[str]:
    """The folders the sandbox's Python needs: its prefixes and the folder of its real executable."""
    folders = {sys.prefix, sys.base_prefix, os.path.dirname(sys.executable),
               os.path.dirname(os.path.realpath(sys.executable))}
    return sorted({os.path.realpath(f) for f in folders} | folders)


def sandbox_command(memory_bytes: int, *, as_root: bool | None = None) -> list[str]:
    """The argv that runs ``python -I -c _BOOT`` in the sandbox (``as_root``: the evaluator's euid is 0)."""
    as_root = os.geteuid() == 0 if as_root is None else as_root
    bwrap, setpriv, prlimit = (shutil.which(tool) or tool for tool in (BWRAP, "setpriv", "prlimit"))
    user_namespace = ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--disable-userns"]
    cmd = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session"]
    # root sets the sandbox up, drops to the unprivileged uid with setpriv, and a second bwrap (now unprivileged)
    # adds the user namespace; otherwise one bwrap does it all
    cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"] if as_root else user_namespace
    cmd += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    hidden = _hidden_folders()
    for folder in hidden:
        cmd += ["--tmpfs", folder]
    for secret in ("/etc/shadow", "/etc/gshadow"):
        if os.path.exists(secret):
            cmd += ["--ro-bind", "/dev/null", secret]
    made: set[str] = set()
    for folder in _python_folders():
        covering = [h for h in hidden + ["/tmp"] if _under(folder, h)]
        if not covering or not os.path.isdir(folder):
            continue
        parts = Path(folder).relative_to(covering[0]).parts
        for i in range(1, len(parts)):  # bwrap would make them 0700, closed to the unprivileged user
            step = os.path.join(covering[0], *parts[:i])
            if step not in made:
                made.add(step)
                cmd += ["--perms", "0755", "--dir", step]
        cmd += ["--ro-bind", folder, folder]
    for folder in hidden:
        cmd += ["--remount-ro", folder]
    cmd += ["--chdir", "/tmp", "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp", "--"]
    if as_root:
        cmd += [setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
                bwrap, *user_namespace, "--die-with-parent", "--dev-bind", "/", "/", "--chdir", "/tmp", "--"]
    cmd += [prlimit, f"--as={int(memory_bytes)}", f"--fsize={FILE_BYTES}", "--core=0", "--nofile=256",
            f"--nproc={MAX_PROCESSES}", "--", sys.executable, "-I", "-c", _BOOT]
    return cmd


_problems: dict[tuple, str | None] = {}


def sandbox_problem() -> str | None:
    """None when programs can be run in the sandbox here, else one sentence saying what is missing."""
    key = (BWRAP, os.geteuid(), sys.executable)
    if key not in _problems:
        _problems[key] = _probe()
    return _problems[key]


def _probe() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"code-executing tasks need Linux with bubblewrap; this is {sys.platform}, so they are not run"
    tools = [BWRAP, "prlimit"] + (["setpriv"] if os.geteuid() == 0 else [])
    missing = [t for t in tools if shutil.which(t) is None]
    if BWRAP in missing:
        return f"the code sandbox needs bubblewrap, which is not installed; {INSTALL}"
    if missing:
        return f"the code sandbox needs {' and '.join(missing)} from util-linux; install util-linux to run them"
    try:
        result = _run("print(6 * 7)\n", timeout=20.0, memory_bytes=1 << 30, output_bytes=4096)
    except OSError as err:
        return f"bubblewrap could not be started ({err}); {INSTALL}"
    if result.stdout != "42\n":
        why = (result.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return (f"bubblewrap cannot create the sandbox here ({why}); allow unprivileged user namespaces "
                f"(sysctl kernel.unprivileged_userns_clone=1) or run the evaluation as root")
    return None


def run_program(program: str, timeout: float = 5.0, memory_bytes: int = 1 << 30,
                output_bytes: int = OUTPUT_BYTES) -> RunResult:
    """Run ``program`` in the sandbox described above; success is exit code 0 within ``timeout`` seconds.

    Raises :class:`SandboxUnavailable` (one sentence naming what to install) where no sandbox can be made.
    """
    problem = sandbox_problem()
    if problem is not None:
        raise SandboxUnavailable(problem)
    if len(program.encode("utf-8")) > FILE_BYTES:
        return RunResult(False, False, None, "", f"the program is larger than the sandbox's file size limit "
                                                 f"({FILE_BYTES} bytes), so it was not run")
    return _run(program, timeout, memory_bytes, output_bytes)


def _run(program: str, timeout: float, memory_bytes: int, output_bytes: int,
         as_root: bool | None = None) -> RunResult:
    info_read, info_write = os.pipe()
    try:
        cmd = sandbox_command(memory_bytes, as_root=as_root)
        cmd[1:1] = ["--info-fd", str(info_write)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd="/", env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
                                pass_fds=(info_write,))
    except BaseException:
        os.close(info_read)
        raise
    finally:
        os.close(info_write)
    deadline = time.monotonic() + timeout
    info = bytearray()
    outputs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    data = memoryview(program.encode("utf-8"))
    truncated = timed_out = False
    with selectors.DefaultSelector() as selector:
        selector.register(info_read, selectors.EVENT_READ)
        for pipe in outputs:
            selector.register(pipe, selectors.EVENT_READ)
        os.set_blocking(proc.stdin.fileno(), False)
        selector.register(proc.stdin, selectors.EVENT_WRITE)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in selector.select(left):
                stream = key.fileobj
                if stream is proc.stdin:
                    try:
                        data = data[os.write(proc.stdin.fileno(), data[:1 << 16]):]
                    except BrokenPipeError:
                        data = data[:0]
                    if not data:
                        selector.unregister(stream)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if stream is info_read:
                    info += chunk
                    if not chunk:
                        selector.unregister(stream)
                    continue
                kept, room = outputs[stream], output_bytes - len(outputs[stream])
                kept += chunk[:room]
                if len(chunk) > room:
                    truncated = True
                if not chunk or len(chunk) > room:
                    selector.unregister(stream)
                    stream.close()  # at the cap: the program's next write fails
        if not timed_out:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out:
            if info_read in selector.get_map():
                os.set_blocking(info_read, False)
                try:
                    info += os.read(info_read, 1 << 16)
                except BlockingIOError:
                    pass
            _kill(proc, bytes(info))
    os.close(info_read)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if not pipe.closed:
            pipe.close()
    out, err = (outputs[p].decode("utf-8", errors="replace") for p in (proc.stdout, proc.stderr))
    if timed_out:
        return RunResult(False, True, None, out, err + f"\ntimed out after {timeout:g} s", truncated)
    return RunResult(proc.returncode == 0, False, proc.returncode, out, err, truncated)


def _kill(proc: subprocess.Popen, info: bytes) -> None:
    """Kill the sandbox's PID 1 (the kernel then kills everything in its PID namespace, and bwrap exits only once
    they are gone), then bwrap itself."""
    try:
        child = int(json.loads(info)["child-pid"])
    except (ValueError, KeyError, TypeError):
        child = None
    if child is not None and proc.poll() is None:  # bwrap has not reaped it, so the pid is still the sandbox's
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait()
