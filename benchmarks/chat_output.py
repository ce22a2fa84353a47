"""CPU per output token of the chat response writer (``frontend/http/writers.py``), with and without
the output parsers: the per-token path the parsers sit on, measured in-process, so it is steady on a
loaded machine where ``serve_bench.py --compare parsers`` (whole deployments) is not.

Each answer is what the mocker writes with ``--reasoning`` (a think block of random vocabulary tokens,
then the answer), one token per step, streamed; reported: microseconds per token (median of 5 runs) and
the ratio to the no-parser writer. ``+logprobs`` adds top-5 logprobs per token.

    python benchmarks/chat_output.py [--answers 200] [--tokens 64]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dynamo.frontend.http.writers import ChatStreamWriter
from dynamo.frontend.tool_call_output import tool_calls_for
from dynamo.llm.postprocessor.logprobs import TokenLogprobs
from dynamo.llm.postprocessor.parsers.reasoning import reasoning_parser_for
from dynamo.llm.postprocessor.stop import StepResult
from dynamo.llm.preprocessor.tokenizer import Tokenizer
from dynamo.llm.protocols.openai import ChatCompletionRequest
from dynamo.mocker.logprobs import token_logprobs

MODEL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "models" / "Qwen3-0.6B"
THINK_START, THINK_END = 151667, 151668
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def answers(tok: Tokenizer, n: int, length: int, seed: int = 0) -> list[list[tuple[int, str]]]:
    """Token ids and their text deltas, as the frontend's detokenizer would hand them to the writer."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [THINK_START] + [rng.randrange(1000, 2000) for _ in range(length // 2 - 2)] + [THINK_END]
        ids += [rng.randrange(1000, 2000) for _ in range(length - len(ids))]
        out.append([(t, tok.decode([t])) for t in ids])
    return out


def run(tok: Tokenizer, data: list[list[tuple[int, str]]], reasoning: str | None, tools: str | None,
        logprobs: bool) -> float:
    """Seconds per token for one pass over every answer."""
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True}
    if tools:
        body["tools"] = [TOOL]
    if logprobs:
        body.update(logprobs=True, top_logprobs=5)
    req = ChatCompletionRequest.model_validate(body)
    engine = SimpleNamespace(model="m", tokenizer=tok,
                             reasoning_parser=lambda r: reasoning_parser_for(reasoning, r.template_kwargs),
                             tool_calls=lambda r: tool_calls_for(tools, r))
    steps = []
    for answer in data:
        seq = []
        for pos, (tid, text) in enumerate(answer):
            res = StepResult(text, 1, finish_reason="length" if pos == len(answer) - 1 else None)
            if logprobs:
                chosen, top = token_logprobs([tid], pos, 5)
                res.logprobs = TokenLogprobs([tid], chosen, top)
            seq.append(res)
        steps.append(seq)
    tokens = sum(len(a) for a in data)
    t0 = time.perf_counter()
    for seq in steps:
        writer = ChatStreamWriter(engine, req, "rid", 1, 0)
        for res in seq:
            writer.step(0, res)
        writer.end({})
    return (time.perf_counter() - t0) / tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--answers", type=int, default=200)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--model-path", type=Path, default=MODEL_DIR)
    args = p.parse_args()
    tok = Tokenizer.from_dir(args.model_path)
    data = answers(tok, args.answers, args.tokens)
    cases = [("no parsers", None, None, False), ("qwen3 reasoning", "qwen3", None, False),
             ("qwen3 + hermes (tools offered)", "qwen3", "hermes", False),
             ("no parsers +logprobs", None, None, True)]
    base = None
    print(f"{'writer':32} {'us/token':>9} {'ratio':>6}")
    for name, reasoning, tools, lp in cases:
        per_tok = statistics.median(run(tok, data, reasoning, tools, lp) for _ in range(5)) * 1e6
        base = base or per_tok
        print(f"{name:32} {per_tok:9.2f} {per_tok / base:6.2f}")


if __name__ == "__main__":
    main()
