"""End-to-end serving benchmark: frontend + 2 mocker workers on loopback, streamed chat completions.

Starts a private deployment (its own ``DYN_FILE_KV`` store, ``HOME`` and logs in a temp dir), drives it
with the light closed-loop load generator in ``loadgen.py`` at each concurrency level (ISL ~128
random-word tokens, unique per request; OSL 64 with ``ignore_eos``), and prints throughput, TTFT/ITL
percentiles and the frontend's CPU cost per request and per output token (from /proc utime+stime
over the measured window). ``--compare ai-dynamo`` runs the identical workload against ai-dynamo
1.6.1 (installed into ``benchmarks/.venv-ai-dynamo`` on first use) in the same run and prints the
ratios ours/theirs. ``--compare parsers`` runs ours twice on the same workload (a mocker that thinks
in Qwen3's think tokens, requests that offer a tool), first without output parsers, then with the
``qwen3`` reasoning parser and the ``hermes`` tool-call parser on the worker card, and prints the
ratios with/without: the cost of the parsers on the per-token path.

    python benchmarks/serve_bench.py                              # ours, concurrency 1,16,64
    python benchmarks/serve_bench.py --compare ai-dynamo --json out.json
    python benchmarks/serve_bench.py --compare parsers --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import LevelResult, percentile, run_level

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO.parent / "shared" / "data" / "models" / "Qwen3-0.6B"
AI_DYNAMO_VENV = REPO / "benchmarks" / ".venv-ai-dynamo"
AI_DYNAMO_VERSION = "1.6.1"
# The dependency list of ai-dynamo-runtime minus the one stub that cannot be installed here.
AI_DYNAMO_DEPS = [
    "aiohttp<4.0,>=3.14.3", "certifi", "kubernetes<33.0.0,>=32.0.1", "msgspec>=0.19.0",
    "prometheus-client<1.0,>=0.23.1", "pyzmq>=26.0.0", "redis<9.0.0,>=6.2.0", "tqdm>=4.0.0",
    "transformers>=4.56.0", "typing-extensions>=4.10.0", "zstandard<1.0,>=0.23.0",
]
CLK_TCK = os.sysconf("SC_CLK_TCK")


class DeploymentError(RuntimeError):
    pass


# -- processes ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all its threads, plus children it has reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return float("nan")
    # fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14..17
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and of all its live descendants (a ``--num-workers`` frontend is a supervisor
    and its worker processes; /proc/PID/stat counts children only once they are reaped)."""
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        total += process_cpu_seconds(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def parse_cpus(spec: str) -> set[int]:
    """``taskset -c`` syntax: ``0``, ``0,2``, ``0-3``."""
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def clean_env(venv_bin: Path, home: Path, kv_dir: Path) -> dict[str, str]:
    """The same environment for both systems: loopback-only, file discovery, nothing inherited that
    could make one system import the other's code."""
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("DYN_", "PYTHON", "VIRTUAL_ENV", "ETCD_", "NATS_", "HF_"))}
    path = [p for p in inherited.get("PATH", "").split(os.pathsep) if p and "/.venv" not in p]
    return {
        **inherited,
        "PATH": os.pathsep.join([str(venv_bin), *path]),
        "VIRTUAL_ENV": str(venv_bin.parent),
        "HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DYN_DISCOVERY_BACKEND": "file",
        "DYN_STORE_KV": "file",
        "DYN_FILE_KV": str(kv_dir),
        "DYN_REQUEST_PLANE": "tcp",
        "DYN_TCP_RPC_HOST": "127.0.0.1",
        "DYN_TCP_RESPONSE_STREAM_HOST": "127.0.0.1",
        "DYN_EVENT_PLANE_HOST": "127.0.0.1",
        "DYN_SYSTEM_HOST": "127.0.0.1",
    }


@dataclass
class System:
    """How to launch one implementation: which interpreter, and where its ``dynamo`` must come from."""

    name: str
    python: Path
    package_root: Path  # `dynamo` must be imported from under here, or the comparison is meaningless
    mocker_args: tuple[str, ...] = ()  # extra worker flags (the parser comparison)
    #: put first on the import path, so a git worktree benchmarks its own source, not the venv's install
    pythonpath: Path | None = None


