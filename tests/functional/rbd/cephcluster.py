"""A throwaway single-node Ceph cluster for the RBD tests: one mon, one
in-memory (memstore) OSD and one mgr, bound to 127.0.0.1 on a free port,
everything (config, data, logs, sockets, pid files) under one directory.
Starts and stops only its own daemons (by the pids in its pid files).

    with CephCluster(dir) as c:        # waits until HEALTH_OK, PGs active+clean
        c.conf                          # path of its ceph.conf
        c.run(["rbd", "ls", "rbd"])     # client commands, bounded by a timeout

`python3 cephcluster.py DIR` starts one and waits for Enter (manual runs)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

PACKAGES = ["ceph-mon", "ceph-osd", "ceph-mgr", "ceph", "rbd"]


def missing_tools():
    return [t for t in PACKAGES if shutil.which(t) is None]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class CephError(Exception):
    pass


class CephCluster:
    def __init__(self, base, pool="rbd", memstore_bytes=2 << 30):
        self.dir = os.path.join(base, "ceph")
        self.pool = pool
        self.memstore_bytes = memstore_bytes
        self.conf = os.path.join(self.dir, "ceph.conf")

    # ---- helpers ---------------------------------------------------------------------------
    def run(self, cmd, timeout=60, check=True, input=None):
        """Run a ceph client command with our config; bounded by timeout."""
        full = [cmd[0], "-c", self.conf] + list(cmd[1:])
        p = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise CephError(f"{' '.join(full)} failed ({p.returncode}): {p.stderr.strip()}")
        return p.stdout

    def _daemon(self, args):
        p = subprocess.run(args + ["-c", self.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=120)
        if p.returncode != 0:
            raise CephError(f"{' '.join(args)} failed: {p.stdout.strip()}")

    def _write_conf(self, port):
        d = self.dir
        self.fsid = str(uuid.uuid4())
        self.mon_addr = f"v2:127.0.0.1:{port}"
        conf = f"""[global]
fsid = {self.fsid}
mon host = [{self.mon_addr}]
public network = 127.0.0.1/32
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd crush chooseleaf type = 0
mon data avail warn = 1
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
run dir = {d}/run
log file = {d}/log/$name.log
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
mon data = {d}/mon/$name
osd data = {d}/osd/$name
mgr data = {d}/mgr/$name
keyring = /dev/null
osd objectstore = memstore
memstore device bytes = {self.memstore_bytes}
memstore page set = true
memstore page size = 4096
[client]
rbd skip partial discard = false
rados osd op timeout = 60
rados mon op timeout = 60
[mon.a]
public addr = {self.mon_addr}
"""
        with open(self.conf, "w") as f:
            f.write(conf)

    def _pids(self):
        run = os.path.join(self.dir, "run")
        out = []
        for name in ("osd.0", "mgr.x", "mon.a"):   # stop order: OSD before mon
            try:
                out.append(int(open(os.path.join(run, name + ".pid")).read().strip()))
            except (OSError, ValueError):
                pass
        return out

    # ---- start / stop ----------------------------------------------------------------------
    def start(self, timeout=180):
        shutil.rmtree(self.dir, ignore_errors=True)
        for sub in ("run", "log", "mon", "osd/osd.0", "mgr/mgr.x"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        self._write_conf(free_port())
        try:
            monmap = os.path.join(self.dir, "monmap")
            subprocess.run(["monmaptool", "--create", "--fsid", self.fsid, "--addv", "a",
                            f"[{self.mon_addr}]", monmap], check=True, timeout=60,
                           stdout=subprocess.DEVNULL)
            self._daemon(["ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap,
                          "--keyring", "/dev/null"])
            self._daemon(["ceph-mon", "-i", "a"])
            osd = self.run(["ceph", "osd", "create"]).strip()
            if osd != "0":
                raise CephError(f"ceph osd create gave {osd!r}")
            self.run(["ceph", "osd", "crush", "add", "osd.0", "1", "root=default"])
            self._daemon(["ceph-osd", "-i", "0", "--mkfs"])
            self._daemon(["ceph-osd", "-i", "0"])
            self._daemon(["ceph-mgr", "-i", "x"])
            self.run(["ceph", "osd", "pool", "create", self.pool, "8"])
            self.run(["rbd", "pool", "init", self.pool], timeout=120)
            self.wait_ready(timeout)
        except BaseException:
            self.dump_logs()
            self.stop()
            raise
        return self

    def wait_ready(self, timeout):
        """Poll the cluster's own status until mgr available, every PG
        active+clean and HEALTH_OK (a readiness signal, not a fixed sleep)."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                st = json.loads(self.run(["ceph", "-s", "--format", "json"], timeout=30))
            except (CephError, subprocess.TimeoutExpired, ValueError) as e:
                last = str(e)
                time.sleep(0.25)
                continue
            pgs = st.get("pgmap", {})
            states = pgs.get("pgs_by_state", [])
            clean = sum(s["count"] for s in states if s["state_name"] == "active+clean")
            mgr = st.get("mgrmap", {}).get("available", False)
            health = st.get("health", {}).get("status")
            checks = ",".join(st.get("health", {}).get("checks", {}).keys())
            last = f"health {health} {checks}, mgr {mgr}, {clean}/{pgs.get('num_pgs')} PGs clean"
            if mgr and health == "HEALTH_OK" and pgs.get("num_pgs", 0) > 0 and \
                    clean == pgs["num_pgs"]:
                return
            time.sleep(0.25)
        raise CephError(f"Ceph not ready after {timeout}s: {last}")

    def dump_logs(self, lines=30):
        logd = os.path.join(self.dir, "log")
        for n in sorted(os.listdir(logd)) if os.path.isdir(logd) else []:
            with open(os.path.join(logd, n), errors="replace") as f:
                tail = f.readlines()[-lines:]
            print(f"---- {n}\n" + "".join(tail), flush=True)

    def stop(self):
        for pid in self._pids():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(400):
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                            break
                except FileNotFoundError:
                    break
                time.sleep(0.025)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    base = sys.argv[1] if len(sys.argv) > 1 else "."
    with CephCluster(base) as c:
        print(f"Ceph ready: -c {c.conf}; press Enter to stop", flush=True)
        sys.stdin.readline()
