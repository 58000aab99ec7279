"""The guest-agent client against a scripted peer that behaves like qemu-ga (the real one is
exercised by the VM tests)."""

import base64
import json
import socket
import threading

import pytest

from remusdb.hypervisor.agent import AgentError, GuestAgent


def serve(path, script):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def run():
        conn, _ = srv.accept()
        f = conn.makefile("rb")
        # A previous client's unread reply is still in the channel: the sync must skip it.
        conn.sendall(b'{"return": {}}\n')
        for line in f:
            line = line.lstrip(b"\xff").strip()
            if not line:
                continue
            msg = json.loads(line)
            if msg["execute"] == "guest-sync-delimited":
                conn.sendall(b"\xff" + json.dumps({"return": msg["arguments"]["id"]}).encode()
                             + b"\n")
            else:
                conn.sendall(json.dumps(script(msg)).encode() + b"\n")
        conn.close()
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_sync_exec_and_errors(tmp_path):
    path = tmp_path / "qga.sock"
    state = {"polls": 0}

    def script(msg):
        name = msg["execute"]
        if name == "guest-ping":
            return {"return": {}}
        if name == "guest-exec":
            assert msg["arguments"]["path"] == "/bin/echo"
            return {"return": {"pid": 42}}
        if name == "guest-exec-status":
            state["polls"] += 1
            if state["polls"] < 2:
                return {"return": {"exited": False}}
            return {"return": {"exited": True, "exitcode": 3,
                               "out-data": base64.b64encode(b"hi\n").decode()}}
        return {"error": {"class": "CommandNotFound", "desc": f"{name} not found"}}

    serve(path, script)
    agent = GuestAgent(path)
    agent.wait_ready(timeout=5)
    r = agent.exec(["/bin/echo", "hi"], timeout=5)
    assert (r.exitcode, r.stdout, r.stderr) == (3, "hi\n", "")
    with pytest.raises(AgentError, match="guest agent guest-bogus failed: guest-bogus not found"):
        agent.call("guest-bogus")
    agent.close()


def test_no_agent_is_a_clear_error(tmp_path):
    with pytest.raises(AgentError, match="did not answer"):
        GuestAgent(tmp_path / "absent.sock").wait_ready(timeout=0.5)
