#!/usr/bin/env python3
"""Serving benchmark in the form of vLLM's `bench serve`, for any server that speaks llama-server's
`/completion` or OpenAI's `/v1/completions` (rocmforge serve, llama-server). Standard library only.

Throughput scenario (default): M requests with random prompts of exactly L tokens, each asking for
G tokens with `ignore_eos`, greedy, streamed, N in flight at a time (rate = inf, like vLLM's
`--max-concurrency N`). One warm-up request first, not counted. Prompts are random English-like
words tokenized by the server's `/tokenize`, cut to L ids and sent as token ids, so every server
gets the same L tokens (save them with --prompts FILE to reuse them against another server).

  bench-serve.py --url http://127.0.0.1:8080 --concurrency 4 --num-prompts 16 \
                 --input-len 128 --output-len 64 [--seed 0] [--dialect llamacpp|openai] [--prompts F]

Chat-turn scenario (prefix cache): a history of H tokens + a question (turn 1), then the same
history + the reply + a new question (turn 2), one request at a time, REPS fresh histories;
reports the TTFT of both turns and turn2/turn1. With --dialect openai it goes through
/v1/chat/completions (the server renders the template and re-tokenizes the reply); with llamacpp
through /completion with token ids (the reply's own ids are appended, an exact prefix).

  bench-serve.py --url URL --scenario chat-turn [--history-len 2000] [--reps 3] [--output-len 64]

Measured as vLLM does: TTFT = send -> first streamed token; ITL = every gap between streamed
chunks that carry tokens, pooled over requests; TPOT = (latency - TTFT) / (output tokens - 1);
output throughput = sum of output tokens (server-reported) / wall time of the whole run.
Requests that stop before G tokens are counted ("short_outputs"): at 2bfcfe1 `rocmforge serve` honours
`ignore_eos` on /completion only, not on /v1/completions or /v1/chat/completions (llama-server: all three).
Prints vLLM's result table, then one JSON line (the last line of stdout).
"""
import argparse
import concurrent.futures as cf
import http.client
import json
import os
import random
import statistics
import sys
import threading
import time
import urllib.parse

WORDS = (
    "the of and to in is was for on that with as by at from his her an which are have this be not or had but "
    "their one all were they been has more when also there who into other after first two new time can only "
    "over some would such its most may about could made these then than them many where later between during "
    "river city music system water church school people light garden market winter summer station history "
    "village country number family report studio company project table window language mountain island bridge "
    "engine forest doctor letter paper signal voice travel energy silver copper planet rocket ocean harbor "
    "season theory method result simple strong quiet early green yellow purple ancient modern public private "
    "north south east west small large young old open close build carry follow change measure return present"
).split()


# ---------------------------------------------------------------- HTTP

