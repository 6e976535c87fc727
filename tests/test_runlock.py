"""The run-folder lock: a second holder is refused with one sentence naming the first; a dead holder's lock is
taken over with a warning; a lock from another host is refused with advice; releasing frees the folder."""

import json
import os
import socket
import subprocess
import sys

import pytest

from revjax.runlock import LOCK_NAME, RunFolderLocked, RunLock


def test_second_holder_is_refused_naming_the_first(tmp_path):
    with RunLock(tmp_path / "run", "training", create=True):
        holder = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(RunFolderLocked, match=rf"{tmp_path / 'run'} is in use by pid {os.getpid()} on host "
                                                  rf"{socket.gethostname()} since .*\(training: .*\); wait for it"):
            RunLock(tmp_path / "run", "export").acquire()
    assert (tmp_path / "run" / LOCK_NAME).read_text() == ""  # released: empty, never deleted
    with RunLock(tmp_path / "run", "export"):
        pass


def test_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    run = tmp_path / "run"
    code = (f"from revjax.runlock import RunLock; import os; RunLock({str(run)!r}, 'training', create=True).acquire();"
            " os._exit(0)")  # dies holding the lock, without releasing it
    subprocess.run([sys.executable, "-c", code], check=True)
    dead = json.loads((run / LOCK_NAME).read_text())["pid"]
    with pytest.warns(UserWarning, match=rf"taking over the lock of {run} from pid {dead} .* which has ended"):
        with RunLock(run, "training"):
            assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_lock_from_another_host_is_refused_with_advice(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "node-7", "pid": 1, "since": "then", "command": "x"}))
    with pytest.raises(RunFolderLocked, match=rf"marked in use by pid 1 on host node-7 .* if that process has ended, "
                                              rf"delete {tmp_path / LOCK_NAME}"):
        RunLock(tmp_path, "training").acquire()


def test_missing_folder_is_not_created_unless_asked(tmp_path):
    with pytest.raises(RunFolderLocked, match=rf"the run folder {tmp_path / 'absent'} does not exist"):
        RunLock(tmp_path / "absent", "export").acquire()
    assert not (tmp_path / "absent").exists()


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    run, target = tmp_path / "run", tmp_path / "precious.txt"
    run.mkdir()
    target.write_text("do not truncate me")
    (run / LOCK_NAME).symlink_to(target)
    with pytest.raises(RunFolderLocked, match=r"lock file .* is a symbolic link, which revjax never writes through; "
                                              r"delete the link"):
        RunLock(run, "training").acquire()
    assert target.read_text() == "do not truncate me"


def test_waiting_lock_beside_a_folder_waits_for_the_holder(tmp_path, capfd):
    folder = tmp_path / "tokenizer"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from revjax.runlock import RunLock; import time; "
                               f"l = RunLock({str(folder)!r}, 'tokenizer', create=True, beside=True).acquire(); "
                               f"print('held', flush=True); time.sleep(1.5); l.release()"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert not folder.exists() and (tmp_path / f".tokenizer{LOCK_NAME}").is_file()
    with pytest.raises(RunFolderLocked, match=rf"{folder} is in use by pid {holder.pid}"):
        RunLock(folder, "tokenizer", beside=True).acquire()
    with RunLock(folder, "tokenizer", beside=True, wait=True):
        assert holder.wait(timeout=1) == 0 and holder.stdout.read() == ""  # got it only once the holder let go
    holder.stdout.close()
    assert f"waiting for pid {holder.pid}" in capfd.readouterr().err
