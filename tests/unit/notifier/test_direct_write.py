"""Packets written straight to an idle websocket: order kept, the queue as the fallback.

A real uvicorn server on 127.0.0.1 with python-socketio's ASGI app, the notifier's
transport wired as the notifier wires it (``lighten``, ``adopt`` on connect), and
python-socketio's own client (over a websocket from the start, over long-polling
upgraded to a websocket, over long-polling only), or Engine.IO spoken directly over
aiohttp where a test needs the wire itself (compression, two websockets).
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import socketio
import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from errand_notifier import transport


async def _until(predicate: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Served:
    sio: socketio.AsyncServer
    url: str
    server: uvicorn.Server
    sids: list[str] = field(default_factory=list)

    def socket(self) -> Any:
        eio_sid = transport.eio_sid_of(self.sio, self.sids[-1])
        assert eio_sid is not None
        return self.sio.eio.sockets[eio_sid]

    def send(self, value: int) -> None:
        transport.send_packet(self.socket(), transport.encode_event(self.sio, "m", value))


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    # Pings far apart unless a test asks (a polling client's disconnect waits for its
    # long-poll to end); Engine.IO pings are never Socket.IO events at the client.
    ping_s = getattr(request, "param", 60)
    sio = socketio.AsyncServer(async_mode="asgi", ping_interval=ping_s, ping_timeout=ping_s)
    transport.lighten(sio)
    config = uvicorn.Config(
        socketio.ASGIApp(sio),
        host="127.0.0.1",
        port=0,
        log_config=None,
        lifespan="off",
        timeout_graceful_shutdown=2,  # a long-poll held by the server ends with it
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await _until(lambda: server.started, "the server to start")
    port = server.servers[0].sockets[0].getsockname()[1]
    it = Served(sio, f"http://127.0.0.1:{port}", server)

    @sio.event
    async def connect(sid: str, _environ: dict[str, Any], _auth: Any) -> None:
        eio_sid = transport.eio_sid_of(sio, sid)
        assert eio_sid is not None
        transport.adopt(sio, eio_sid)
        it.sids.append(sid)

    try:
        yield it
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _client(url: str, transports: list[str]) -> tuple[socketio.AsyncClient, list[Any]]:
    client = socketio.AsyncClient(reconnection=False)
    got: list[Any] = []

    @client.on("m")
    async def on_m(data: Any) -> None:
        got.append(data)

    await client.connect(url, transports=transports, wait_timeout=10)
    return client, got


def _writer_idle(sock: Any) -> bool:
    return bool(sock.upgraded and getattr(sock, "_wire", None) and sock.queue.idle())


@pytest.mark.parametrize(
    "transports", [["websocket"], ["polling", "websocket"]], ids=["websocket", "upgraded"]
)
async def test_packets_go_straight_to_an_idle_websocket_and_queue_behind_a_busy_writer(
    served: Served, transports: list[str]
) -> None:
    client, got = await _client(served.url, transports)
    try:
        sock = served.socket()
        await _until(lambda: _writer_idle(sock), "the websocket's writer to wait")
        for i in range(50):
            served.send(i)
            # written at once: nothing waits for the writer task, which stays asleep
            assert transport.queued_packets(sock) == 0
            assert sock.queue.idle()
        # A packet the writer has been woken for but not yet written: what comes after
        # it queues behind it instead of overtaking it on the wire.
        sock.queue.put_nowait(transport.encode_event(served.sio, "m", 50))
        for i in range(51, 60):
            served.send(i)
        assert transport.queued_packets(sock) == 10
        await _until(lambda: len(got) >= 60, "60 packets at the client")
        assert got == list(range(60))
        # the writer wrote the queued ten and waits again: the next goes straight out
        await _until(lambda: _writer_idle(sock), "the writer to wait again")
        served.send(60)
        assert transport.queued_packets(sock) == 0
        await _until(lambda: len(got) == 61, "the last packet")
        assert got[-1] == 60
    finally:
        await client.disconnect()


async def test_a_websocket_that_stopped_taking_data_gets_its_packets_through_the_queue(
    served: Served,
) -> None:
    client, got = await _client(served.url, ["websocket"])
    try:
        sock = served.socket()
        await _until(lambda: _writer_idle(sock), "the websocket's writer to wait")
        protocol = sock._wire
        # What uvicorn does when the transport's buffer passes its high-water mark (the
        # client reads slowly; tests/integration/test_realtime_backpressure.py fills a
        # real one): nothing more is written until it drains.
        protocol.pause_writing()
        for i in range(5):
            served.send(i)
        assert transport.queued_packets(sock) == 5
        # The writer takes them all and waits for the connection, holding them: not
        # idle, so what follows queues behind them, where the slow-client bound
        # (fanout.Fanout._push) counts it.
        await _until(lambda: transport.queued_packets(sock) == 0, "the writer to take them")
        assert not sock.queue.idle()
        for i in range(5, 8):
            served.send(i)
        assert transport.queued_packets(sock) == 3
        assert got == []
        protocol.resume_writing()
        await _until(lambda: len(got) == 8, "every packet")
        assert got == list(range(8))
    finally:
        await client.disconnect()


@pytest.mark.parametrize("served", [1], indirect=True)
async def test_a_polling_client_gets_its_packets_through_the_queue(served: Served) -> None:
    client, got = await _client(served.url, ["polling"])
    try:
        sock = served.socket()
        assert not sock.upgraded
        assert getattr(sock, "_wire", None) is None
        before = transport.queued_packets(sock)
        served.send(1)
        served.send(2)
        assert transport.queued_packets(sock) == before + 2  # the next long-poll takes them
        await _until(lambda: len(got) == 2, "both packets")
        assert got == [1, 2]
    finally:
        await client.disconnect()


async def test_an_upgraded_session_forgets_its_websocket_when_the_websocket_ends(
    served: Served,
) -> None:
    client, _ = await _client(served.url, ["polling", "websocket"])
    sock = served.socket()
    await _until(lambda: _writer_idle(sock), "the upgrade")
    await client.disconnect()
    await _until(lambda: sock._wire is None, "the websocket's handler to end")
    assert transport.eio_socket(served.sio, sock.sid) is None


async def test_a_compressed_websocket_gets_its_direct_packets_compressed_and_in_order(
    served: Served,
) -> None:
    # Browsers offer permessage-deflate (uvicorn accepts it): each frame is compressed
    # with the connection's own context, so a packet written straight to it goes
    # through the connection's protocol object like the writer's.
    ws_url = served.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url, compress=15) as ws,
    ):
        assert (await ws.receive_str(timeout=10)).startswith("0")  # Engine.IO open
        await ws.send_str("40")  # Socket.IO connect
        assert (await ws.receive_str(timeout=10)).startswith("40")
        sock = served.socket()
        await _until(lambda: _writer_idle(sock), "the websocket's writer to wait")
        assert sock._wire.conn.extensions  # permessage-deflate negotiated
        for i in range(50):
            served.send(i)
            assert transport.queued_packets(sock) == 0
        # then some through the writer, sharing the connection's compression context
        sock.queue.put_nowait(transport.encode_event(served.sio, "m", 50))
        for i in range(51, 55):
            served.send(i)
        assert transport.queued_packets(sock) == 5
        got = [json.loads((await ws.receive_str(timeout=10))[2:])[1] for _ in range(55)]
        assert got == list(range(55))


async def test_a_second_websocket_opened_during_an_upgrade_never_gets_the_sessions_packets(
    served: Served,
) -> None:
    # A client may open two websockets for one polling session while it upgrades; only
    # the one that completes the upgrade becomes the session's transport.
    base = served.url + "/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as http:
        opened = await (await http.get(base)).text()
        sid = json.loads(opened[1:])["sid"]
        polling = f"{base}&sid={sid}"
        assert await (await http.post(polling, data="40")).text() == "OK"
        assert (await (await http.get(polling)).text()).startswith("40")  # connect ack
        ws_url = (
            f"{served.url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket&sid={sid}"
        )
        first = await http.ws_connect(ws_url)
        second = await http.ws_connect(ws_url)
        sock = served.sio.eio.sockets[sid]
        assert getattr(sock, "_wire", None) is None  # nobody's transport yet
        await first.send_str("2probe")
        assert await first.receive_str(timeout=10) == "3probe"
        await first.send_str("5")  # upgrade
        await _until(lambda: _writer_idle(sock), "the upgraded writer to wait")
        for i in range(3):
            served.send(i)
        assert transport.queued_packets(sock) == 0
        frames = [await first.receive_str(timeout=10) for _ in range(4)]
        assert [f for f in frames if f != "6"] == [f'42["m",{i}]' for i in range(3)]
        with pytest.raises(asyncio.TimeoutError):
            await second.receive_str(timeout=0.3)  # nothing for the other one
        wire = sock._wire
        await second.close()

        def websockets() -> set[object]:
            conns = served.server.server_state.connections
            return {c for c in conns if isinstance(c, WebSocketsSansIOProtocol)}

        await _until(lambda: websockets() == {wire}, "the second websocket to be gone")
        for _ in range(20):  # its handler's end: a few turns of the loop after that
            await asyncio.sleep(0)
        assert sock._wire is wire  # its end leaves the session's connection named
        served.send(3)
        assert transport.queued_packets(sock) == 0
        assert await first.receive_str(timeout=10) == '42["m",3]'
        await first.close()
