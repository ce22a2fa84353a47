"""KV router flags (seed 003, reference §2.10), shared by the frontend, the standalone router and
dynamo-run. Flag names follow the seed (``--kv-overlap-score-weight``, ``--no-kv-events``, ...) with the
newer ``--router-*`` spellings accepted as aliases."""

from __future__ import annotations

from typing import Any

from dynamo.common.configuration.arg_group import ArgGroup
from dynamo.common.configuration.utils import (
    ArgumentContainer,
    add_argument,
    add_negatable_bool_argument,
    nullable_float,
)


class KvRouterArgGroup(ArgGroup):
    def __init__(self, block_size_flag: str = "--kv-cache-block-size", block_size_default: int | None = None) -> None:
        self.block_size_flag = block_size_flag
        self.block_size_default = block_size_default

    def add_arguments(self, parser: ArgumentContainer) -> None:
        g = parser.add_argument_group("KV router (--router-mode kv)") if hasattr(parser, "add_argument_group") \
            else parser
        add_argument(g, self.block_size_flag, "DYN_KV_CACHE_BLOCK_SIZE", self.block_size_default,
                     "KV block size the router hashes with (default: the workers' model card).",
                     arg_type=int, dest="kv_cache_block_size")
        add_argument(g, "--kv-overlap-score-weight", "DYN_ROUTER_KV_OVERLAP_SCORE_WEIGHT", 1.0,
                     "Weight of prefill cost against decode load (0 = pure load balancing).", arg_type=float,
                     aliases=["--router-kv-overlap-score-weight"])
        add_argument(g, "--router-temperature", "DYN_ROUTER_TEMPERATURE", 0.0,
                     "0 picks the cheapest worker; > 0 samples by softmax over costs.", arg_type=float)
        add_negatable_bool_argument(g, "--kv-events", "DYN_ROUTER_USE_KV_EVENTS", True,
                                    "Index workers' KV events (--no-kv-events: approximate mode).",
                                    aliases=["--router-kv-events"], dest="use_kv_events")
        add_argument(g, "--router-ttl", "DYN_ROUTER_TTL_SECS", 120.0, "Approximate mode: block lifetime (s).",
                     arg_type=float, aliases=["--router-ttl-secs"], dest="router_ttl_secs")
        add_argument(g, "--router-max-tree-size", "DYN_ROUTER_MAX_TREE_SIZE", 1 << 20,
                     "Approximate mode: blocks kept before pruning.", arg_type=int)
        add_argument(g, "--router-prune-target-ratio", "DYN_ROUTER_PRUNE_TARGET_RATIO", 0.8,
                     "Approximate mode: prune down to this fraction of the max size.", arg_type=float)
        add_negatable_bool_argument(g, "--track-active-blocks", "DYN_ROUTER_TRACK_ACTIVE_BLOCKS", True,
                                    "Count in-flight requests' blocks as decode load.",
                                    aliases=["--router-track-active-blocks"], dest="router_track_active_blocks")
        add_negatable_bool_argument(g, "--track-output-blocks", "DYN_ROUTER_TRACK_OUTPUT_BLOCKS", False,
                                    "Also count generated tokens' blocks (needs active-block tracking).",
                                    aliases=["--router-track-output-blocks"], dest="router_track_output_blocks")
        add_negatable_bool_argument(g, "--assume-kv-reuse", "DYN_ROUTER_ASSUME_KV_REUSE", True,
                                    "Assume shared prefixes are stored once on a worker.",
                                    aliases=["--router-assume-kv-reuse"], dest="router_assume_kv_reuse")
        add_argument(g, "--router-event-threads", "DYN_ROUTER_EVENT_THREADS", 4, "KV event workers (>= 1).",
                     arg_type=int)
        add_argument(g, "--router-queue-threshold", "DYN_ROUTER_QUEUE_THRESHOLD", 4.0,
                     "Park requests while every worker's prefill load exceeds this x max_num_batched_tokens "
                     "('None' disables).", arg_type=nullable_float)
        add_argument(g, "--router-queue-policy", "DYN_ROUTER_QUEUE_POLICY", "fcfs", "Order of parked requests.",
                     choices=["fcfs", "lcfs", "wspt"])
        add_argument(g, "--router-queue-max-size", "DYN_ROUTER_QUEUE_MAX_SIZE", 1024,
                     "Parked requests beyond this many are refused with 503.", arg_type=int)
        add_argument(g, "--router-queue-timeout", "DYN_ROUTER_QUEUE_TIMEOUT_SECS", 60.0,
                     "Seconds a parked request may wait for capacity before it is refused with 503.",
                     arg_type=float, aliases=["--router-queue-timeout-secs"], dest="router_queue_timeout_secs")
        add_negatable_bool_argument(g, "--router-replica-sync", "DYN_ROUTER_REPLICA_SYNC", False,
                                    "Share active-sequence state between router replicas.")


def kv_router_config(ns: Any) -> Any:
    """Build a validated KvRouterConfig from parsed flags."""
    from dynamo.kv_router.config import KvRouterConfig

    return KvRouterConfig(
        overlap_score_weight=ns.kv_overlap_score_weight,
        router_temperature=ns.router_temperature,
        use_kv_events=ns.use_kv_events,
        router_replica_sync=ns.router_replica_sync,
        router_track_active_blocks=ns.router_track_active_blocks,
        router_track_output_blocks=ns.router_track_output_blocks,
        router_assume_kv_reuse=ns.router_assume_kv_reuse,
        router_ttl_secs=ns.router_ttl_secs,
        router_max_tree_size=ns.router_max_tree_size,
        router_prune_target_ratio=ns.router_prune_target_ratio,
        router_queue_threshold=ns.router_queue_threshold,
        router_event_threads=ns.router_event_threads,
        router_queue_policy=ns.router_queue_policy,
        router_queue_max_size=ns.router_queue_max_size,
        router_queue_timeout_secs=ns.router_queue_timeout_secs,
    ).validate()
