#!/usr/bin/env python3
"""Soak test of a running `rocmforge serve` (not part of CI; issue 8's "64 clients for 10 minutes").

N client threads send streaming /v1/completions requests with random prompt and output lengths
for DURATION seconds; about CANCEL_FRACTION of them hang up mid-stream (the server must cancel
them and free their KV). At the end it checks, from /metrics and /proc: zero failed requests
(HTTP errors or broken streams that were not hung up on purpose), KV cache usage back to 0,
no request running or waiting, and the server's resident memory flat (the growth from the
first sample after warm-up to the end, printed; failed above --max-rss-growth-mib).

usage: scripts/soak.py --url http://127.0.0.1:11434 --model NAME --pid SERVER_PID
                       [--clients 64] [--duration 600] [--cancel 0.1] [--max-rss-growth-mib 64]
Standard library only.
"""
import argparse, json, random, re, sys, threading, time, urllib.request, http.client
from urllib.parse import urlparse

WORDS = "the of and to in is was for on that with as by at from his her it be are this an which or had not but one all were when we there can been has more will if no out so said what up its about into than them only".split()


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"VmRSS:\s+(\d+) kB", f.read())
    return int(m.group(1)) / 1024 if m else float("nan")


def metrics(url):
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, val = line.rpartition(" ")
            out[name.split("{")[0]] = out.get(name.split("{")[0], 0.0) + float(val)
    return out


def client(args, stop_at, stats, lock, seed):
    rng = random.Random(seed)
    u = urlparse(args.url)
    while time.time() < stop_at:
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, args.max_prompt_words)))
        body = {"model": args.model, "prompt": prompt, "max_tokens": rng.randint(1, args.max_tokens),
                "stream": True, "temperature": rng.choice([0, 0.7, 1.0])}
        cancel_after = rng.randint(1, 8) if rng.random() < args.cancel else None
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=300)
        kind = "ok"
        try:
            conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
            r = conn.getresponse()
            if r.status != 200:
                kind = f"http {r.status}: {r.read()[:200]!r}"
            else:
                events, done = 0, False
                for raw in r:
                    line = raw.decode().strip()
                    if not line.startswith("data:"):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    events += 1
                    if cancel_after is not None and events >= cancel_after:
                        kind = "cancelled"
                        break
                if kind == "ok" and not done:
                    kind = "stream ended without [DONE]"
        except Exception as e:  # noqa: BLE001 - every failure is counted and shown
            kind = f"exception: {e}"
        finally:
            conn.close()
        with lock:
            stats[kind] = stats.get(kind, 0) + 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:11434")
    ap.add_argument("--model", required=True)
    ap.add_argument("--pid", type=int, required=True, help="the server's pid (for its resident memory)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--cancel", type=float, default=0.1)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--max-prompt-words", type=int, default=400)
    ap.add_argument("--max-rss-growth-mib", type=float, default=64)
    args = ap.parse_args()
    stats, lock = {}, threading.Lock()
    t0 = time.time()
    stop_at = t0 + args.duration
    threads = [threading.Thread(target=client, args=(args, stop_at, stats, lock, i), daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()
    warm = min(60.0, args.duration / 5)
    time.sleep(warm)
    rss0 = rss_mib(args.pid)
    samples = [rss0]
    while time.time() < stop_at:
        time.sleep(min(30, max(0.0, stop_at - time.time())))
        samples.append(rss_mib(args.pid))
        with lock:
            print(f"[{time.time() - t0:6.0f}s] rss {samples[-1]:.0f} MiB  {dict(stats)}", flush=True)
    for t in threads:
        t.join()
    time.sleep(2)  # let the engine take the last cancellations
    m = metrics(args.url)
    rss1 = rss_mib(args.pid)
    failures = {k: v for k, v in stats.items() if k not in ("ok", "cancelled")}
    kv = m.get("rocmforge:kv_cache_usage_ratio", float("nan"))
    running = m.get("rocmforge:num_requests_running", float("nan"))
    waiting = m.get("rocmforge:num_requests_waiting", float("nan"))
    print(json.dumps({"requests": stats, "kv_usage_end": kv, "running_end": running, "waiting_end": waiting,
                      "rss_mib_after_warmup": rss0, "rss_mib_end": rss1, "rss_mib_max": max(samples)}))
    ok = not failures and kv == 0 and running == 0 and waiting == 0 and rss1 - rss0 <= args.max_rss_growth_mib
    print("SOAK " + ("PASSED" if ok else f"FAILED: failures {failures}, kv {kv}, running {running}, waiting {waiting}, rss growth {rss1 - rss0:.0f} MiB"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
