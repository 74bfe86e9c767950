#!/usr/bin/env python3
"""What the SQLite store's schema allows: registrations per second written with no bridge.

The bridge's ingest is bound by the store (docs/performance.md). This writes the rows one
registration makes -- inbox key, survey job, three sealed vault records, the `scheduled` audit
row -- the way the bridge's write path does (one multi-row statement per table per batch,
the batch's reads of which jobs exist and of patient facts, WAL, `synchronous = FULL`, a
passive checkpoint every 200 ms on a connection of its own), on a store made by the repo's own migrations and
already holding --count registrations. No decoding, no broker, no async runtime: the figure
is the ceiling `bench ingest`'s "bridge ingest" can reach on this schema and this disk.

`--drop-index NAME` (repeatable), `--no-vault` and `--synchronous normal` answer "what if":
the same run without an index, without the vault rows, or syncing only at checkpoints. Python's sqlite3 module is the only dependency.

    python3 scripts/store-ceiling.py                      # 100 000 stored, 20 000 measured
    python3 scripts/store-ceiling.py --drop-index survey_jobs_patient
"""

import argparse
import glob
import hashlib
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIGRATIONS = os.path.join(HERE, "..", "migrations", "sqlite")
START_MS = 1_795_138_800_000
# The bench's sample: a job payload of about 600 bytes, sealed vault records of 129, 52 and
# 60 bytes (pk_, mk_, vk_), an audit detail like the bridge's.
PAYLOAD = '{"requestId":"sv:x","templateId":"OP-SAT-01","patient":{' + '"x":"' + "y" * 540 + '"}}'
DETAIL = "template OP-SAT-01 due 2026-11-20T11:30:00+08:00"


def key(prefix, i):
    return prefix + hashlib.md5(f"{prefix}{i}".encode()).hexdigest()


def registration(i):
    return {
        "job": hashlib.md5(f"job{i}".encode()).hexdigest(),
        "pk": key("pk_", i),
        "vk": key("vk_", i),
        "mk": key("mk_", i),
        "mid": f"MSG-BENCH-{i:07d}",
    }


def write_batch(db, lo, hi, now, vault):
    rows = [registration(i) for i in range(lo, hi)]
    marks = ", ".join("?" * len(rows))
    db.execute("BEGIN IMMEDIATE")
    db.executemany(
        "INSERT INTO inbox (connector, message_key, content_hash, message_id, event, received_at) "
        "VALUES ('bench', ?, ?, ?, 'REGISTERED', ?) ON CONFLICT DO NOTHING",
        [("HIS|HXEYE|" + r["mid"], hashlib.sha256(r["mid"].encode()).hexdigest(), r["mid"], now) for r in rows],
    )
    db.execute(f"SELECT job_id FROM survey_jobs WHERE job_id IN ({marks})", [r["job"] for r in rows]).fetchall()
    db.execute(f"SELECT patient_key FROM patients WHERE patient_key IN ({marks})", [r["pk"] for r in rows]).fetchall()
    db.execute(f"SELECT alias_key FROM patient_aliases WHERE alias_key IN ({marks})", [r["pk"] for r in rows]).fetchall()
    db.executemany(
        "INSERT INTO survey_jobs (job_id, template, patient_key, visit_key, status, due_at, next_attempt_at, "
        "payload, connector, message_id, created_at, updated_at, mobile_key, dnd, stale_at) "
        "VALUES (?, 'OP-SAT-01', ?, ?, 'pending', ?, ?, ?, 'bench', ?, ?, ?, ?, 0, ?) ON CONFLICT (job_id) DO NOTHING",
        [(r["job"], r["pk"], r["vk"], now + 3_600_000, now + 3_600_000, PAYLOAD, r["mid"], now, now, r["mk"], now + 86_400_000) for r in rows],
    )
    if vault:
        sealed = []
        for r in rows:
            sealed += [(r["pk"], os.urandom(129), now), (r["mk"], os.urandom(52), now), (r["vk"], os.urandom(60), now)]
        db.executemany(
            "INSERT INTO vault (pseudonym, key_id, sealed, last_event_at) VALUES (?, 'bench', ?, ?) "
            "ON CONFLICT (pseudonym) DO UPDATE SET sealed = excluded.sealed",
            sealed,
        )
    db.executemany(
        "INSERT INTO audit (at, connector, message_id, job_id, patient_key, action, rule, detail) "
        "VALUES (?, 'bench', ?, ?, ?, 'scheduled', 'R-SRV-5', ?)",
        [(now, r["mid"], r["job"], r["pk"], DETAIL) for r in rows],
    )
    db.execute("COMMIT")


