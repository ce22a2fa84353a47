"""``make run`` / ``make run-vllm``: a complete local deployment on the embedded defaults (file store,
tcp, zmq).

Starts two workers and a frontend as child processes, waits until the model is served, prints the URL
and a ready-to-paste curl, and stops everything cleanly on Ctrl-C / SIGTERM.

* ``python -m dynamo.run.local`` — two mocker workers (round-robin). Environment: ``DYN_HTTP_PORT``
  (8000), ``DYN_MODEL_PATH`` (local Qwen3-0.6B when present, else the hub id),
  ``DYN_MOCKER_SPEEDUP_RATIO`` (10), ``DYN_MOCKER_NUM_WORKERS`` (2).
* ``python -m dynamo.run.local --disagg`` — disaggregated: one prefill mocker worker (KV bootstrap on a
  free port) and ``DYN_MOCKER_NUM_WORKERS`` decode workers behind KV-aware routing.
* ``python -m dynamo.run.local --engine vllm`` — two real vLLM workers behind KV-aware routing, on
  ``DYN_MODEL_PATH`` or, by default, the tiny random Qwen3 written to ``.cache/tiny-qwen3`` on first
  use (no download). ``VLLM_CPU_KVCACHE_SPACE`` defaults to 1 GiB per worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HUB_ID = "Qwen/Qwen3-0.6B"


def default_model() -> str:
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        candidate = base.parent / "shared" / "data" / "models" / "Qwen3-0.6B"
        if (candidate / "tokenizer.json").exists():
            return str(candidate)
    return HUB_ID


def wait_for_model(port: int, name: str, procs: list[subprocess.Popen[bytes]], stopping: dict[str, bool],
                   timeout: float = 60.0, components: frozenset[str] = frozenset()) -> bool:
    """Until ``name`` is served and (by ``/health``) an instance of each of ``components`` is up."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/v1/models"
    while time.monotonic() < deadline and not stopping["now"]:
        if any(p.poll() is not None for p in procs):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                served = any(m["id"] == name for m in json.load(resp)["data"])
            if served and components:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                    up = {i["component"] for i in json.load(resp)["instances"]}
                served = components <= up
            if served:
                return True
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    return False


def tiny_model_dir() -> str:
    """The tiny random Qwen3 under ``.cache/`` of the checkout, written on first use."""
    out = Path.cwd() / ".cache" / "tiny-qwen3"
    if not (out / "model.safetensors").exists():
        print(f"dynamo: writing the tiny random Qwen3 to {out} (first run only)", flush=True)
        subprocess.run([sys.executable, "-m", "dynamo.vllm.tiny_model", str(out)], check=True,
                       stdout=subprocess.DEVNULL)
    return str(out)


def vllm_workers(model: str, name: str, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    cores = os.cpu_count() or 1
    procs = []
    for i in range(2):
        wenv = dict(env)
        wenv.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if cores >= 2 and "VLLM_CPU_OMP_THREADS_BIND" not in env:
            # one core each; by default every engine would bind the same first core
            wenv["VLLM_CPU_OMP_THREADS_BIND"] = str(i % cores)
        procs.append(subprocess.Popen([sys.executable, "-m", "dynamo.vllm", "--model", model,
                                       "--served-model-name", name, "--enforce-eager", "--max-model-len", "4096"],
                                      env=wenv))
    return procs


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    engine = args[args.index("--engine") + 1] if "--engine" in args[:-1] else "mocker"
    if engine not in ("mocker", "vllm"):
        print(f"dynamo: --engine must be mocker or vllm, not {engine!r}", file=sys.stderr)
        return 2
    disagg = "--disagg" in args
    if disagg and engine != "mocker":
        print("dynamo: --disagg runs mocker workers (see the README for a disaggregated vLLM pair)", file=sys.stderr)
        return 2
    port = int(os.environ.get("DYN_HTTP_PORT", "8000"))
    if engine == "vllm":
        model = os.environ.get("DYN_MODEL_PATH") or tiny_model_dir()
    else:
        model = os.environ.get("DYN_MODEL_PATH") or default_model()
    name = Path(model).name if os.path.isdir(model) else model.split("/")[-1]
    workers = os.environ.get("DYN_MOCKER_NUM_WORKERS", "2") if engine == "mocker" else "2"
    speedup = os.environ.get("DYN_MOCKER_SPEEDUP_RATIO", "10")
    store_dir = tempfile.mkdtemp(prefix="dynamo-local-kv-")
    env = {**os.environ, "DYN_FILE_KV": store_dir, "DYN_STORE_KV": "file", "DYN_REQUEST_PLANE": "tcp",
           "DYN_EVENT_PLANE": "zmq"}
    py = sys.executable
    if engine == "vllm":
        procs = [*vllm_workers(model, name, env),
                 subprocess.Popen([py, "-m", "dynamo.frontend", "--http-port", str(port), "--router-mode", "kv"],
                                  env=env)]
    elif disagg:
        mocker = [py, "-m", "dynamo.mocker", "--model-path", model, "--model-name", name, "--speedup-ratio", speedup]
        procs = [
            subprocess.Popen([*mocker, "--disaggregation-mode", "prefill", "--bootstrap-ports", "0"], env=env),
            subprocess.Popen([*mocker, "--disaggregation-mode", "decode", "--num-workers", workers], env=env),
            subprocess.Popen([py, "-m", "dynamo.frontend", "--http-port", str(port), "--router-mode", "kv"],
                             env=env),
        ]
    else:
        procs = [
            subprocess.Popen([py, "-m", "dynamo.mocker", "--model-path", model, "--model-name", name,
                              "--num-workers", workers, "--speedup-ratio", speedup], env=env),
            subprocess.Popen([py, "-m", "dynamo.frontend", "--http-port", str(port)], env=env),
        ]
    stopping = {"now": False}

    def stop(signum: int, frame: object) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    try:
        needs = frozenset({"prefill", "backend"}) if disagg else frozenset()
        if not wait_for_model(port, name, procs, stopping, timeout=60.0 if engine == "mocker" else 600.0,
                              components=needs):
            if not stopping["now"]:
                print("dynamo: the deployment did not come up; see the log above", file=sys.stderr)
                code = 1
        else:
            base = f"http://localhost:{port}"
            what = f"{workers} mocker workers" if engine == "mocker" else "2 vLLM workers (KV-aware routing)"
            if disagg:
                what = f"1 prefill + {workers} decode mocker workers (disaggregated, KV-aware routing)"
            print(f"\nDynamo-Py is serving {name!r} with {what} at {base}/v1\n")
            print(f"  curl {base}/v1/chat/completions -H 'Content-Type: application/json' \\")
            print(f"    -d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}], "
                  "\"max_tokens\": 32}'\n")
            print("Press Ctrl-C to stop.", flush=True)
            while not stopping["now"]:
                if any(p.poll() is not None for p in procs):
                    # Ctrl-C in a terminal reaches the whole process group: a component may stop a
                    # moment before our own handler has run. That is a requested stop, not a failure.
                    time.sleep(0.5)
                    if not stopping["now"]:
                        print("dynamo: a component exited; stopping", file=sys.stderr)
                        code = 1
                    break
                time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        print("dynamo: stopped", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
