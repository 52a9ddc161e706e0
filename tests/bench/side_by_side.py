#!/usr/bin/env python3
"""hearsay and Maloja side by side, on this machine, with the same export and client.

    python3 tests/bench/side_by_side.py [--listens 50000] [--clients 32] [--seconds 10]

What it does, for each server in turn (never both running at once):

1. writes one deterministic history as a Maloja export (`maloja_export_0.json`: Maloja
   3.2.3 recognises its own export only by a name of digits after `maloja_export_`;
   one artist per track, names free of the separators either server splits on), which
   both servers import with their own importers;
2. imports it with the server's own command while the server is stopped
   (`hearsay import`, `maloja import`): wall time, listens/s and the importer's peak RSS;
3. starts the server on 127.0.0.1 and reads its own count of listens back;
4. bytes on disk per listen (the whole data directory, and the database files alone);
5. RSS of the running server at rest (after start-up and one request);
6. top artists of all time and top tracks of this year through each server's own
   API (hearsay: ListenBrainz `/1/stats/user/...`; Maloja: `/apis/mlj_1/charts/...`),
   the first request and then p50/p99 of `--requests` more, one keep-alive client;
7. single-listen ListenBrainz `submit-listens` from `--clients` keep-alive connections
   for `--seconds` (the same client code for both: 4 processes of threads): acknowledged
   listens/s, p50/p99 latency, and the server's count afterwards (nothing acknowledged
   may be missing);
8. the server's peak RSS over the whole run.

Maloja (`malojaserver`, pinned below) is installed from PyPI into a virtual environment
(`target/maloja-venv`, kept between runs). hearsay is built with `cargo build --release`
unless `--no-build`. The figures are the machine's: both servers share the two cores with
the client, and a Python client tops out at a few thousand requests per second, so a
submit rate near that ceiling says the client, not the server, was the limit (the
script prints the client's own ceiling against a server that answers nothing).

Nothing here is part of the test suite: it measures, it asserts only that each server
holds every listen it acknowledged (a loss is reported and the exit code is 1).
"""

import argparse
import http.client
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MALOJA = "malojaserver==3.2.3"
ROOT = Path(__file__).resolve().parents[2]
USER = "bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the history


def syllables(rng, n):
    parts = ["ka", "lo", "mi", "ra", "ne", "to", "su", "vi", "an", "el", "or", "us", "ta", "be", "do", "ri"]
    return "".join(rng.choice(parts) for _ in range(n)).capitalize()