def written_bytes():
    """Bytes this process wrote through system calls (WAL frames, checkpoint copies)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100_000, help="registrations stored before the measurement")
    ap.add_argument("--measure", type=int, default=20_000, help="registrations written and timed")
    ap.add_argument("--batch", type=int, default=256, help="registrations per transaction (the bridge's batch_size)")
    ap.add_argument("--drop-index", action="append", default=[], metavar="NAME", help="leave this index out")
    ap.add_argument("--no-vault", action="store_true", help="write no vault records")
    ap.add_argument("--synchronous", choices=["full", "normal"], default="full",
                    help="SQLite synchronous while measuring (the bridge's sqlite_synchronous; full by default)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the line")
    args = ap.parse_args()
    if args.batch < 1 or args.measure < args.batch:
        sys.exit("store-ceiling: --batch must be at least 1 and at most --measure")

    tmp = tempfile.mkdtemp(prefix="cem-store-ceiling-")
    try:
        db = sqlite3.connect(os.path.join(tmp, "store.db"), isolation_level=None)
        for path in sorted(glob.glob(os.path.join(MIGRATIONS, "*.sql"))):
            db.executescript(open(path, encoding="utf-8").read())
        for name in args.drop_index:
            try:
                db.execute(f'DROP INDEX "{name}"')
            except sqlite3.OperationalError as e:
                sys.exit(f"store-ceiling: --drop-index {name}: {e}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = OFF")
        vault = not args.no_vault
        step = 4096
        for lo in range(0, args.count, step):
            write_batch(db, lo, min(args.count, lo + step), START_MS + lo, vault)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute(f"PRAGMA synchronous = {args.synchronous.upper()}")
        db.execute("PRAGMA wal_autocheckpoint = 16384")

        # The bridge's checkpoint task (store/checkpoint.rs): beside the writer, not in it.
        done = threading.Event()

        def checkpoint():
            cp = sqlite3.connect(os.path.join(tmp, "store.db"), isolation_level=None)
            while not done.wait(0.2):
                cp.execute("PRAGMA wal_checkpoint(PASSIVE)")
            cp.close()

        task = threading.Thread(target=checkpoint)
        task.start()
        before = written_bytes()
        started = time.monotonic()
        end = args.count + args.measure
        try:
            for n, lo in enumerate(range(args.count, end, args.batch)):
                write_batch(db, lo, min(end, lo + args.batch), START_MS + lo, vault)
                if not args.json and n % 20 == 19:
                    print(f"  {lo + args.batch - args.count} of {args.measure}", file=sys.stderr)
        finally:
            done.set()
            task.join()
        seconds = time.monotonic() - started
        kib = (written_bytes() - before) / 1024 / args.measure
        db.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rate = args.measure / seconds
    if args.json:
        import json

        print(json.dumps({"stored": args.count, "measured": args.measure, "batch": args.batch,
                          "dropped_indexes": args.drop_index, "vault": vault,
                          "synchronous": args.synchronous,
                          "msgs_per_s": rate, "kib_written_per_msg": kib}))
    else:
        what = ", ".join([f"without {n}" for n in args.drop_index] + ([] if vault else ["no vault"])
                         + ([] if args.synchronous == "full" else [f"synchronous {args.synchronous}"]))
        print(f"store ceiling: {rate:,.0f} registrations/s ({kib:.1f} KiB written per registration), "
              f"{args.measure} after {args.count} stored, batch {args.batch}{'; ' + what if what else ''}")


if __name__ == "__main__":
    main()