@dataclass
class Deployment:
    system: System
    model_dir: Path
    workers: int
    router_mode: str
    keep_logs: bool = False
    request_plane: str = "tcp"
    nats_url: str = ""
    frontend_args: tuple[str, ...] = ()
    #: CPUs a role's processes are pinned to (sched_setaffinity, inherited by their children)
    cpus: dict[str, set[int]] = field(default_factory=dict)
    port: int = 0
    tmp: Path = field(default_factory=Path)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    failed: bool = False

    def __enter__(self) -> Deployment:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"serve-bench-{self.system.name}-"))
        try:
            self._start()
        except BaseException:
            self.failed = True
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if exc and exc[0] is not None and exc[0] is not KeyboardInterrupt:
            self.failed = True
        if self.keep_logs or self.failed:
            print(f"[{self.system.name}] logs kept in {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _spawn(self, role: str, args: list[str], env: dict[str, str]) -> None:
        log = self.tmp / f"{role}.log"
        self.logs[role] = log
        cpus = self.cpus.get(role)
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        with open(log, "wb") as out:
            # own session: the whole process group can be signalled, so no grandchild outlives us
            self.procs[role] = subprocess.Popen([str(self.system.python), "-m", *args], env=env, cwd=self.tmp,
                                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True, preexec_fn=pin)

    def _start(self) -> None:
        home, kv = self.tmp / "home", self.tmp / "kv"
        home.mkdir()
        kv.mkdir()
        env = clean_env(self.system.python.parent, home, kv)
        if self.system.pythonpath is not None:
            env["PYTHONPATH"] = str(self.system.pythonpath)
        env["DYN_REQUEST_PLANE"] = self.request_plane
        if self.nats_url:
            env["NATS_SERVER"] = self.nats_url
        self._check_import(env)
        self.port = free_port()
        name = self.model_dir.name
        self._spawn("mocker", ["dynamo.mocker", "--model-path", str(self.model_dir), "--model-name", name,
                               "--num-workers", str(self.workers), "--speedup-ratio", "1000",
                               *self.system.mocker_args], env)
        self._spawn("frontend", ["dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(self.port),
                                 "--router-mode", self.router_mode, *self.frontend_args], env)
        self._wait_ready(name, timeout=120.0)

    def _check_import(self, env: dict[str, str]) -> None:
        probe = "import dynamo.frontend, dynamo.mocker; print(dynamo.frontend.__file__)"
        res = subprocess.run([str(self.system.python), "-c", probe], env=env, cwd=self.tmp,
                             capture_output=True, text=True, timeout=60)
        where = res.stdout.strip()
        if res.returncode != 0:
            raise DeploymentError(f"[{self.system.name}] cannot import dynamo with {self.system.python}:\n"
                                  f"{res.stderr[-2000:]}")
        if not Path(where).resolve().is_relative_to(self.system.package_root.resolve()):
            raise DeploymentError(f"[{self.system.name}] dynamo.frontend resolves to {where}, expected under "
                                  f"{self.system.package_root}: the two systems would be mixed up")

    def _wait_ready(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/v1/models"
        while time.monotonic() < deadline:
            for role, p in self.procs.items():
                if p.poll() is not None:
                    raise DeploymentError(f"[{self.system.name}] {role} exited with code {p.returncode} "
                                          f"during start-up\n{self.log_tail(role)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if any(m.get("id") == name for m in json.load(resp).get("data", [])):
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.25)
        tails = "\n".join(self.log_tail(r) for r in self.procs)
        raise DeploymentError(f"[{self.system.name}] model {name!r} not listed at {url} after {timeout:.0f}s\n{tails}")

    def log_tail(self, role: str, lines: int = 40) -> str:
        try:
            text = self.logs[role].read_text(errors="replace").splitlines()[-lines:]
        except (KeyError, OSError):
            return f"--- {role}: no log ---"
        return f"--- last {len(text)} lines of {role} log ({self.logs[role]}) ---\n" + "\n".join(text)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())

    def stop(self) -> None:
        for p in self.procs.values():
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs.values():
            _signal_group(p, signal.SIGKILL)  # stragglers, and any grandchildren left in the group
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                print(f"[{self.system.name}] pid {p.pid} did not exit", file=sys.stderr)


def _signal_group(p: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# -- the reference install ------------------------------------------------------------------------

def ensure_ai_dynamo(venv: Path) -> System:
    """Install ai-dynamo into a venv of its own following BENCHMARKS.md (its full dependency
    resolution fails here, so the two wheels go in without deps and the deps are listed by hand)."""
    python = venv / "bin" / "python"
    site = venv / "lib"
    ok = python.exists() and subprocess.run(
        [str(python), "-c", "import dynamo.frontend, dynamo.mocker"], cwd=tempfile.gettempdir(),
        env={"PATH": os.environ.get("PATH", "")}, capture_output=True).returncode == 0
    if not ok:
        print(f"installing ai-dynamo {AI_DYNAMO_VERSION} into {venv} ...", flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        with tempfile.TemporaryDirectory(prefix="ai-dynamo-wheels-") as wheels:
            subprocess.run([str(python), "-m", "pip", "download", "-q", "--no-deps", "-d", wheels,
                            f"ai-dynamo=={AI_DYNAMO_VERSION}", f"ai-dynamo-runtime=={AI_DYNAMO_VERSION}"], check=True)
            runtime = next(Path(wheels).glob("ai_dynamo_runtime-*.whl"))
            frontend = next(Path(wheels).glob("ai_dynamo-*.whl"))
            subprocess.run([*pip, str(runtime), *AI_DYNAMO_DEPS], check=True)
            subprocess.run([*pip, "--no-deps", str(frontend)], check=True)
    return System("ai-dynamo", python, site)


def ours(name: str = "ours", mocker_args: tuple[str, ...] = ()) -> System:
    return System(name, Path(sys.executable), REPO / "src", mocker_args, pythonpath=REPO / "src")


#: the parser comparison: both runs think (the first half of the output is a Qwen3 think block) ...
THINKING = ("--reasoning", json.dumps({"start_thinking_token_id": 151667, "end_thinking_token_id": 151668,
                                       "thinking_ratio": 0.5}))
#: ... and only the second names parsers on its card
PARSERS = ("--dyn-reasoning-parser", "qwen3", "--dyn-tool-call-parser", "hermes")
#: offered in every request of the parser comparison, so the tool-call parser runs on each answer
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


# -- workload -------------------------------------------------------------------------------------

class PromptSource:
    """Random-word prompts calibrated with the model's tokenizer to ~ISL prompt tokens (chat template
    included), each request made unique by a random 3-word prefix so no two share a KV block."""

    PREFIX_WORDS = 3

    def __init__(self, model_dir: Path, isl: int, osl: int, model_name: str, seed: int = 0, pool: int = 256,
                 tools: bool = False) -> None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._rng = random.Random(seed)
        # whole-word vocabulary entries ("Ġword"): each encodes to one token after a space
        self.words = sorted(w[1:] for w in tok.get_vocab()
                            if w.startswith("\u0120") and w[1:].isascii() and w[1:].isalpha() and 3 <= len(w) <= 11)
        wrap = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
        overhead = len(tok.encode(wrap.format("")).ids)
        n = max(1, isl - overhead - self.PREFIX_WORDS)
        for _ in range(3):  # words occasionally split or merge; converge on the mean
            sample = [self._text(n + self.PREFIX_WORDS) for _ in range(16)]
            mean = sum(len(tok.encode(wrap.format(s)).ids) for s in sample) / len(sample)
            if abs(mean - isl) < 1:
                break
            n = max(1, round(n * (isl - overhead) / max(1.0, mean - overhead)))
        self.expected_isl = mean
        self._pool = [self._text(n) for _ in range(pool)]
        self._head = (f'{{"model":{json.dumps(model_name)},"messages":[{{"role":"user","content":"').encode()
        offered = f',"tools":[{json.dumps(TOOL)}]' if tools else ""
        self._tail = (f'"}}],"max_tokens":{osl},"ignore_eos":true,"stream":true{offered},'
                      '"stream_options":{"include_usage":true}}').encode()
        self._i = 0

    def _text(self, n: int) -> str:
        return " ".join(self._rng.choices(self.words, k=n))

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        self._i += 1
        prefix = " ".join(self._rng.choices(self.words, k=self.PREFIX_WORDS))
        body = self._pool[self._i % len(self._pool)]
        # words are ASCII letters only: no JSON escaping needed
        return b"".join((self._head, prefix.encode(), b" ", body.encode(), self._tail))


# -- measurement ----------------------------------------------------------------------------------

def summarize(system: str, res: LevelResult) -> dict[str, Any]:
    recs = res.records
    ttft = [(r.token_times[0] - r.start) * 1e3 for r in recs if r.token_times]
    itl = [(b - a) * 1e3 for r in recs for a, b in zip(r.token_times, r.token_times[1:], strict=False)]
    w = res.window_s
    fe_cpu = res.probes_end["frontend"] - res.probes_start["frontend"]
    wk_cpu = res.probes_end["mocker"] - res.probes_start["mocker"]
    cl_cpu = res.probes_end["client"] - res.probes_start["client"]
    done, toks = res.completed, res.output_tokens
    isl = [r.prompt_tokens for r in recs if r.prompt_tokens is not None]
    return {
        "system": system,
        "concurrency": res.concurrency,
        "window_s": w,
        "completed": done,
        "errors": len(res.errors),
        "first_error": res.errors[0] if res.errors else None,
        "req_per_s": done / w if w > 0 else float("nan"),
        "output_tok_per_s": toks / w if w > 0 else float("nan"),
        "mean_isl": sum(isl) / len(isl) if isl else float("nan"),
        "mean_osl": toks / done if done else float("nan"),
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "itl_p50_ms": percentile(itl, 50),
        "itl_p99_ms": percentile(itl, 99),
        "frontend_cpu_ms_per_req": fe_cpu * 1e3 / done if done else float("nan"),
        "frontend_cpu_us_per_tok": fe_cpu * 1e6 / toks if toks else float("nan"),
        "frontend_cpu_pct": fe_cpu / w * 100 if w > 0 else float("nan"),
        "mocker_cpu_pct": wk_cpu / w * 100 if w > 0 else float("nan"),
        "client_cpu_pct": cl_cpu / w * 100 if w > 0 else float("nan"),
    }


async def drive(dep: Deployment, prompts: PromptSource, args: argparse.Namespace) -> list[dict[str, Any]]:
    fe_pid, wk_pid = dep.procs["frontend"].pid, dep.procs["mocker"].pid
    # Inside the loop a signal must cancel the task: an exception raised from a Python-level handler
    # would surface in whatever protocol callback it interrupted, where the loop swallows it.
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main_task.cancel)

    def probe() -> dict[str, float]:
        return {"frontend": tree_cpu_seconds(fe_pid), "mocker": tree_cpu_seconds(wk_pid),
                "client": time.process_time()}

    rows = []
    for c in args.concurrency:
        res = await run_level("127.0.0.1", dep.port, prompts, c, warmup_s=args.warmup,
                              duration_s=None if args.requests else args.duration,
                              requests=args.requests, probe=probe)
        if not dep.alive():
            dead = [r for r, p in dep.procs.items() if p.poll() is not None]
            raise DeploymentError(f"[{dep.system.name}] {', '.join(dead)} died during the run\n"
                                  + "\n".join(dep.log_tail(r) for r in dead))
        row = summarize(dep.system.name, res)
        rows.append(row)
        print(f"  [{dep.system.name}] c={c}: {row['req_per_s']:.0f} req/s, TTFT p50 {row['ttft_p50_ms']:.1f} ms, "
              f"{row['errors']} errors", flush=True)
        if row["first_error"]:
            print(f"    first error: {row['first_error']}", flush=True)
    return rows


def run_system(system: System, prompts: PromptSource, args: argparse.Namespace) -> list[dict[str, Any]]:
    print(f"[{system.name}] starting mocker x{args.workers} + frontend ({args.router_mode}"
          f"{f', {args.frontend_workers} processes' if args.frontend_workers > 1 and system.name.startswith('ours') else ''}"
          f"{f', cpus {args.frontend_cpus}' if args.frontend_cpus else ''}) ...", flush=True)
    # --frontend-workers is ours only: the reference's frontend is one multi-threaded process
    frontend_args = ("--num-workers", str(args.frontend_workers)) if args.frontend_workers > 1 and \
        system.name.startswith("ours") else ()
    cpus = {role: parse_cpus(spec) for role, spec in (("frontend", args.frontend_cpus),
                                                      ("mocker", args.mocker_cpus)) if spec}
    with Deployment(system, args.model_path, args.workers, args.router_mode, keep_logs=args.keep_logs,
                    request_plane=args.request_plane, nats_url=args.nats_url, frontend_args=frontend_args,
                    cpus=cpus) as dep:
        time.sleep(1.0)  # let the frontend see every worker before warm-up starts routing
        try:
            import uvloop
        except ImportError:
            runner: Any = asyncio.run
        else:
            runner = uvloop.run
        try:
            return runner(drive(dep, prompts, args))  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None


# -- output ---------------------------------------------------------------------------------------

COLUMNS = [
    ("conc", "concurrency", "{:d}"),
    ("done", "completed", "{:d}"),
    ("err", "errors", "{:d}"),
    ("ISL", "mean_isl", "{:.0f}"),
    ("OSL", "mean_osl", "{:.0f}"),
    ("req/s", "req_per_s", "{:.1f}"),
    ("tok/s", "output_tok_per_s", "{:.0f}"),
    ("TTFT p50", "ttft_p50_ms", "{:.2f}"),
    ("TTFT p99", "ttft_p99_ms", "{:.2f}"),
    ("ITL p50", "itl_p50_ms", "{:.3f}"),
    ("ITL p99", "itl_p99_ms", "{:.3f}"),
    ("FE ms/req", "frontend_cpu_ms_per_req", "{:.3f}"),
    ("FE us/tok", "frontend_cpu_us_per_tok", "{:.2f}"),
    ("FE cpu%", "frontend_cpu_pct", "{:.0f}"),
    ("mock cpu%", "mocker_cpu_pct", "{:.0f}"),
    ("client%", "client_cpu_pct", "{:.0f}"),
]
RATIOS = [("req/s", "req_per_s"), ("tok/s", "output_tok_per_s"), ("TTFT p50", "ttft_p50_ms"),
          ("FE CPU/req", "frontend_cpu_ms_per_req"), ("FE CPU/tok", "frontend_cpu_us_per_tok")]


def _fmt(fmt: str, v: Any) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return fmt.format(v)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    cells = [[h for h, _, _ in COLUMNS]] + [[_fmt(f, r[k]) for _, k, f in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    print(f"\n{title}  (times in ms; FE = frontend process CPU over the measured window)")
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def ratios(ours_rows: list[dict[str, Any]], theirs_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for a, b in zip(ours_rows, theirs_rows, strict=True):
        row: dict[str, Any] = {"concurrency": a["concurrency"]}
        for _, key in RATIOS:
            row[key] = a[key] / b[key] if b[key] and not math.isnan(b[key]) else float("nan")
        out.append(row)
    return out


def print_ratios(rows: list[dict[str, Any]], title: str = "ours / ai-dynamo") -> None:
    print(f"\n{title}  (>1 is better for req/s and tok/s; <1 is better for TTFT and CPU)")
    head = ["conc", *(h for h, _ in RATIOS)]
    print("  ".join(h.rjust(10) for h in head))
    print("  ".join("-" * 10 for _ in head))
    for r in rows:
        print("  ".join([str(r["concurrency"]).rjust(10), *(_fmt("{:.2f}", r[k]).rjust(10) for _, k in RATIOS)]))


# -- CLI ------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", default="1,16,64", type=lambda s: [int(x) for x in s.split(",") if x],
                   help="comma-separated concurrency levels (default 1,16,64)")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--duration", type=float, default=10.0, help="measured seconds per level (default 10)")
    amount.add_argument("--requests", type=int, help="measure this many requests per level instead of a duration")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level's window")
    p.add_argument("--isl", type=int, default=128, help="target prompt tokens, chat template included")
    p.add_argument("--osl", type=int, default=64, help="max_tokens (ignore_eos is set)")
    p.add_argument("--compare", choices=["ai-dynamo", "parsers"],
                   help="also run the reference in the same run, or ours again with output parsers on")
    p.add_argument("--ai-dynamo-venv", type=Path, default=AI_DYNAMO_VENV, help="venv for the reference")
    p.add_argument("--router-mode", default="round-robin", help="frontend --router-mode (default round-robin)")
    p.add_argument("--workers", type=int, default=2, help="mocker --num-workers (default 2)")
    p.add_argument("--request-plane", choices=["tcp", "nats", "http"], default="tcp",
                   help="request plane of the deployment (nats: a nats-server is started for the run)")
    p.add_argument("--frontend-workers", type=int, default=1,
                   help="our frontend's --num-workers (processes on one port; default 1)")
    p.add_argument("--frontend-cpus", help="pin both systems' frontend to these CPUs (taskset -c syntax: 0 or 0-1)")
    p.add_argument("--mocker-cpus", help="pin the mocker workers to these CPUs")
    p.add_argument("--model-path", type=Path, default=DEFAULT_MODEL_DIR, help="tokenizer/model dir")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds (systems alternate); each system keeps its best round per level (default 1)")
    p.add_argument("--json", type=Path, help="also write all rows (and ratios) to this file")
    p.add_argument("--keep-logs", action="store_true", help="keep each deployment's temp dir and logs")
    return p.parse_args(argv)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM takes the same clean-up path as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.requests:
        args.duration = None
    if not (args.model_path / "tokenizer.json").exists():
        print(f"no tokenizer.json under {args.model_path}", file=sys.stderr)
        return 2
    # outside the event loop (start-up, install): both signals unwind through the finally blocks
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    prompts = PromptSource(args.model_path, args.isl, args.osl, args.model_path.name,
                           tools=args.compare == "parsers")
    amount = f"{args.requests} requests" if args.requests else f"{args.duration:g}s"
    print(f"workload: ISL ~{prompts.expected_isl:.0f} tokens, OSL {args.osl}, concurrency {args.concurrency}, "
          f"{amount} per level after {args.warmup:g}s warm-up", flush=True)
    args.nats_url = ""
    nats_proc = None
    if args.request_plane == "nats":
        from request_plane import start_nats  # the sibling benchmark's nats-server launcher

        nats_proc = start_nats()
        args.nats_url = os.environ["NATS_SERVER"]
    results: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    try:
        systems = [ours()]
        if args.compare == "ai-dynamo":
            systems.append(ensure_ai_dynamo(args.ai_dynamo_venv))
        elif args.compare == "parsers":
            systems = [ours("ours", THINKING), ours("ours+parsers", THINKING + PARSERS)]
        # Rounds alternate the systems, and each keeps its best round per level: on a shared machine a
        # neighbour's burst slows one round, never speeds one up.
        for _ in range(args.repeat):
            for system in systems:
                rows = run_system(system, prompts, args)
                best = results.get(system.name)
                results[system.name] = rows if best is None else [
                    r if r["output_tok_per_s"] > b["output_tok_per_s"] else b for r, b in zip(rows, best, strict=True)]
    except DeploymentError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; all components stopped", file=sys.stderr)
        return 130
    finally:
        if nats_proc is not None:
            nats_proc.terminate()
            nats_proc.wait(10)
    print_table("ours", results["ours"])
    if "ai-dynamo" in results:
        print_table(f"ai-dynamo {AI_DYNAMO_VERSION}", results["ai-dynamo"])
        results["ratios"] = ratios(results["ours"], results["ai-dynamo"])
        print_ratios(results["ratios"])
    if "ours+parsers" in results:
        print_table("ours+parsers", results["ours+parsers"])
        results["ratios"] = ratios(results["ours+parsers"], results["ours"])
        print_ratios(results["ratios"], "with parsers / without (issue 16 wants tok/s >= 0.9 at c=64)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