class Client:
    def __init__(self, url, timeout):
        u = urllib.parse.urlparse(url if "://" in url else "http://" + url)
        self.host, self.port = u.hostname, u.port or 80
        self.base = u.path.rstrip("/")
        self.timeout = timeout

    def conn(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def get(self, path):
        c = self.conn()
        try:
            c.request("GET", self.base + path)
            r = c.getresponse()
            body = r.read()
            return r.status, json.loads(body) if body else None
        finally:
            c.close()

    def post(self, path, body):
        c = self.conn()
        try:
            c.request("POST", self.base + path, json.dumps(body), {"Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
            if r.status != 200:
                raise RuntimeError(f"POST {path}: HTTP {r.status}: {data[:300]!r}")
            return json.loads(data)
        finally:
            c.close()

    def stream(self, path, body):
        """POST and yield (t_arrival, json) per SSE `data:` event."""
        c = self.conn()
        try:
            c.request("POST", self.base + path, json.dumps(body),
                      {"Content-Type": "application/json", "Accept": "text/event-stream"})
            r = c.getresponse()
            if r.status != 200:
                raise RuntimeError(f"POST {path}: HTTP {r.status}: {r.read()[:300]!r}")
            while True:
                line = r.readline()
                if not line:
                    break
                t = time.perf_counter()
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                yield t, json.loads(data)
        finally:
            c.close()


# ---------------------------------------------------------------- one streamed request

def stream_request(cl, dialect, model, prompt, max_tokens, ignore_eos=True, messages=None, want_ids=False):
    """Returns dict(ok, ttft, latency, itls, out_tokens, text, ids, cached, error)."""
    if messages is not None:
        path = "/v1/chat/completions"
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, "ignore_eos": ignore_eos}
    elif dialect == "openai":
        path = "/v1/completions"
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, "ignore_eos": ignore_eos}
    else:
        path = "/completion"
        body = {"prompt": prompt, "n_predict": max_tokens, "temperature": 0, "stream": True, "ignore_eos": ignore_eos,
                "cache_prompt": True, "return_tokens": want_ids}
    res = {"ok": False, "ttft": None, "latency": None, "itls": [], "out_tokens": 0, "chunks": 0, "text": "", "ids": [],
           "cached": None, "prompt_tokens": None, "error": None}
    t0 = time.perf_counter()
    last = None
    text = []
    try:
        for t, ev in cl.stream(path, body):
            if "error" in ev:
                raise RuntimeError(f"stream error: {json.dumps(ev['error'])[:300]}")
            piece, ntok = "", 0
            if dialect == "llamacpp" and messages is None:
                piece = ev.get("content", "")
                ids = ev.get("tokens") or []
                if not ev.get("stop"):
                    res["ids"].extend(ids)
                    ntok = max(len(ids), 1 if piece else 0)
                else:
                    res["out_tokens"] = ev.get("tokens_predicted", res["out_tokens"])
                    res["prompt_tokens"] = ev.get("tokens_evaluated")
                    tm = ev.get("timings") or {}
                    res["cached"] = tm.get("cache_n")
            else:
                for ch in ev.get("choices") or []:
                    piece += ch.get("text") or (ch.get("delta") or {}).get("content") or ""
                ntok = 1 if piece else 0
                u = ev.get("usage")
                if u:
                    res["out_tokens"] = u.get("completion_tokens", 0)
                    res["prompt_tokens"] = u.get("prompt_tokens")
                    res["cached"] = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
                    if res["cached"] is None and ev.get("timings"):
                        res["cached"] = ev["timings"].get("cache_n")
            if ntok:
                text.append(piece)
                res["chunks"] += 1
                if last is None:
                    res["ttft"] = t - t0
                else:
                    res["itls"].append(t - last)
                last = t
        res["latency"] = time.perf_counter() - t0
        res["text"] = "".join(text)
        if not res["out_tokens"]:
            res["out_tokens"] = res["chunks"]
        if res["ttft"] is None:
            raise RuntimeError("no token streamed")
        res["ok"] = True
    except Exception as e:  # noqa: BLE001 - a benchmark counts failures, it does not stop on them
        res["error"] = f"{type(e).__name__}: {e}"
        res["latency"] = time.perf_counter() - t0
    return res


# ---------------------------------------------------------------- prompts

def tokenize(cl, text):
    r = cl.post("/tokenize", {"content": text, "add_special": False})
    return [t if isinstance(t, int) else t["id"] for t in r["tokens"]]


def random_ids(cl, rng, n):
    """n token ids of random words (tokenized by the server)."""
    ids = []
    while len(ids) < n:
        words = " ".join(rng.choice(WORDS) for _ in range(int((n - len(ids)) * 1.2) + 8))
        ids.extend(tokenize(cl, " " + words if ids else words.capitalize()))
    return ids[:n]


def make_prompts(cl, args):
    if args.prompts and os.path.exists(args.prompts):
        with open(args.prompts) as f:
            p = json.load(f)
        if len(p) >= args.num_prompts + 1 and all(len(x) == args.input_len for x in p):
            return p[: args.num_prompts + 1]
    rng = random.Random(args.seed)
    p = [random_ids(cl, rng, args.input_len) for _ in range(args.num_prompts + 1)]  # +1: warm-up
    if args.prompts:
        with open(args.prompts, "w") as f:
            json.dump(p, f)
    return p


# ---------------------------------------------------------------- stats

def pct(xs, q):
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def mean(xs):
    return statistics.fmean(xs) if xs else float("nan")


COMPILERS = {"cargo", "rustc", "cc1", "cc1plus", "cc1obj", "collect2", "ld", "ld.lld", "clang", "clang++", "nvcc", "make", "ninja"}


def compilers():
    """How many compiler processes run on the machine now (others' builds spoil any figure)."""
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    n += f.read().strip() in COMPILERS
            except OSError:
                pass
    return n


def cpu_snapshot(server_pid):
    """(machine busy jiffies, server jiffies, this process's CPU seconds)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        busy = sum(v) - v[3] - v[4]
        srv = 0
        if server_pid:
            with open(f"/proc/{server_pid}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
            srv = int(st[11]) + int(st[12])
        t = os.times()
        return busy, srv, t.user + t.system
    except (OSError, ValueError, IndexError):
        return None


def cpu_share(a, b, dur):
    """Where the machine's CPU went during the run, in % of all CPUs: the server, this client, and
    everything else (other users: if large, the figure is not trustworthy)."""
    if not a or not b:
        return {}
    hz, n = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
    tot = (b[0] - a[0]) / hz
    srv = (b[1] - a[1]) / hz
    cli = b[2] - a[2]
    pct = lambda x: 100 * x / (dur * n)  # noqa: E731
    out = {"cpu_busy_pct": pct(tot), "cpu_client_pct": pct(cli)}
    if a[1] or b[1]:
        out.update(cpu_server_pct=pct(srv), cpu_other_pct=pct(max(tot - srv - cli, 0)))
    return out


def load_avg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


# ---------------------------------------------------------------- scenarios

def resolve_model(cl, args):
    if args.model:
        return args.model
    try:
        st, m = cl.get("/v1/models")
        return m["data"][0]["id"]
    except Exception:  # noqa: BLE001
        return "default"


def run_throughput(cl, args):
    model = resolve_model(cl, args)
    prompts = make_prompts(cl, args)
    warm = stream_request(cl, args.dialect, model, prompts[0], args.output_len)
    if not warm["ok"]:
        sys.exit(f"warm-up request failed: {warm['error']}")
    prompts = prompts[1:]
    load0, comp0 = load_avg(), compilers()
    lock = threading.Lock()
    in_flight = [0, 0]  # now, max

    def one(p):
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            return stream_request(cl, args.dialect, model, p, args.output_len)
        finally:
            with lock:
                in_flight[0] -= 1

    cpu0 = cpu_snapshot(args.server_pid)
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=args.concurrency) as ex:
        results = list(ex.map(one, prompts))
    dur = time.perf_counter() - t0
    cpu = cpu_share(cpu0, cpu_snapshot(args.server_pid), dur)
    ok = [r for r in results if r["ok"]]
    bad = [r for r in results if not r["ok"]]
    out = sum(r["out_tokens"] for r in ok)
    inp = args.input_len * len(ok)
    ttft = [r["ttft"] * 1e3 for r in ok]
    itl = [x * 1e3 for r in ok for x in r["itls"]]
    tpot = [(r["latency"] - r["ttft"]) * 1e3 / (r["out_tokens"] - 1) for r in ok if r["out_tokens"] > 1]
    e2e = [r["latency"] * 1e3 for r in ok]
    short = sum(1 for r in ok if r["out_tokens"] < args.output_len)
    multi = sum(1 for r in ok if r["chunks"] < r["out_tokens"])
    res = {
        "scenario": "throughput", "url": args.url, "dialect": args.dialect, "model": model,
        "concurrency": args.concurrency, "max_in_flight": in_flight[1], "num_prompts": len(prompts),
        "input_len": args.input_len, "output_len": args.output_len, "seed": args.seed,
        "completed": len(ok), "failed": len(bad), "errors": sorted({r["error"] for r in bad})[:5],
        "short_outputs": short, "requests_with_multi_token_chunks": multi,
        "duration_s": dur, "total_input_tokens": inp, "total_output_tokens": out,
        "request_throughput": len(ok) / dur, "output_throughput": out / dur, "total_token_throughput": (inp + out) / dur,
        "mean_ttft_ms": mean(ttft), "median_ttft_ms": pct(ttft, 50), "p99_ttft_ms": pct(ttft, 99),
        "mean_tpot_ms": mean(tpot), "median_tpot_ms": pct(tpot, 50), "p99_tpot_ms": pct(tpot, 99),
        "mean_itl_ms": mean(itl), "median_itl_ms": pct(itl, 50), "p99_itl_ms": pct(itl, 99),
        "mean_e2el_ms": mean(e2e), "median_e2el_ms": pct(e2e, 50), "p99_e2el_ms": pct(e2e, 99),
        "load_avg_1m_before": load0, "load_avg_1m_after": load_avg(),
        "compilers_before": comp0, "compilers_after": compilers(), **cpu,
    }
    w = 50
    row = lambda k, v, f="{:.2f}": print(f"{k:<40}{f.format(v):>10}")  # noqa: E731
    print("{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=w, c="="))
    row("Successful requests:", len(ok), "{}")
    row("Failed requests:", len(bad), "{}")
    row("Maximum request concurrency:", args.concurrency, "{}")
    row("Benchmark duration (s):", dur)
    row("Total input tokens:", inp, "{}")
    row("Total generated tokens:", out, "{}")
    row("Request throughput (req/s):", res["request_throughput"])
    row("Output token throughput (tok/s):", res["output_throughput"])
    row("Total Token throughput (tok/s):", res["total_token_throughput"])
    for title, key in (("Time to First Token", "ttft"), ("Time per Output Token (excl. 1st token)", "tpot"),
                       ("Inter-token Latency", "itl"), ("End-to-end Latency", "e2el")):
        print("{s:{c}^{n}}".format(s=title, n=w, c="-"))
        for stat in ("mean", "median", "p99"):
            row(f"{stat.capitalize() if stat != 'p99' else 'P99'} {key.upper()} (ms):", res[f"{stat}_{key}_ms"])
    print(f"{'Load avg 1 min before / after:':<40}{load0:>5.2f} / {res['load_avg_1m_after']:.2f}")
    print(f"{'Compiler processes before / after:':<40}{comp0:>5} / {res['compilers_after']}")
    if "cpu_other_pct" in cpu:
        print(f"{'CPU % of machine: server/client/other:':<40}{cpu['cpu_server_pct']:>5.0f} / {cpu['cpu_client_pct']:.0f} / {cpu['cpu_other_pct']:.0f}")
    print("=" * w)
    if short:
        print(f"note: {short} request(s) stopped before {args.output_len} tokens (ignore_eos not honoured?)")
    for e in res["errors"]:
        print(f"error: {e}")
    print(json.dumps(res), flush=True)
    return res


def run_chat_turn(cl, args):
    model = resolve_model(cl, args)
    rng = random.Random(f"chat-turn-{args.seed}")  # not the throughput prompts' stream: no accidental cache hits
    chat = args.dialect == "openai"
    q1, q2 = "Summarize the text above in one sentence.", "Now list three words from it that you like."
    # Warm-up: a short exchange (loads the model, first-call costs).
    w = stream_request(cl, args.dialect, model, tokenize(cl, "Hello there"), 8,
                       messages=[{"role": "user", "content": "Hello"}] if chat else None)
    if not w["ok"]:
        sys.exit(f"warm-up request failed: {w['error']}")
    turns = []
    for rep in range(args.reps):
        hist_ids = random_ids(cl, rng, args.history_len)
        if chat:
            hist = cl.post("/detokenize", {"tokens": hist_ids}).get("content", "")
            m1 = [{"role": "user", "content": hist + "\n\n" + q1}]
            a = stream_request(cl, "openai", model, None, args.output_len, messages=m1)
            if not a["ok"]:
                sys.exit(f"turn 1 failed: {a['error']}")
            m2 = m1 + [{"role": "assistant", "content": a["text"]}, {"role": "user", "content": q2}]
            b = stream_request(cl, "openai", model, None, args.output_len, messages=m2)
        else:
            p1 = hist_ids + tokenize(cl, "\n\n" + q1 + "\n")
            a = stream_request(cl, "llamacpp", model, p1, args.output_len, want_ids=True)
            if not a["ok"]:
                sys.exit(f"turn 1 failed: {a['error']}")
            p2 = p1 + a["ids"] + tokenize(cl, "\n\n" + q2 + "\n")
            b = stream_request(cl, "llamacpp", model, p2, args.output_len)
        if not b["ok"]:
            sys.exit(f"turn 2 failed: {b['error']}")
        turns.append((a, b))
        print(f"rep {rep}: turn1 TTFT {a['ttft'] * 1e3:8.1f} ms (prompt {a['prompt_tokens']}, cached {a['cached']})   "
              f"turn2 TTFT {b['ttft'] * 1e3:8.1f} ms (prompt {b['prompt_tokens']}, cached {b['cached']})", flush=True)
    t1 = [a["ttft"] * 1e3 for a, _ in turns]
    t2 = [b["ttft"] * 1e3 for _, b in turns]
    res = {
        "scenario": "chat-turn", "url": args.url, "dialect": args.dialect, "model": model, "history_len": args.history_len,
        "reps": args.reps, "output_len": args.output_len,
        "turn1_ttft_ms": t1, "turn2_ttft_ms": t2,
        "median_turn1_ttft_ms": pct(t1, 50), "median_turn2_ttft_ms": pct(t2, 50),
        "ratio_turn2_turn1": pct(t2, 50) / pct(t1, 50),
        "turn1_prompt_tokens": [a["prompt_tokens"] for a, _ in turns], "turn2_prompt_tokens": [b["prompt_tokens"] for _, b in turns],
        "turn2_cached_tokens": [b["cached"] for _, b in turns],
        "median_turn2_itl_ms": pct([x * 1e3 for _, b in turns for x in b["itls"]], 50), "load_avg_1m": load_avg(), "compilers_after": compilers(),
    }
    print(f"{'=' * 14} Chat turn (prefix cache) {'=' * 10}")
    print(f"{'Median TTFT turn 1 (ms):':<40}{res['median_turn1_ttft_ms']:>10.1f}")
    print(f"{'Median TTFT turn 2 (ms):':<40}{res['median_turn2_ttft_ms']:>10.1f}")
    print(f"{'Turn 2 / turn 1:':<40}{res['ratio_turn2_turn1']:>10.3f}")
    print(f"{'Median ITL turn 2 (ms, ~2k context):':<40}{res['median_turn2_itl_ms']:>10.2f}")
    print("=" * 50)
    print(json.dumps(res), flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", default=None, help="model name for OpenAI routes (default: first of /v1/models)")
    ap.add_argument("--scenario", choices=["throughput", "chat-turn"], default="throughput")
    ap.add_argument("--dialect", choices=["llamacpp", "openai"], default="llamacpp",
                    help="llamacpp: POST /completion (n_predict); openai: POST /v1/completions (max_tokens)")
    ap.add_argument("--concurrency", "-N", type=int, default=1)
    ap.add_argument("--num-prompts", "-M", type=int, default=8)
    ap.add_argument("--input-len", "-L", type=int, default=128)
    ap.add_argument("--output-len", "-G", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompts", default=None, help="JSON file of prompt token ids: loaded if it fits, else written")
    ap.add_argument("--history-len", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--server-pid", type=int, default=0,
                    help="the server's pid (same machine): report the CPU it, the client and other processes used")
    args = ap.parse_args()
    cl = Client(args.url, args.timeout)
    if args.scenario == "throughput":
        run_throughput(cl, args)
    else:
        run_chat_turn(cl, args)


if __name__ == "__main__":
    main()
