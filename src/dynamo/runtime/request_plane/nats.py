"""NATS request plane (``--request-plane nats``): the TCP plane's frames, carried through a NATS server.

Each worker process subscribes to one subject, ``dynamo.rp.{instance_id:x}`` (its registered
transport ``{"nats": subject}``); each client process to one inbox. A request is a NATS request to
the worker's subject whose reply is the admission answer (``ack`` or ``err``; NATS answers "no
responders" at once when the worker is gone, which becomes ``CannotConnect``). The ``req`` frame
names the client's inbox (``reply``), and the stream's ``data``/``end``/``err`` frames are published
there, length-prefixed as on TCP, as many in one message as were queued. ``stop``/``kill`` are published to the worker's subject.

Liveness, the job the connection does for TCP: while a client has streams open to a worker it pings
the worker's subject every ``DYN_TCP_HEARTBEAT_SECS``; no responders (the worker's process is gone,
the NATS server dropped its subscription), no answer within ``DYN_TCP_HEARTBEAT_TIMEOUT_SECS``, or a
reconnect of the client's NATS connection (frames may have been lost) fail those streams with
``Disconnected`` so they migrate. The worker, in turn, kills the streams of a client whose pings
stopped. Frames are limited by the NATS server's ``max_payload`` (1 MiB by default): a larger item
fails its stream with ``ResourceExhausted``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NatsConnection
from nats.aio.msg import Msg

from dynamo.runtime import errors
from dynamo.runtime.component_metrics import ComponentMetrics
from dynamo.runtime.request_plane.codec import (
    ACK,
    ERR,
    KILL,
    PING,
    PONG,
    REQ,
    STOP,
    Frame,
    encode_body,
    encode_frame,
)
from dynamo.runtime.request_plane.codec import (
    HEADER as _LEN,
)
from dynamo.runtime.request_plane.heartbeat import HeartbeatSettings
from dynamo.runtime.request_plane.serving import EndpointEntry, Handler, Peer, ServerCore
from dynamo.runtime.request_plane.settings import env_float, env_int
from dynamo.runtime.request_plane.stream import ResponseStream

logger = logging.getLogger(__name__)

SUBJECT_PREFIX = "dynamo.rp"
# A worker's outbox to one client: above HIGH queued frames the handler waits until LOW.
OUTBOX_HIGH, OUTBOX_LOW = 4096, 1024
# Messages a subscription may hold before the NATS client drops them (a dropped frame ends in a
# Disconnected stream via the heartbeat, never in silence).
PENDING_MSGS_LIMIT = 4_000_000
PENDING_BYTES_LIMIT = 1 << 30

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Frame).decode
_generic_decode = msgspec.msgpack.Decoder().decode


def subject_for(instance_id: int) -> str:
    return f"{SUBJECT_PREFIX}.{instance_id:x}"


# ----------------------------------------------------------------------------------------------
# server


class _ClientPeer(Peer):
    """One client process (its inbox) as seen by a worker: frames to it leave in order via one writer."""

    def __init__(self, nc: NatsConnection, inbox: str) -> None:
        super().__init__()
        self.nc = nc
        self.inbox = inbox
        self.last_seen = time.monotonic()
        self._out: collections.deque[bytes] = collections.deque()
        self._kick = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(self._write())

    def send(self, frame: Frame) -> None:
        if self.closed:
            return
        payload = encode_frame(frame)
        if len(payload) > self.nc.max_payload:
            payload = encode_frame(Frame(ERR, frame.sid, error=errors.ResourceExhausted(
                f"response frame of {len(payload)} bytes exceeds the NATS server's max_payload "
                f"({self.nc.max_payload})").to_wire()))
            entry = self.tasks.get(frame.sid)
            if entry is not None:
                entry[0].cancel()
        self._out.append(payload)
        if len(self._out) > OUTBOX_HIGH:
            self.paused = True
        self._kick.set()

    async def _write(self) -> None:
        out = self._out
        limit = self.nc.max_payload
        while True:
            await self._kick.wait()
            self._kick.clear()
            while out:
                # Everything queued for this client leaves as one message (up to max_payload): under
                # load one NATS message carries many frames, as one TCP read does.
                batch = [out.popleft()]
                size = len(batch[0])
                while out and size + len(out[0]) <= limit:
                    size += len(out[0])
                    batch.append(out.popleft())
                try:
                    await self.nc.publish(self.inbox, batch[0] if len(batch) == 1 else b"".join(batch))
                except nats.errors.Error as exc:
                    logger.warning("request plane (nats): cannot publish to %s: %s", self.inbox, exc)
                if self.paused and len(out) < OUTBOX_LOW:
                    self.paused = False
                    self.wake()
            if self.paused:
                self.paused = False
                self.wake()

    def close(self) -> None:
        self.abort_all()
        self._writer.cancel()


class NatsServer:
    """Serves every endpoint instance of this process on one NATS subject."""

    kind = "nats"

    def __init__(self, nc: NatsConnection, instance_id: int, metrics: ComponentMetrics | None = None) -> None:
        self.nc = nc
        self.subject = subject_for(instance_id)
        self.core = ServerCore(env_int("DYN_TCP_WORKER_POOL_SIZE", 1500),
                               env_int("DYN_TCP_WORK_QUEUE_SIZE", 6000), metrics)
        self.endpoints = self.core.endpoints
        self.heartbeat = HeartbeatSettings.from_env()
        self.peers: dict[str, _ClientPeer] = {}
        self._sub: Any = None
        self._sweeper: asyncio.Task[None] | None = None
        self.malformed = 0

    @property
    def address(self) -> str:
        return self.subject

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.subject, cb=self._on_msg, pending_msgs_limit=PENDING_MSGS_LIMIT,
                                            pending_bytes_limit=PENDING_BYTES_LIMIT)
        await self.nc.flush()
        if self.heartbeat.enabled:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for peer in list(self.peers.values()):
            peer.close()
        self.peers.clear()

    def register(self, path: str, handler: Handler, decode: Callable[[bytes], Any]) -> EndpointEntry:
        return self.core.register(path, handler, decode)

    def unregister(self, path: str) -> None:
        self.core.unregister(path)

    def _peer(self, inbox: str) -> _ClientPeer:
        peer = self.peers.get(inbox)
        if peer is None or peer.closed:
            peer = self.peers[inbox] = _ClientPeer(self.nc, inbox)
        peer.last_seen = time.monotonic()
        return peer

    async def _on_msg(self, msg: Msg) -> None:
        try:
            frame = _decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # No connection to close here: the message is dropped, the sender's request times out.
            self.malformed += 1
            logger.warning("request plane (nats): dropping malformed message on %s: %s", msg.subject, exc)
            return
        t = frame.t
        if t == REQ:
            if not frame.reply:
                logger.warning("request plane (nats): request without a reply subject dropped")
                return
            peer = self._peer(frame.reply)
            reply_to = msg.reply

            def answer(f: Frame) -> None:
                if reply_to:
                    asyncio.get_running_loop().create_task(self._publish(reply_to, _encode(f)))
                else:
                    peer.send(f)

            self.core.admit(peer, frame, answer)
        elif t == STOP or t == KILL:
            peer = self.peers.get(frame.reply or "")
            if peer is not None:
                peer.last_seen = time.monotonic()
                peer.control(frame)
        elif t == PING:
            if frame.reply:
                self._peer(frame.reply)
            if msg.reply:
                await self._publish(msg.reply, _encode(Frame(PONG, 0)))
        else:
            self.malformed += 1
            logger.warning("request plane (nats): unexpected frame type %r dropped", t)

    async def _publish(self, subject: str, payload: bytes) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self.nc.publish(subject, payload)

    async def _sweep(self) -> None:
        """Kill the streams of clients that stopped pinging (gone without a word)."""
        while True:
            await asyncio.sleep(self.heartbeat.interval)
            now = time.monotonic()
            for inbox, peer in list(self.peers.items()):
                silent = now - peer.last_seen
                if silent <= self.heartbeat.timeout:
                    continue
                if peer.tasks:
                    logger.warning("request plane (nats): client %s silent for %.1fs; killing its %d streams",
                                   inbox, silent, len(peer.tasks))
                peer.close()
                del self.peers[inbox]


# ----------------------------------------------------------------------------------------------
# client


class _ServerLink:
    """The client's view of one worker subject: owner of the streams sent there, and their heartbeat."""

    def __init__(self, client: NatsClient, subject: str) -> None:
        self.client = client
        self.subject = subject
        self.streams: dict[int, ResponseStream] = client.streams  # sids are unique per client
        self.open: set[int] = set()
        self._pinger: asyncio.Task[None] | None = None

    def send(self, frame: Frame) -> None:
        """stop/kill (sync, from ``ResponseStream.cancel``)."""
        frame.reply = self.client.inbox
        asyncio.get_running_loop().create_task(self.client._publish(self.subject, _encode(frame)))

    def opened(self, sid: int) -> None:
        self.open.add(sid)
        if self._pinger is None and self.client.heartbeat.enabled:
            self._pinger = asyncio.get_running_loop().create_task(self._ping_loop())

    def _live_sids(self) -> list[int]:
        self.open = {sid for sid in self.open if sid in self.streams}
        return list(self.open)

    async def _ping_loop(self) -> None:
        hb = self.client.heartbeat
        nc = self.client.nc
        reconnects = nc.stats.get("reconnects", 0)
        ping = _encode(Frame(PING, 0, reply=self.client.inbox))
        try:
            while self._live_sids():
                await asyncio.sleep(hb.interval)
                if not self._live_sids():
                    break
                if nc.stats.get("reconnects", 0) != reconnects:
                    self.fail("the NATS connection was re-established and frames may have been lost")
                    reconnects = nc.stats.get("reconnects", 0)
                    continue
                try:
                    await nc.request(self.subject, ping, timeout=hb.timeout)
                except nats.errors.NoRespondersError:
                    self.fail("no responders on its subject (worker gone)")
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    self.fail(f"no answer to a ping within {hb.timeout:g}s (heartbeat timeout)")
                except nats.errors.Error as exc:
                    logger.debug("request plane (nats): ping to %s failed: %s", self.subject, exc)
        finally:
            self._pinger = None

    def fail(self, reason: str) -> None:
        sids = self._live_sids()
        if not sids:
            return
        logger.warning("request plane (nats): %s: %s; failing %d streams", self.subject, reason, len(sids))
        for sid in sids:
            stream = self.streams.get(sid)
            if stream is not None:
                stream._finish(errors.Disconnected(f"lost {self.subject}: {reason}"))
        self.open.clear()
        for cb in self.client.on_disconnect:
            cb(self.subject)