def write_history(path, listens, seed=7):
    """A Maloja export: `listens` plays over the last years, newest an hour ago, on even
    seconds (the submit phase uses odd ones: Maloja keeps one scrobble per second)."""
    rng = random.Random(seed)
    artists = []
    seen = set()
    while len(artists) < max(50, listens // 60):
        name = f"{syllables(rng, 2)} {syllables(rng, rng.randint(1, 3))}"
        if name not in seen:
            seen.add(name)
            artists.append(name)
    catalogue = []
    for a in artists:
        albums = [f"{syllables(rng, 3)}" for _ in range(rng.randint(1, 4))]
        tracks = [(f"{syllables(rng, rng.randint(2, 4))} {syllables(rng, 2)}", rng.choice(albums), rng.randint(150, 420))
                  for _ in range(rng.randint(6, 30))]
        catalogue.append((a, tracks))
    # Zipf-like popularity of artists and, within each, of tracks.
    weights = [1.0 / (i + 1) for i in range(len(catalogue))]
    t = int(time.time()) - 3600
    t -= t % 2
    scrobbles = []
    for _ in range(listens):
        artist, tracks = rng.choices(catalogue, weights)[0]
        title, album, length = tracks[min(int(rng.paretovariate(1.2)) - 1, len(tracks) - 1)]
        scrobbles.append({
            "time": t,
            "track": {"artists": [artist], "title": title, "album": {"albumtitle": album, "artists": [artist]},
                      "length": length},
            "duration": length,
        })
        t -= 2 * rng.randint(90, 1800)
    scrobbles.reverse()
    with open(path, "w") as f:
        json.dump({"maloja": {"export_time": int(time.time())}, "scrobbles": scrobbles}, f)
    return scrobbles


# ---------------------------------------------------------------- processes


def run_timed(cmd, env=None, stdin=None):
    """Runs `cmd`, returns (seconds, stdout, stderr)."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(stdin)
    elapsed = time.perf_counter() - start
    if p.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{err.decode(errors='replace')[-3000:]}")
    return elapsed, out.decode(errors="replace"), err.decode(errors="replace")


def run_measured(cmd, env=None):
    """Runs `cmd` to its end; returns (seconds, peak RSS MiB, stdout+stderr)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - start
        log.seek(0)
        text = log.read().decode(errors="replace")
    if p.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{text[-3000:]}")
    return elapsed, usage.ru_maxrss / 1024, text


def tree_pids(pid):
    """`pid` and its descendants."""
    pids = [pid]
    for p in pids:
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    pids.extend(int(c) for c in f.read().split() if int(c) not in pids)
            except OSError:
                pass
    return pids


def rss_mib(pid, field="VmRSS"):
    """Sum of `field` (VmRSS or VmHWM) over the process tree, MiB (both servers run as
    one process here; over several, shared pages count twice and peaks add up)."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def dir_bytes(path, suffixes=None):
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            if suffixes is None or any(s in name for s in suffixes):
                try:
                    total += os.path.getsize(os.path.join(dirpath, name))
                except OSError:
                    pass
    return total


def wait_http(port, path, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited ({proc.returncode}) before answering {path}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status < 500:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"no answer on 127.0.0.1:{port}{path} within {timeout} s")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- the client


def get_json(conn, path, headers):
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise RuntimeError(f"GET {path}: {r.status} {body[:300]!r}")
    return json.loads(body)


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def time_reads(port, path, headers, requests):
    """(first request ms, p50 ms, p99 ms, the last answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t = time.perf_counter()
    body = get_json(conn, path, headers)
    first = (time.perf_counter() - t) * 1000
    times = []
    for _ in range(requests):
        t = time.perf_counter()
        body = get_json(conn, path, headers)
        times.append((time.perf_counter() - t) * 1000)
    conn.close()
    return first, percentile(times, 0.5), percentile(times, 0.99), body


def submit_worker(args):
    """One process of the submit load: `threads` keep-alive connections posting one
    listen each per request until `deadline`; returns (acked, failed, latencies ms)."""
    port, path, auth, first_slot, stride, threads, deadline, base = args
    acked, failed, lat = [0], [0], []
    lock = threading.Lock()

    def one(slot):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        n = 0
        mine_ok, mine_bad, mine_lat = 0, 0, []
        while time.time() < deadline:
            k = slot + n * stride
            n += 1
            body = json.dumps({
                "listen_type": "single",
                "payload": [{
                    # Odd seconds, one per listen (the history is on even ones).
                    "listened_at": base - 2 * k - 1,
                    "track_metadata": {"artist_name": "Side Bench", "track_name": f"Submit {k}",
                                       "release_name": "Load"},
                }],
            })
            t = time.perf_counter()
            try:
                conn.request("POST", path, body=body,
                             headers={"Authorization": auth, "Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            mine_lat.append((time.perf_counter() - t) * 1000)
            if ok:
                mine_ok += 1
            else:
                mine_bad += 1
        conn.close()
        with lock:
            acked[0] += mine_ok
            failed[0] += mine_bad
            lat.extend(mine_lat)

    ts = [threading.Thread(target=one, args=(first_slot + i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return acked[0], failed[0], lat


def submit_load(port, path, auth, clients, seconds):
    """(acked listens/s, acked, failed, p50 ms, p99 ms)."""
    procs = min(4, clients)
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    base = int(time.time()) - 30 * 86400
    base -= base % 2
    deadline = time.time() + seconds
    jobs, slot = [], 0
    for n in per:
        jobs.append((port, path, auth, slot, clients, n, deadline, base))
        slot += n
    start = time.perf_counter()
    with multiprocessing.Pool(procs) as pool:
        results = pool.map(submit_worker, jobs)
    elapsed = time.perf_counter() - start
    acked = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    lat = [x for r in results for x in r[2]]
    return acked / elapsed, acked, failed, percentile(lat, 0.5), percentile(lat, 0.99)


def client_ceiling(clients, seconds):
    """The client's own rate against a server that answers 200 at once (a Python
    thread per connection), to read the submit figures against."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        disable_nagle_algorithm = True

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            # One write: headers and body apart would wait on the client's delayed ACK.
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        return submit_load(port, "/", "x", clients, seconds)
    finally:
        server.shutdown()


# ---------------------------------------------------------------- the servers


class Served:
    """What differs between the servers once they run: how to read the count of
    listens, where the data lies, the two chart paths, the submit path and its
    Authorization header, the headers of reads."""

    def __init__(self, count, disk_all, disk_db, artists, tracks, submit, auth, headers):
        self.count, self.disk_all, self.disk_db = count, disk_all, disk_db
        self.artists, self.tracks, self.submit, self.auth, self.headers = artists, tracks, submit, auth, headers


def measure_running(proc, port, args, listens, served):
    """The figures of a started server, in one order for both: its count, disk, RSS at
    rest, the two charts, the submit load, the count after it, peak RSS."""
    out = {}

    def count():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            return served.count(conn)
        finally:
            conn.close()

    out["count"] = count()
    out["disk_all"] = dir_bytes(served.disk_all) / listens
    out["disk_db"] = dir_bytes(*served.disk_db) / listens
    time.sleep(2)
    out["rss_rest"] = rss_mib(proc.pid)
    out["artists"] = time_reads(port, served.artists, served.headers, args.requests)[:3]
    out["tracks"] = time_reads(port, served.tracks, served.headers, args.requests)[:3]
    out["submit"] = submit_load(port, served.submit, served.auth, args.clients, args.seconds)
    out["count_after"] = count()
    out["rss_peak"] = rss_mib(proc.pid, "VmHWM")
    return out


def bench_hearsay(binary, work, export, args, listens):
    data = work / "hearsay-data"
    port = free_port()
    cfg = work / "hearsay.toml"
    cfg.write_text(
        f'[node]\ndata_dir = "{data}"\nlog = "warn"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
        f'[p2p]\nenabled = false\n'
    )
    base = [str(binary), "--config", str(cfg)]
    pw = work / "password"
    pw.write_text("side-by-side-password\n")
    run_timed(base + ["user", "add", USER, "--password-file", str(pw)])
    run_timed(base + ["user", "set-visibility", USER, "public"])
    _, token, _ = run_timed(base + ["token", "new", USER, "--name", "bench"])
    token = token.strip()
    secs, peak, text = run_measured(base + ["import", "--user", USER, str(export)])
    print("  hearsay import: " + " / ".join(text.strip().splitlines()[-2:]), flush=True)
    out = {"import_s": secs, "import_rate": listens / secs, "import_rss": peak}

    log = open(work / "hearsay.log", "w")
    proc = subprocess.Popen(base, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_http(port, "/health", proc)
        headers = {"Authorization": f"Token {token}"}
        out.update(measure_running(proc, port, args, listens, Served(
            count=lambda conn: get_json(conn, f"/1/user/{USER}/listen-count", headers)["payload"]["count"],
            disk_all=data, disk_db=(data / "db", None),
            artists=f"/1/stats/user/{USER}/artists?range=all_time&count=25",
            tracks=f"/1/stats/user/{USER}/recordings?range=this_year&count=25",
            submit="/1/submit-listens", auth=f"Token {token}", headers=headers)))
    finally:
        stop(proc)
        log.close()
    return out


def maloja_env(work, port):
    env = dict(os.environ)
    env.update({
        "MALOJA_DATA_DIRECTORY": str(work / "maloja-data"),
        "MALOJA_SKIP_SETUP": "true",
        "MALOJA_FORCE_PASSWORD": "side-by-side-password",
        "MALOJA_HOST": "127.0.0.1",
        "MALOJA_PORT": str(port),
        "MALOJA_PROXY_IMAGES": "false",
        "MALOJA_SEND_STATS": "false",
        "MALOJA_CLEAN_OUTPUT": "true",
    })
    return env


def bench_maloja(venv, work, export, args, listens):
    port = free_port()
    env = maloja_env(work, port)
    maloja = str(venv / "bin" / "maloja")
    # Imported offline into a fresh data directory, as its documentation says (an import
    # after a first start and stop of the server was seen to add nothing).
    secs, peak, text = run_measured([maloja, "import", str(export)], env=env)
    print("  maloja import: " + " / ".join(text.strip().splitlines()[-2:]), flush=True)
    out = {"import_s": secs, "import_rate": listens / secs, "import_rss": peak}

    log = open(work / "maloja.log", "w")
    # Its first start makes the API key (apikeys.yml) without asking (MALOJA_SKIP_SETUP).
    proc = subprocess.Popen([maloja, "run"], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_http(port, "/apis/mlj_1/serverinfo", proc)
        # Counts read before its database cache is complete come back as 0.
        deadline = time.time() + 300
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            status = get_json(conn, "/apis/mlj_1/serverinfo", {})["db_status"]
            conn.close()
            if status.get("complete") and not status.get("rebuildinprogress"):
                break
            if time.time() > deadline:
                sys.exit(f"maloja's database not ready after 300 s: {status}")
            time.sleep(0.5)
        keys = (work / "maloja-data" / "apikeys.yml").read_text()
        key = keys.split(":", 1)[1].strip().strip("'\"")
        out.update(measure_running(proc, port, args, listens, Served(
            count=lambda conn: get_json(conn, "/apis/mlj_1/numscrobbles", {})["amount"],
            disk_all=work / "maloja-data", disk_db=(work / "maloja-data", [".sqlite"]),
            artists="/apis/mlj_1/charts/artists",
            tracks=f"/apis/mlj_1/charts/tracks?in={time.gmtime().tm_year}",
            submit="/apis/listenbrainz/1/submit-listens", auth=f"token {key}", headers={})))
    finally:
        stop(proc)
        log.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listens", type=int, default=50_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--requests", type=int, default=200, help="timed reads of each chart, after the first")
    ap.add_argument("--no-build", action="store_true", help="use target/release/hearsay as it is")
    ap.add_argument("--venv", type=Path, default=ROOT / "target" / "maloja-venv")
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temporary one)")
    ap.add_argument("--only", choices=["hearsay", "maloja"], help="measure one server")
    args = ap.parse_args()

    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)
    binary = ROOT / "target" / "release" / "hearsay"
    if args.only != "hearsay" and not (args.venv / "bin" / "maloja").exists():
        subprocess.run([sys.executable, "-m", "venv", str(args.venv)], check=True)
        subprocess.run([str(args.venv / "bin" / "pip"), "install", "-q", MALOJA], check=True)

    work = args.keep or Path(tempfile.mkdtemp(prefix="side-by-side-"))
    if args.keep:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    try:
        export = work / "maloja_export_0.json"
        write_history(export, args.listens)
        print(f"history: {args.listens} listens, {export.stat().st_size / args.listens:.0f} B each as a Maloja export",
              flush=True)
        results = {}
        for name in ["hearsay", "maloja"]:
            if args.only and args.only != name:
                continue
            print(f"measuring {name} ...", flush=True)
            if name == "hearsay":
                results[name] = bench_hearsay(binary, work, export, args, args.listens)
            else:
                results[name] = bench_maloja(args.venv, work, export, args, args.listens)
        print(f"measuring the client's own ceiling ({args.clients} connections, a server that answers at once) ...",
              flush=True)
        ceiling = client_ceiling(args.clients, args.seconds)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    names = list(results)
    rows = [
        ("listens after import", lambda r: f"{r['count']}"),
        ("import (s)", lambda r: f"{r['import_s']:.2f}"),
        ("import (listens/s)", lambda r: f"{r['import_rate']:,.0f}"),
        ("importer peak RSS (MiB)", lambda r: f"{r['import_rss']:.0f}"),
        ("disk, data dir (B/listen)", lambda r: f"{r['disk_all']:.0f}"),
        ("disk, database (B/listen)", lambda r: f"{r['disk_db']:.0f}"),
        ("RSS at rest (MiB)", lambda r: f"{r['rss_rest']:.0f}"),
        ("top artists all time: first (ms)", lambda r: f"{r['artists'][0]:.1f}"),
        ("top artists all time: p50 / p99 (ms)", lambda r: f"{r['artists'][1]:.1f} / {r['artists'][2]:.1f}"),
        ("top tracks this year: first (ms)", lambda r: f"{r['tracks'][0]:.1f}"),
        ("top tracks this year: p50 / p99 (ms)", lambda r: f"{r['tracks'][1]:.1f} / {r['tracks'][2]:.1f}"),
        (f"submits, {args.clients} clients (acked/s)", lambda r: f"{r['submit'][0]:,.0f}"),
        ("submits: acked / failed", lambda r: f"{r['submit'][1]} / {r['submit'][2]}"),
        ("submits: p50 / p99 (ms)", lambda r: f"{r['submit'][3]:.1f} / {r['submit'][4]:.1f}"),
        ("listens after submits", lambda r: f"{r['count_after']}"),
        ("peak RSS of the server (MiB)", lambda r: f"{r['rss_peak']:.0f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'':{width}}  " + "  ".join(f"{n:>14}" for n in names))
    for label, f in rows:
        print(f"{label:{width}}  " + "  ".join(f"{f(results[n]):>14}" for n in names))
    print(f"\nthe client against a Python server that answers at once: {ceiling[0]:,.0f} requests/s "
          f"(p50 {ceiling[3]:.1f} ms, p99 {ceiling[4]:.1f} ms): the two share the cores and the bound")
    print("reads: hearsay answers its top 25 (count=25); Maloja's chart API has no limit and answers the "
          "whole chart")
    lost = False
    for n in names:
        r = results[n]
        stored = r["count_after"] - r["count"]
        acked, failed = r["submit"][1], r["submit"][2]
        if r["count"] != args.listens:
            print(f"{n}: holds {r['count']} listens after importing {args.listens}")
        if stored < acked:
            print(f"{n}: LOST {acked - stored} acknowledged listens")
            lost = True
        elif stored > acked:
            # A request that failed at the client may have been stored: then a loss
            # among the acknowledged could hide behind it, and this check is a bound.
            print(f"{n}: stored {stored - acked} listens more than it acknowledged ({failed} requests failed)")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
