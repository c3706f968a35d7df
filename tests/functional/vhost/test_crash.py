"""INFLIGHT_SHMFD across a server crash: the front-end has 32 reads in
flight on a slow null-co export (latency 1 s) and the inflight region shows
the server fetched them; vdiskd is killed with SIGKILL and started again on
the same socket; the front-end reconnects with the same guest memory and
inflight region (vring base = the used index, as QEMU sends after a crash)
and every request completes exactly once. Also a clean restart (SIGTERM)
with nothing in flight resumes at the right index."""
import os
import signal
import subprocess
import sys

import vhosttest as vt


def test(vdiskd):
    client = os.path.abspath(sys.argv[2])
    with vt.TempDir() as d:
        sock = os.path.join(d, "vhost.sock")
        args = ["--object", "iothread,id=io0",
                "--blockdev", "driver=null-co,node-name=n0,size=64M,read-zeroes=on,"
                              "latency-ns=1000000000",
                "--export", vt.vhost_export(sock, node="n0", extra="iothread=io0")]
        v = vt.Vdiskd(vdiskd, d, args, wait_for=[sock])
        cmd = [client, "--size", str(vt.SIZE), "--depth", "32", "--qsize", "128", sock, "crash"]
        vt.log("+", " ".join(cmd))
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        try:
            line = p.stdout.readline()
            vt.log(line.rstrip())
            assert line.startswith("FETCHED 32 in flight, 0 completed"), line
            v.proc.send_signal(signal.SIGKILL)
            v.proc.wait()
            for f in [sock, v.qmp_path]:
                os.unlink(f)
            v2 = vt.Vdiskd(vdiskd, d, args, wait_for=[sock])
            p.stdin.write("go\n")
            p.stdin.flush()
            out, _ = p.communicate(timeout=120)
            vt.log(out)
            assert p.returncode == 0, "requests were lost or repeated across the restart"
            assert "crash: 32 requests resumed" in out, out
            v2.stop()
        finally:
            if p.poll() is None:
                p.kill()
            v.kill()


if __name__ == "__main__":
    from nbdtest import main
    main(test)
