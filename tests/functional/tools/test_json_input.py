#!/usr/bin/env python3
"""JSON input is taken as the user wrote it (issue 9, item 9 without its
monitor-command parts).

- "\\u0000" in a string is refused (QEMU: "\\u0000 is not supported"); it used
  to cut "x\\u0000y" to "x" silently, so a blockdev-add created node "x" and
  "query-version\\u0000x" ran query-version.
- QMP arguments and --blockdev '{...}' are typed as in QMP: "size":"12" is
  not a size ("Invalid parameter type for 'size', expected: integer").
- An option nobody takes is an error even when it is an empty object:
  {"driver":"file","filename":...,"file":{}}.
- json: filenames stay as lenient as QEMU's ("size":"12" works there).
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "nbd"))
import vdtest as vt  # noqa: E402
import nbdtest  # noqa: E402


def raw_cmd(q, text):
    """Send text as one QMP line, return the reply (events skipped)."""
    q.sock.sendall(text.encode() + b"\n")
    while True:
        r = q._recv()
        if "event" not in r:
            return r


def main():
    vt.need("qemu-img", vt.VDISK_IMG, vt.VDISKD)
    f = vt.Failures()
    with vt.TempDir() as d:
        img = os.path.join(d, "a.raw")
        vt.run(["qemu-img", "create", "-q", "-f", "raw", img, "1M"], check=True)
        dm = nbdtest.Vdiskd(vt.VDISKD, d, [])
        try:
            q = dm.qmp
            r = raw_cmd(q, '{"execute":"blockdev-add","arguments":{"driver":"null-co",'
                           '"node-name":"x\\u0000y"}}')
            f.check("error" in r and "\\u0000 is not supported" in r["error"]["desc"],
                    f"node-name with \\u0000: {r}")
            r = raw_cmd(q, '{"execute":"query-version\\u0000x"}')
            f.check("error" in r and "\\u0000 is not supported" in r["error"]["desc"],
                    f"execute with \\u0000: {r}")
            names = [n["node-name"] for n in q.ok("query-named-block-nodes")]
            f.check("x" not in names, f"a node 'x' was created: {names}")

            r = q.cmd("blockdev-add", driver="null-co", **{"node-name": "n1", "size": "12"})
            f.check("error" in r and r["error"]["desc"] ==
                    "Invalid parameter type for 'size', expected: integer", f"size '12': {r}")
            r = q.cmd("blockdev-add", driver="null-co", **{"node-name": "n2",
                                                            "read-only": "on"})
            f.check("error" in r and "expected: boolean" in r["error"]["desc"],
                    f"read-only 'on': {r}")
            r = q.cmd("blockdev-add", driver="raw", **{"node-name": "n3", "file": {
                "driver": "file", "filename": img, "file": {}}})
            f.check("error" in r and "'file'" in r["error"]["desc"], f"file.file {{}}: {r}")
            r = q.cmd("blockdev-add", driver="raw", **{"node-name": "n4", "file": {
                "driver": "file", "filename": img, "bogus": {}}})
            f.check("error" in r and "'bogus'" in r["error"]["desc"], f"file.bogus {{}}: {r}")
            names = [n["node-name"] for n in q.ok("query-named-block-nodes")]
            f.check(not {"n1", "n2", "n3", "n4"} & set(names), f"refused nodes exist: {names}")
            # the right types still work
            q.ok("blockdev-add", driver="null-co", **{"node-name": "ok1", "size": 4096,
                                                       "read-only": True})
            q.ok("blockdev-add", driver="raw", **{"node-name": "ok2", "file": {
                "driver": "file", "filename": img}})
        finally:
            dm.stop()

        # --blockdev in JSON form is typed too; key=value is text
        r = vt.run([vt.VDISKD, "--blockdev",
                    '{"driver":"null-co","node-name":"x","size":"12"}'])
        f.check(r.rc == 1 and "Invalid parameter type for 'size', expected: integer" in r.err,
                f"--blockdev JSON size '12': {r!r}")
        r = vt.run([vt.VDISKD, "--blockdev", '{"driver":"null-co","node-name":"x\\u0000y"}'])
        f.check(r.rc == 1 and "\\u0000 is not supported" in r.err, f"--blockdev \\u0000: {r!r}")

        # json: filenames keep QEMU's leniency
        for tool in ("qemu-img", vt.VDISK_IMG):
            r = vt.run([tool, "info", "--output=json", 'json:{"driver":"null-co","size":"1M"}'])
            f.check(r.rc == 0 and json.loads(r.out)["virtual-size"] == 1 << 20,
                    f"{tool} json: with size '1M': {r!r}")
        r = vt.run([vt.VDISK_IMG, "info", 'json:{"driver":"null-co","size":"1M","x":"\\u0000"}'])
        f.check(r.rc == 1 and "\\u0000 is not supported" in r.err, f"json: \\u0000: {r!r}")
    f.finish()


if __name__ == "__main__":
    main()