class NatsClient:
    """Request-plane client of a process over NATS: one inbox for every response stream."""

    def __init__(self, nc: NatsConnection) -> None:
        self.nc = nc
        self.inbox = nc.new_inbox()
        self.streams: dict[int, ResponseStream] = {}
        self.links: dict[str, _ServerLink] = {}
        self.on_disconnect: list[Callable[[str], None]] = []
        self.ack_timeout = env_float("DYN_TCP_REQUEST_TIMEOUT", 5.0)
        self.heartbeat = HeartbeatSettings.from_env()
        self._next_sid = 1
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_msg, pending_msgs_limit=PENDING_MSGS_LIMIT,
                                            pending_bytes_limit=PENDING_BYTES_LIMIT)
        await self.nc.flush()

    async def _on_msg(self, msg: Msg) -> None:
        data = msg.data
        streams = self.streams
        pos, end = 0, len(data)
        try:
            while pos < end:
                (length,) = _LEN.unpack_from(data, pos)
                frame = _decode(data[pos + 4 : pos + 4 + length])
                pos += 4 + length
                stream = streams.get(frame.sid)
                if stream is not None:
                    stream._on_frame(frame)
        except (struct.error, msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.error("request plane (nats): bad frame on %s: %s", self.inbox, exc)

    async def _publish(self, subject: str, payload: bytes) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self.nc.publish(subject, payload)

    async def request(
        self,
        address: str,
        path: str,
        body: Any,
        headers: dict[str, str] | None = None,
        decode: Callable[[bytes], Any] = _generic_decode,
        merge: Callable[[Any, Any], Any] | None = None,
    ) -> ResponseStream:
        link = self.links.get(address)
        if link is None:
            link = self.links[address] = _ServerLink(self, address)
        sid = self._next_sid
        self._next_sid += 1
        raw = body if isinstance(body, msgspec.Raw) else encode_body(body)
        payload = _encode(Frame(REQ, sid, ep=path, headers=headers, body=raw, reply=self.inbox))
        if len(payload) > self.nc.max_payload:
            raise errors.InvalidArgument(
                f"request of {len(payload)} bytes exceeds the NATS server's max_payload ({self.nc.max_payload})")
        stream = ResponseStream(link, sid, decode, merge)
        self.streams[sid] = stream  # frames may arrive before the admission answer
        try:
            msg = await self.nc.request(address, payload, timeout=self.ack_timeout)
        except nats.errors.NoRespondersError as exc:
            self.streams.pop(sid, None)
            raise errors.CannotConnect(f"no worker listening on {address}") from exc
        except (nats.errors.TimeoutError, asyncio.TimeoutError) as exc:
            stream.cancel(kill=True)
            raise errors.ConnectionTimeout(f"{address} did not acknowledge within {self.ack_timeout}s") from exc
        except nats.errors.Error as exc:
            self.streams.pop(sid, None)
            raise errors.CannotConnect(f"cannot reach {address} through NATS: {exc}") from exc
        try:
            answer = _decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            stream.cancel(kill=True)
            raise errors.Internal(f"malformed admission answer from {address}: {exc}") from exc
        if answer.t == ERR:
            self.streams.pop(sid, None)
            raise errors.from_wire(answer.error)
        if answer.t != ACK:
            stream.cancel(kill=True)
            raise errors.Internal(f"unexpected admission answer {answer.t!r} from {address}")
        if stream._ack.done() and not stream._ack.cancelled():
            stream._ack.exception()  # the stream already failed (its err outran the ack): iteration raises it
        stream._on_frame(answer)
        link.opened(sid)
        return stream

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for stream in list(self.streams.values()):
            stream._finish(errors.Disconnected("request plane closed"))
        self.streams.clear()
