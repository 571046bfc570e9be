"""Program: inspect a running switch (`python -m sv3.ctl ports|fdb`).

Talks to the master over <socket>.ctl: one JSON request, one JSON reply.
Counters use the switch port's view: rx = frames the switch received from
the port's guest (or an uplink's network), tx = frames it sent to it."""
import argparse
import json
import socket
import sys


def query(sock_path, cmd, timeout=5.0, **opts):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock_path + ".ctl")
        s.sendall(json.dumps(dict(opts, cmd=cmd)).encode())
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        s.close()
    return json.loads(b"".join(chunks).decode())


def print_ports(rows):
    print("%-5s %-22s %-11s %-8s %-18s %12s %14s %12s %14s %8s  %s" % (
        "PORT", "GUEST PID / UPLINK", "STATE", "FEATURES", "MACS", "RX_FRAMES", "RX_BYTES",
        "TX_FRAMES", "TX_BYTES", "DROPS", "OFFLOADED/SEGMENTED/CHECKSUMMED"))
    for r in rows:
        print("%-5d %-22s %-11s %-8s %-18s %12d %14d %12d %14d %8d  %d/%d/%d" % (
            r["port"], r.get("uplink") or r["pid"], r["state"], r["features"], ",".join(r["macs"]) or "-",
            r["rx_frames"], r["rx_bytes"], r["tx_frames"], r["tx_bytes"], r["drops"],
            r.get("offload_frames", 0), r.get("sw_segmented", 0), r.get("sw_checksummed", 0)))


def print_fdb(rows):
    print("%-18s %-5s %s" % ("MAC", "PORT", "AGE"))
    for r in rows:
        print("%-18s %-5d %.1f" % (r["mac"], r["port"], r["age"]))


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m sv3.ctl",
        description="Inspect a running sv3 switch. Counters are from the switch port's "
                    "view: rx = received from the guest, tx = sent to the guest.")
    ap.add_argument("--socket", default="/tmp/sv3", help="the switch's socket (default %(default)s)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--all", action="store_true",
                    help="ports: also list recently detached ports (state gone) with their "
                         "final counters")
    ap.add_argument("command", choices=["ports", "fdb"],
                    help="ports: per-port state, guest pid or uplink, MACs and counters "
                         "(the last column: frames that came with offload metadata, frames "
                         "sv3 segmented, checksums it completed); "
                         "fdb: the MAC table (MAC, port, age in seconds)")
    args = ap.parse_args(argv)
    try:
        rows = query(args.socket, args.command, all=args.all)
    except OSError as e:
        print("sv3.ctl: cannot reach the switch at %s.ctl: %s" % (args.socket, e), file=sys.stderr)
        return 1
    if isinstance(rows, dict) and "error" in rows:
        print("sv3.ctl: %s" % rows["error"], file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        (print_ports if args.command == "ports" else print_fdb)(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
