"""Who may use the control socket: the daemon's own user, and the users of
``control_allow_users``. A client of another user that can open the socket file gets one
clear error frame and is counted. Running a client as another user needs root."""

from __future__ import annotations

import os
import pwd
import socket
from pathlib import Path

import pytest

from helpers import ProcessRegistry
from ringd.wire import FrameReader, pack_frame

pytestmark = pytest.mark.integration


def _other_user() -> int:
    if os.geteuid() != 0:
        pytest.skip("running a client as another user needs root")
    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("no user 'nobody' on this host")


def status_as(uid: int, path: Path) -> dict:
    """Send ``status`` on the control socket from a child process running as ``uid``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to uid, one request, its raw reply into the pipe
        code = 0
        try:
            os.close(read_end)
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(path))
                sock.sendall(pack_frame({"op": "status"}))
                data = b""
                while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            os.write(write_end, data)
        except BaseException as exc:  # reported by the parent
            os.write(write_end, f"child failed: {exc!r}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        raw = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, raw.decode(errors="replace")
    frames = FrameReader().feed(raw)
    assert len(frames) == 1
    return frames[0]


def test_a_client_of_another_user_is_refused_unless_allowed(daemons: ProcessRegistry,
                                                             short_tmp: Path) -> None:
    uid = _other_user()
    strict = daemons.daemon("node1").start()
    allowing = daemons.daemon("node2", "--set", "control_allow_users=nobody",
                              cluster_name=daemons.cluster_name + "b").start()
    strict.wait_ready()
    allowing.wait_ready()
    # Let the other user reach the socket files (the daemon makes them 0660, and a
    # default parent directory 0700): then only the daemon's own check stands in the way.
    os.chmod(short_tmp, 0o755)
    for d in (strict, allowing):
        os.chmod(d.socket, 0o666)

    reply = status_as(uid, strict.socket)
    assert reply["ok"] is False
    assert "user nobody" in reply["error"] and "may not use this daemon" in reply["error"]
    assert "control_allow_users" in reply["error"] and "\n" not in reply["error"]
    assert strict.status()["control"]["connections_refused_user"] == 1

    reply = status_as(uid, allowing.socket)
    assert reply["ok"] is True and reply["name"] == "node2"
    assert allowing.status()["control"]["connections_refused_user"] == 0
