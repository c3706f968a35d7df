"""A real Linux guest (QEMU's vhost-user-blk-pci under TCG) against vdiskd's
vhost-user-blk export: 1 queue on qcow2, 2 queues on raw, and 1 queue on raw with a packed
virtqueue (packed=on); then twice the server is killed (SIGKILL) under guest
I/O and restarted, and QEMU (reconnect=1) carries on with its inflight
region: write+verify rounds on a raw file, and reads in flight on a slow
null-co that must be resubmitted. In the first boots the guest
writes at several offsets (buffered and O_DIRECT), flushes, reads back with
O_DIRECT, discards a range; then vdiskd exits on SIGTERM and the data is
checked on the host with qemu-img check and qemu-io.
Skipped (exit 77) only where qemu-system-x86_64 or a Linux kernel with the
virtio modules is not installed (scripts/install-deps.sh installs them)."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import vhosttest as vt

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 64 * 1024 * 1024
MODULES = ["virtio", "virtio_ring", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
           "virtio_pci", "virtio_blk"]


def find_kernel():
    for vmlinuz in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        ver = vmlinuz[len("/boot/vmlinuz-"):]
        moddir = f"/lib/modules/{ver}"
        if os.path.exists(f"{moddir}/modules.dep") and os.access(vmlinuz, os.R_OK):
            return vmlinuz, moddir
    return None, None


def module_order(moddir):
    """The .ko files (relative to moddir) for MODULES and their dependencies,
    dependencies first; built-in ones are skipped."""
    deps = {}
    with open(f"{moddir}/modules.dep") as f:
        for line in f:
            mod, _, rest = line.partition(":")
            deps[os.path.basename(mod).split(".ko")[0].replace("-", "_")] = (mod, rest.split())
    order = []

    def add(path):
        name = os.path.basename(path).split(".ko")[0].replace("-", "_")
        if name not in deps or deps[name][0] in order:
            return
        for d in reversed(deps[name][1]):
            add(d)
        order.append(deps[name][0])

    for m in MODULES:
        add(m)
    return order


def build_initramfs(workdir, moddir):
    root = os.path.join(workdir, "initramfs")
    os.makedirs(os.path.join(root, "bin"))
    os.makedirs(os.path.join(root, "lib", "modules"))
    for d in ["dev", "proc", "sys"]:
        os.makedirs(os.path.join(root, d))
    busybox = shutil.which("busybox")
    shutil.copy(busybox, os.path.join(root, "bin", "busybox"))
    shutil.copy(os.path.join(HERE, "guest-init.sh"), os.path.join(root, "init"))
    os.chmod(os.path.join(root, "init"), 0o755)
    names = []
    for rel in module_order(moddir):
        if not rel.endswith(".ko"):
            raise AssertionError(f"compressed module {rel}: not supported by this harness")
        shutil.copy(os.path.join(moddir, rel), os.path.join(root, "lib", "modules"))
        names.append(os.path.basename(rel))
    with open(os.path.join(root, "modules.order"), "w") as f:
        f.write("\n".join(names) + "\n")
    out = os.path.join(workdir, "initrd.gz")
    files = subprocess.run(["find", "."], cwd=root, stdout=subprocess.PIPE, check=True).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=root,
                          input=files, stdout=subprocess.PIPE, check=True).stdout
    with open(out, "wb") as f:
        f.write(subprocess.run(["gzip", "-1"], input=cpio, stdout=subprocess.PIPE,
                               check=True).stdout)
    return out


def boot(workdir, vmlinuz, initrd, sock, queues, packed, timeout=300, on_loop=None, crash=1):
    """Boot the guest; return its console output (raises on timeout/crash)."""
    cmd = ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-nodefaults", "-no-user-config",
           "-display", "none", "-no-reboot", "-smp", str(queues), "-m", "512M",
           "-object", "memory-backend-memfd,id=mem,size=512M,share=on",
           "-numa", "node,memdev=mem",
           "-chardev", f"socket,id=vhu,path={sock}" + (",reconnect=1" if on_loop else ""),
           "-device", f"vhost-user-blk-pci,chardev=vhu,num-queues={queues}"
                      f"{',packed=on' if packed else ''}",
           "-serial", "stdio", "-kernel", vmlinuz, "-initrd", initrd,
           "-append", f"console=ttyS0 panic=-1 quiet vdtest.size={SIZE} vdtest.queues={queues}"
                      f" vdtest.crash={crash if on_loop else 0}"]
    vt.log("+", " ".join(cmd))
    logpath = os.path.join(workdir, f"guest-{queues}-{packed}-{crash}.log")
    with open(logpath, "w+") as logf:
        p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + timeout
        crash_expected = on_loop is not None
        while p.poll() is None:
            logf.seek(0)
            out = logf.read()
            if on_loop and "VDTEST-LOOP" in out:
                on_loop()
                on_loop = None
            # a server crash leaves the guest hanging: QEMU logs it
            elif "Unexpected end-of-file" in out or "Failed to read msg header" in out:
                if not crash_expected:
                    break
            if "VDTEST-RESULT" in out:
                crash_expected = False
            if time.time() > deadline:
                break
            time.sleep(0.2)
        if p.poll() is None:
            p.kill()
            p.wait()
        logf.seek(0)
        out = logf.read()
    vt.log(out)
    if "VDTEST-RESULT: PASS" not in out:
        raise AssertionError(f"guest with {queues} queue(s) did not pass")
    return out


def test(vdiskd):
    if shutil.which("qemu-system-x86_64") is None:
        vt.log("SKIP: qemu-system-x86_64 is not installed (package qemu-system-x86, see "
               "scripts/install-deps.sh)")
        sys.exit(vt.SKIP)
    vmlinuz, moddir = find_kernel()
    if not vmlinuz:
        vt.log("SKIP: no readable /boot/vmlinuz-* with /lib/modules (package "
               "linux-image-cloud-amd64, see scripts/install-deps.sh)")
        sys.exit(vt.SKIP)
    vt.need("busybox", "cpio", "gzip", "qemu-img", "qemu-io")
    with vt.TempDir() as d:
        initrd = build_initramfs(d, moddir)
        for fmt, queues, packed in [("qcow2", 1, False), ("raw", 2, False), ("raw", 1, True)]:
            img = os.path.join(d, "disk." + fmt)
            sock = os.path.join(d, f"vhost-{fmt}.sock")
            if os.path.exists(img):
                os.unlink(img)
            vt.create(img, fmt, SIZE)
            # the export's trace says which ring layout the guest negotiated
            os.environ["VDISK_TRACE"] = "export"
            v = vt.Vdiskd(vdiskd, d, [
                "--object", "iothread,id=io0",
                "--blockdev", vt.blockdev(img, fmt, direct=(fmt == "qcow2")),
                "--export", vt.vhost_export(sock, extra=f"num-queues={queues},iothread=io0")],
                wait_for=[sock])
            try:
                out = boot(d, vmlinuz, initrd, sock, queues, packed)
                stats = [n for n in v.qmp.ok("query-named-block-nodes") if "stats" in n][0]
                vt.log("stats:", stats["stats"]["rd_operations"], "reads",
                       stats["stats"]["wr_operations"], "writes",
                       stats["stats"]["flush_operations"], "flushes",
                       stats["stats"]["discard_operations"], "discards")
                assert stats["stats"]["flush_operations"] > 0, "the guest sent no flush"
                assert stats["stats"]["discard_operations"] > 0, "the guest sent no discard"
                if queues > 1:
                    reqs = [ln for ln in out.splitlines() if "IRQ:" in ln and "req." in ln]
                    assert len(reqs) == queues, f"expected {queues} request queues: {reqs}"
            finally:
                log = v.stop()
                del os.environ["VDISK_TRACE"]
            want = "packed ring" if packed else "split ring"
            assert want in log, f"the guest did not use a {want}"
            if fmt == "qcow2":
                vt.qemu_img_check(img)
            k = 1024
            layout = [(0, 64 * k, 0x5a), (188 * k, 8 * k, 0x6b), (SIZE - 64 * k, 64 * k, 0x7c),
                      (4092 * k, 4 * k, 0x9e), (5120 * k, 4 * k, 0x9e),
                      (2049 * 512, 512, 0x6b), (2048 * 512, 512, 0)]
            vt.verify_on_host(img, fmt, layout)
        # The server dies (SIGKILL) under guest I/O and comes back: QEMU
        # (chardev reconnect=1) reconnects with its inflight region and the
        # new vdiskd resubmits what was in flight; the guest never notices.
        # crash=1: write+verify rounds on a raw file (data survives);
        # crash=2: reads from a null-co that takes 2 s each; the kill comes
        # 1 s after the guest starts its first read (a few hundred ms under
        # TCG), so that read is in flight at the kill and must be
        # resubmitted (with 300 ms reads the guest's own loop, slow under
        # TCG on a loaded host, sometimes had none in flight).
        for crash in [1, 2]:
            sock = os.path.join(d, f"vhost-crash{crash}.sock")
            if crash == 1:
                img = os.path.join(d, "crash.raw")
                vt.create(img, "raw", SIZE)
                node = vt.blockdev(img, "raw")
            else:
                node = (f"driver=null-co,node-name=disk0,size={SIZE},read-zeroes=on,"
                        "latency-ns=2000000000")
            args = ["--object", "iothread,id=io0", "--blockdev", node,
                    "--export", vt.vhost_export(sock, extra="iothread=io0")]
            os.environ["VDISK_TRACE"] = "export"
            servers = [vt.Vdiskd(vdiskd, d, args, wait_for=[sock])]

            def restart():
                if crash == 2:
                    time.sleep(1.0)    # inside the guest's first 2 s read
                servers[0].proc.send_signal(signal.SIGKILL)
                servers[0].proc.wait()
                for f in [sock, servers[0].qmp_path]:
                    os.unlink(f)
                servers.append(vt.Vdiskd(vdiskd, d, args, wait_for=[sock]))
                vt.log("vdiskd killed and restarted")

            try:
                out = boot(d, vmlinuz, initrd, sock, 1, False, on_loop=restart, crash=crash)
                vt.log([ln for ln in out.splitlines() if "VDTEST-ROUNDS" in ln])
                assert len(servers) == 2, "the server was not restarted"
                st = [n for n in servers[1].qmp.ok("query-named-block-nodes")
                      if "stats" in n][0]["stats"]
                vt.log("restarted server:", st["rd_operations"], "reads", st["wr_operations"],
                       "writes")
                assert st["rd_operations"] > 0, "the guest did not use the new server"
            finally:
                log = servers[-1].stop()
                servers[0].kill()
                del os.environ["VDISK_TRACE"]
            resumed = [ln for ln in log.splitlines() if "resubmits" in ln]
            vt.log("resubmitted after the restart:", resumed or "nothing was in flight")
            if crash == 2:
                assert resumed, "no in-flight request was resubmitted after the restart"


if __name__ == "__main__":
    from nbdtest import main
    main(test)
