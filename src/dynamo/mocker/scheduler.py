"""vLLM-style continuous-batching scheduler of the mocker (reference §3.2), one dp rank.

:meth:`Scheduler.step` runs one *pass*:

1. ``budget = max_num_batched_tokens``. Running requests, in admission order, each get
   ``min(len(sequence) − computed, budget)`` tokens: a chunk of their prompt (chunked prefill) or the one
   token sampled last pass (decode). Without chunked prefill a prompt that does not fit the remaining
   budget blocks the rest of the pass.
2. Unless something was preempted this pass, waiting requests are admitted in order (preempted ones sit
   at the front) while ``len(running) < max_num_seqs`` and budget remains. A request's cached prefix
   (longest run of its full blocks in the KV cache, capped so at least one token is computed) counts as
   computed at admission. A request waits if its uncached blocks do not fit the free KV space (minus the
   watermark); one that could never fit is rejected.
3. KV blocks are allocated per scheduled chunk. When the cache is full the newest (``lifo``) or oldest
   (``fifo``) running request is preempted: its blocks are released, its progress reset, it goes to the
   front of the waiting queue and any budget it took this pass is refunded.
4. ``prefill_ms`` from the perf model over the requests that computed prompt tokens, then every running
   request whose known tokens are all computed emits one token (``decode_ms`` for those of them that were
   already decoding: a prompt completed this pass yields its first token for free). The pass
   lasts ``prefill_ms/speedup + decode_ms/(speedup × decode_speedup)``.

A request finishes (``finish_reason="length"``) right after emitting its ``max_tokens``-th token; its
blocks are released tail first (depth-aware LRU). Output token ids are uniform in ``[1000, 2000)`` from a
seeded RNG, or follow the reasoning config. Pure logic: no asyncio, no I/O, deterministic under a seed.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from dynamo.kv_router.protocols import RouterEvent
from dynamo.mocker.args import MockEngineArgs, ReasoningConfig
from dynamo.mocker.kv_manager import EventSink, KvManager, KvSequence
from dynamo.mocker.perf_model import PerfModel, PolynomialPerfModel, kv_transfer_delay_ms, load_perf_model
from dynamo.runtime.errors import InvalidArgument

TOKEN_ID_LOW = 1000
TOKEN_ID_HIGH = 2000

_WAITING = 0
_RUNNING = 1


class _Request:
    __slots__ = (
        "computed",
        "generated",
        "max_tokens",
        "num_thinking",
        "pass_id",
        "pass_prompt",
        "pass_prompt_before",
        "pass_tokens",
        "prompt_len",
        "request_id",
        "seq",
        "state",
        "tokens",
        "transferred",
    )

    def __init__(self, request_id: str, seq: KvSequence, max_tokens: int, num_thinking: int,
                 transferred: bool = False) -> None:
        self.request_id = request_id
        self.seq = seq
        #: the sequence's token list (prompt + sampled tokens), aliased to save a lookup per pass
        self.tokens = seq.tokens
        self.prompt_len = len(seq.tokens)
        # what the request was given in pass ``pass_id`` (refunded if it is preempted in that pass)
        self.pass_id = -1
        self.pass_tokens = 0
        self.pass_prompt = 0
        self.pass_prompt_before = 0
        self.max_tokens = max_tokens
        self.num_thinking = num_thinking
        self.generated = 0
        self.computed = 0
        self.state = _WAITING
        #: the prompt's KV came from a prefill worker: it is present at admission, costing no compute
        self.transferred = transferred


@dataclass(slots=True)
class PassResult:
    """What one scheduling pass did. Lists are in scheduling order; ids are request ids."""

    #: wall-clock length of the pass to sleep, already divided by the speedup ratios
    duration_ms: float = 0.0
    #: unscaled simulated prefill / decode time of the pass
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    #: (request_id, token_id) for every token emitted this pass — one per decoding request
    emitted: list[tuple[str, int]] = field(default_factory=list)
    #: requests that emitted their last token this pass (finish_reason "length"); blocks already freed
    finished: list[str] = field(default_factory=list)
    #: (request_id, cached_tokens) for requests admitted from the waiting queue this pass
    admitted: list[tuple[str, int]] = field(default_factory=list)
    #: prompt tokens computed this pass, per request that scheduled any
    prefill_tokens: dict[str, int] = field(default_factory=dict)
    #: requests preempted this pass (back at the front of the waiting queue)
    preempted: list[str] = field(default_factory=list)
    #: requests dropped because their sequence can never fit the KV cache (finish with an error)
    rejected: list[str] = field(default_factory=list)
    #: prefill workers only: KV handoff delay (ms, unscaled) for each request finished this pass
    handoff_delay_ms: dict[str, float] = field(default_factory=dict)
    #: tokens taken from the budget this pass (prefill chunks + decode tokens)
    num_scheduled_tokens: int = 0
    num_running: int = 0
    num_waiting: int = 0
    #: KV blocks held by running requests after the pass (``kv_used_blocks``)
    active_blocks: int = 0

    @property
    def simulated_ms(self) -> float:
        """Unscaled simulated time of the pass."""
        return self.prefill_ms + self.decode_ms


class Scheduler:
    """One dp rank of the simulated engine: waiting/running queues over a :class:`KvManager`."""

    def __init__(
        self,
        args: MockEngineArgs,
        *,
        dp_rank: int = 0,
        worker_id: int = 0,
        event_sink: EventSink | None = None,
        perf_model: PerfModel | None = None,
        seed: int | None = None,
    ) -> None:
        args.validate()
        self.args = args
        self.dp_rank = dp_rank
        self.kv = KvManager(
            args.num_gpu_blocks,
            args.block_size,
            enable_prefix_caching=args.enable_prefix_caching,
            dp_rank=dp_rank,
            worker_id=worker_id,
            event_sink=event_sink,
        )
        self.perf: PerfModel = perf_model if perf_model is not None else load_perf_model(args.planner_profile_data)
        if seed is None and args.seed is not None:
            # Distinct but reproducible streams per dp rank.
            seed = args.seed * 1_000_003 + dp_rank
        self._rng = random.Random(seed)
        self._reasoning: ReasoningConfig | None = args.reasoning
        self._requests: dict[str, _Request] = {}
        self._running: list[_Request] = []
        self._waiting: deque[_Request] = deque()
        self._watermark_blocks = int(args.watermark * args.num_gpu_blocks)
        self.num_preemptions = 0
        self._pass_id = 0

    # ------------------------------------------------------------------------------------- requests

    def add_request(self, request_id: str, token_ids: Sequence[int], max_tokens: int, *,
                    transferred: bool = False,
                    block_hashes: tuple[Sequence[int], Sequence[int]] | None = None) -> None:
        """Queue a request at the back of the waiting queue.

        ``transferred``: the decode leg of a disaggregated request whose prompt KV a prefill worker
        computed; at admission its prompt blocks are allocated (and announced in KV events) with no
        prefill time. If it is preempted the transferred KV is gone and it recomputes its prompt here.

        ``block_hashes``: ``(local, sequence)`` hashes of the prompt's leading full blocks, when the
        caller already has them (trace replay memoises them per shared prefix, so the mocker does not
        hash the same system prompt thousands of times).

        Raises :class:`InvalidArgument` for a duplicate id, an empty prompt, ``max_tokens < 1``, or a
        prompt that can never fit the KV cache / ``max_model_len``.
        """
        if request_id in self._requests:
            raise InvalidArgument(f"request {request_id!r} is already scheduled")
        if not token_ids:
            raise InvalidArgument("prompt must contain at least one token")
        if max_tokens < 1:
            raise InvalidArgument(f"max_tokens must be >= 1, got {max_tokens}")
        args = self.args
        bs = args.block_size
        prompt_blocks = -(-len(token_ids) // bs)
        if prompt_blocks > args.num_gpu_blocks:
            raise InvalidArgument(
                f"prompt of {len(token_ids)} tokens needs {prompt_blocks} KV blocks, "
                f"more than the {args.num_gpu_blocks} this worker has"
            )
        if not args.enable_chunked_prefill and len(token_ids) > args.max_num_batched_tokens:
            raise InvalidArgument(
                f"prompt of {len(token_ids)} tokens exceeds max_num_batched_tokens "
                f"{args.max_num_batched_tokens} and chunked prefill is disabled"
            )
        if args.max_model_len is not None:
            room = args.max_model_len - len(token_ids)
            if room < 1:
                raise InvalidArgument(
                    f"prompt of {len(token_ids)} tokens leaves no room under max_model_len {args.max_model_len}"
                )
            max_tokens = min(max_tokens, room)
        reasoning = self._reasoning
        num_thinking = reasoning.num_thinking_tokens(max_tokens) if reasoning is not None else 0
        seq = self.kv.new_sequence(token_ids)
        if block_hashes is not None:
            local, chained = block_hashes
            seq.local_hashes = list(local[: len(token_ids) // bs])
            seq.seq_hashes = list(chained[: len(seq.local_hashes)])
        req = _Request(request_id, seq, max_tokens, num_thinking, transferred)
        self._requests[request_id] = req
        self._waiting.append(req)

    def cancel(self, request_id: str) -> bool:
        """Drop a request and free its blocks at once; False if it is unknown or already finished."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return False
        if req.state == _RUNNING:
            self._running.remove(req)
            self.kv.free(req.seq)
        else:
            self._waiting.remove(req)
        return True

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._requests

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def is_idle(self) -> bool:
        """Nothing to do until a request arrives."""
        return not self._requests

    def running_ids(self) -> list[str]:
        return [r.request_id for r in self._running]

    def waiting_ids(self) -> list[str]:
        return [r.request_id for r in self._waiting]

    def drain_kv_events(self) -> list[RouterEvent]:
        """KV events emitted since the last drain (when no event sink was given)."""
        return self.kv.drain_events()

    # ----------------------------------------------------------------------------------------- pass

    def step(self) -> PassResult:
        """Run one scheduling pass and return what happened (see the module docstring)."""
        args = self.args
        kv = self.kv
        bs = args.block_size
        chunked = args.enable_chunked_prefill
        running = self._running
        waiting = self._waiting
        self._pass_id = pass_id = self._pass_id + 1
        result = PassResult()
        budget = args.max_num_batched_tokens
        batch = [0, 0, 0]  # count, total isl, total prefix of the prefill batch
        ready: list[_Request] = []  # scheduled requests whose known tokens are all computed
        prefilled: list[_Request] = []  # scheduled requests that computed prompt tokens
        preempted_any = False

        # 1. running requests first
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            computed = req.computed
            remaining = len(req.tokens) - computed
            if remaining == 1 and computed >= req.prompt_len:
                # Decode fast path: one token, usually inside the already allocated tail block.
                seq = req.seq
                target = computed + 1
                if (target <= len(seq.blocks) * bs and target // bs <= seq.num_full) or kv.allocate(seq, target):
                    req.computed = target
                    req.pass_id = pass_id
                    req.pass_tokens = 1
                    req.pass_prompt = 0
                    budget -= 1
                    ready.append(req)
                    i += 1
                    continue
            elif remaining <= 0:
                ready.append(req)
                i += 1
                continue
            prompt_remaining = req.prompt_len - computed
            if prompt_remaining > 0 and not chunked and prompt_remaining > budget:
                break
            outcome, budget, preempted = self._schedule(req, computed, remaining, budget, batch, result)
            if preempted:
                preempted_any = True
            if outcome == "current_preempted":
                continue  # the list shrank; ``i`` now points at the next request (or past the end)
            if outcome == "blocked":
                break
            if req.pass_prompt:
                prefilled.append(req)
            if req.computed >= len(req.tokens):
                ready.append(req)
            # Preemptions of requests ahead of us shift our position left.
            i = running.index(req, 0, i + 1) + 1 if preempted and args.preemption_mode == "fifo" else i + 1

        # 2. then waiting requests
        max_seqs = args.max_num_seqs
        capacity = args.num_gpu_blocks
        while not preempted_any and waiting and len(running) < max_seqs and budget > 0:
            req = waiting[0]
            seq = req.seq
            seq_len = len(req.tokens)
            known_blocks = -(-seq_len // bs)
            if known_blocks > capacity:
                # Only reachable by a preempted request whose output outgrew the cache.
                waiting.popleft()
                del self._requests[req.request_id]
                result.rejected.append(req.request_id)
                continue
            cached_blocks, active_cached = kv.cached_prefix_blocks(seq, (seq_len - 1) // bs)
            if known_blocks - active_cached > capacity - self._watermark_blocks - kv.num_active_blocks:
                break
            cached = hit = cached_blocks * bs
            if req.transferred:
                cached = req.prompt_len
            remaining = seq_len - cached
            prompt_remaining = req.prompt_len - cached
            if prompt_remaining > 0 and not chunked and prompt_remaining > budget:
                break
            # The candidate stays queued while it is scheduled: it is not a preemption victim, and any
            # request preempted for it lands in front of it.
            outcome, budget, preempted = self._schedule(req, cached, remaining, budget, batch, result)
            if preempted:
                preempted_any = True
            if outcome != "scheduled":
                break
            if waiting[0] is req:
                waiting.popleft()
            else:
                waiting.remove(req)
            req.state = _RUNNING
            running.append(req)
            result.admitted.append((req.request_id, hit))
            if req.pass_prompt:
                prefilled.append(req)
            if req.computed >= seq_len:
                ready.append(req)

        if preempted_any:
            # Requests scheduled earlier in the pass may have been preempted since.
            ready = [r for r in ready if r.state == _RUNNING]
            prefilled = [r for r in prefilled if r.state == _RUNNING]

        # 3. timing and token emission
        if batch[0]:
            n = batch[0]
            result.prefill_ms = self.perf.predict_prefill_ms(n, batch[1] // n, batch[2] // n)
        if ready:
            if args.worker_type != "prefill":
                # A request whose prompt finished computing this pass samples its first token from that
                # prefill: only requests that were already decoding cost a decode step (as the
                # reference does: a pass that only completes prefills lasts exactly its prefill time).
                total_len = 0
                decoding = 0
                for r in ready:
                    if r.pass_id != pass_id or r.pass_prompt == 0:
                        decoding += 1
                        total_len += len(r.tokens)
                if decoding:
                    result.decode_ms = self.perf.predict_decode_ms(
                        decoding, kv.num_active_blocks * bs, total_len // decoding, args.num_gpu_blocks * bs
                    )
            self._emit_tokens(ready, result)
        result.duration_ms = (
            result.prefill_ms / args.speedup_ratio
            + result.decode_ms / (args.speedup_ratio * args.decode_speedup_ratio)
        )
        result.num_scheduled_tokens = args.max_num_batched_tokens - budget
        if prefilled:
            result.prefill_tokens = {r.request_id: r.pass_prompt for r in prefilled}
        result.num_running = len(self._running)
        result.num_waiting = len(waiting)
        result.active_blocks = kv.num_active_blocks
        return result

    def step_decode_span(self, max_ms: float, max_passes: int = 1 << 30,
                         blocks_out: list[int] | None = None, finished_out: list[str] | None = None) -> list[float]:
        """Run consecutive pure-decode passes at once; returns their durations (empty if none ran).

        Only while every running request is decoding, nothing waits and no reasoning markers are due.
        The pass in which some request emits its last token ends the span: with ``finished_out`` it is
        included (those requests are freed as :meth:`step` frees them and their ids appended there),
        otherwise it is left to :meth:`step`. Passes in which a request's tail block fills or a new block
        is needed allocate exactly as :meth:`step` would (same order, same KV events), as long as the
        free slots cannot run out (a pass that could preempt goes through :meth:`step`). A pass is
        included while the span's elapsed time before it is below ``max_ms`` (the caller's next outside
        event). Tokens, RNG draws, KV state and events are exactly those of the same passes run one by
        one. ``blocks_out`` receives the active block count after each pass. Trace replay uses this to
        skip the per-pass bookkeeping of long decode stretches.
        """
        args = self.args
        running = self._running
        n = len(running)
        if (not n or self._waiting or self._reasoning is not None or args.worker_type != "aggregated"
                or n > args.max_num_batched_tokens or max_ms <= 0.0):
            return []
        bs = args.block_size
        kv = self.kv
        active = kv.active
        capacity = args.num_gpu_blocks
        total_kv = capacity * bs
        scale = args.speedup_ratio * args.decode_speedup_ratio
        predict = self.perf.predict_decode_ms
        polynomial = type(self.perf) is PolynomialPerfModel
        rand = self._rng.random
        span = TOKEN_ID_HIGH - TOKEN_ID_LOW
        # Per request, span pass j computes token ``base[i] + j + 1``; ``op_at[i]`` is the first pass at
        # which that needs a block operation: its tail block fills (promotion) or a new block.
        base: list[int] = []
        op_at: list[int] = []
        k = 1 << 62  # passes before some request would emit its last token
        total_len = 0
        for req in running:
            c = req.computed
            if len(req.tokens) - c != 1 or c < req.prompt_len:
                return []  # not decoding: step() schedules it
            base.append(c)
            seq = req.seq
            cap = len(seq.blocks) * bs + 1
            fill = (seq.num_full + 1) * bs
            op_at.append((cap if cap < fill else fill) - c - 1)
            left = req.max_tokens - req.generated - 1
            if left < k:
                k = left
            total_len += len(req.tokens)
        if finished_out is not None:
            k += 1  # the finishing pass too
        if max_passes < k:
            k = max_passes
        # Tokens are drawn pass-major (every request once per pass, as step() draws them) into
        # ``draws``; a request's own list is brought up to date only when a block of it is hashed.
        draws: list[int] = []
        synced = [0] * n
        durations: list[float] = []
        elapsed = 0.0
        j = 0
        while j < k and elapsed < max_ms:
            nxt = min(op_at)
            if nxt > j:
                # Passes that touch no block.
                end = nxt if nxt < k else k
                start = j
                if polynomial:
                    # The polynomial model reads only the active KV, which none of these passes changes.
                    d = predict(n, len(active) * bs, total_len // n, total_kv) / scale
                    while j < end and elapsed < max_ms:
                        durations.append(d)
                        elapsed += d
                        j += 1
                    total_len += n * (j - start)
                else:
                    while j < end and elapsed < max_ms:
                        d = predict(n, len(active) * bs, total_len // n, total_kv) / scale
                        total_len += n
                        durations.append(d)
                        elapsed += d
                        j += 1
                draws += [TOKEN_ID_LOW + int(rand() * span) for _ in range(n * (j - start))]
                if blocks_out is not None:
                    blocks_out.extend([len(active)] * (j - start))
                continue
            # Pass j fills some tail blocks (promoted to their hash: ``stored`` events) or needs new
            # ones (possibly evicting cached blocks), in running order as step() allocates. Stop if the
            # slots could run out: step() must then pick the preemption victim.
            ops = [i for i, o in enumerate(op_at) if o == j]
            grows = 0
            for i in ops:
                if base[i] + j + 1 > len(running[i].seq.blocks) * bs:
                    grows += 1
            if len(active) + grows > capacity:
                break
            for i in ops:
                req = running[i]
                if synced[i] < j:
                    req.tokens.extend(draws[synced[i] * n + i : j * n : n])
                    synced[i] = j
                seq = req.seq
                target = base[i] + j + 1
                kv.allocate(seq, target)
                cap = len(seq.blocks) * bs + 1
                fill = (seq.num_full + 1) * bs
                op_at[i] = (cap if cap < fill else fill) - base[i] - 1
            d = predict(n, len(active) * bs, total_len // n, total_kv) / scale
            total_len += n
            durations.append(d)
            elapsed += d
            j += 1
            draws += [TOKEN_ID_LOW + int(rand() * span) for _ in range(n)]
            if blocks_out is not None:
                blocks_out.append(len(active))
        if j:
            done: list[_Request] = []
            for i, req in enumerate(running):
                req.tokens.extend(draws[synced[i] * n + i :: n])
                req.computed = base[i] + j
                req.generated += j
                if req.generated >= req.max_tokens:
                    done.append(req)
            self._pass_id += j
            if done and finished_out is not None:
                # As _emit_tokens finishes them: freed in running order (the last sampled token is
                # never computed), then dropped from the running list.
                requests = self._requests
                for req in done:
                    kv.free(req.seq)
                    del requests[req.request_id]
                    finished_out.append(req.request_id)
                self._running = [r for r in running if r.generated < r.max_tokens]
                if blocks_out is not None:
                    blocks_out[-1] = len(active)  # as step() reports it: after the frees
        return durations

    def _schedule(
        self,
        req: _Request,
        computed_before: int,
        remaining: int,
        budget: int,
        batch: list[int],
        result: PassResult,
    ) -> tuple[str, int, bool]:
        """Give ``req`` up to ``budget`` tokens, preempting on KV exhaustion.

        Returns ``(outcome, budget, preempted_any)`` with outcome ``scheduled``, ``blocked`` or
        ``current_preempted``.
        """
        desired = remaining if remaining < budget else budget
        if desired <= 0 and remaining > 0:
            return "blocked", budget, False
        target = computed_before + desired
        kv = self.kv
        preempted_any = False
        while not kv.allocate(req.seq, target):
            victim = self._pick_victim()
            if victim is None:
                return "blocked", budget, preempted_any
            budget = self._preempt(victim, budget, batch, result)
            preempted_any = True
            if victim is req:
                return "current_preempted", budget, True
        req.computed = target
        prompt_len = req.prompt_len
        prompt_before = computed_before if computed_before < prompt_len else prompt_len
        prompt_after = target if target < prompt_len else prompt_len
        prompt_tokens = prompt_after - prompt_before
        req.pass_id = self._pass_id
        req.pass_tokens = desired
        req.pass_prompt = prompt_tokens
        req.pass_prompt_before = prompt_before
        if prompt_tokens > 0:
            batch[0] += 1
            batch[1] += prompt_after
            batch[2] += prompt_before
        return "scheduled", budget - desired, preempted_any

    def _pick_victim(self) -> _Request | None:
        running = self._running
        if not running:
            return None
        return running[-1] if self.args.preemption_mode == "lifo" else running[0]

    def _preempt(self, victim: _Request, budget: int, batch: list[int], result: PassResult) -> int:
        self._running.remove(victim)
        self.kv.destroy(victim.seq)
        victim.computed = 0
        victim.transferred = False
        victim.state = _WAITING
        self._waiting.appendleft(victim)
        self.num_preemptions += 1
        result.preempted.append(victim.request_id)
        if victim.pass_id == self._pass_id:
            # Refund what the victim was given earlier in this pass.
            victim.pass_id = -1
            budget += victim.pass_tokens
            if victim.pass_prompt > 0:
                batch[0] -= 1
                batch[1] -= victim.pass_prompt_before + victim.pass_prompt
                batch[2] -= victim.pass_prompt_before
        return budget

    def _emit_tokens(self, ready: list[_Request], result: PassResult) -> None:
        emitted = result.emitted
        rand = self._rng.random
        span = TOKEN_ID_HIGH - TOKEN_ID_LOW
        reasoning = self._reasoning
        finished: list[_Request] = []
        append = emitted.append
        if reasoning is None:
            for req in ready:
                token = TOKEN_ID_LOW + int(rand() * span)
                req.tokens.append(token)
                generated = req.generated + 1
                req.generated = generated
                append((req.request_id, token))
                if generated >= req.max_tokens:
                    finished.append(req)
        else:
            start_id = reasoning.start_thinking_token_id
            end_id = reasoning.end_thinking_token_id
            for req in ready:
                idx = req.generated
                if idx == 0 and req.num_thinking:
                    token = start_id
                elif idx == req.num_thinking - 1 and idx > 0:
                    token = end_id
                else:
                    token = TOKEN_ID_LOW + int(rand() * span)
                req.tokens.append(token)
                req.generated = idx + 1
                append((req.request_id, token))
                if idx + 1 >= req.max_tokens:
                    finished.append(req)
        if finished:
            kv = self.kv
            requests = self._requests
            done = set()
            args = self.args
            for req in finished:
                # The last sampled token is never computed: release what was allocated before it.
                kv.free(req.seq)
                del requests[req.request_id]
                done.add(id(req))
                result.finished.append(req.request_id)
                if args.worker_type == "prefill":
                    delay = kv_transfer_delay_ms(req.prompt_len, args.kv_bytes_per_token, args.kv_transfer_bandwidth)
                    if delay is not None:
                        result.handoff_delay_ms[req.request_id] = delay
            self._running = [r for r in self._running if id(r) not in done]
