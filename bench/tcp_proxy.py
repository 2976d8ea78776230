"""A TCP proxy that can cut a service off and bring it back (benchmarks and tests).

``TcpProxy`` listens on 127.0.0.1 on a free port and forwards every connection to a
target (RabbitMQ on 127.0.0.1:5672 by default). :meth:`TcpProxy.cut` closes every open
connection and stops listening, so new connections are refused, as if the service went
down; :meth:`TcpProxy.restore` listens again on the same port. Use it as a context
manager (or call :meth:`TcpProxy.close`) so its threads stop at teardown.
"""

import contextlib
import selectors
import socket
import threading
from types import TracebackType

from bench.procs import free_port

#: How often the accept loop looks at its stop flag.
_POLL_S = 0.05
#: Bytes read per recv.
_CHUNK = 65536


class _Link:
    """One client connection and its upstream connection, pumped by one thread."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.thread = threading.Thread(target=self._pump, name="tcp-proxy-link", daemon=True)

    def _pump(self) -> None:
        peers = {self.client: self.upstream, self.upstream: self.client}
        with selectors.DefaultSelector() as sel:
            for sock in peers:
                sel.register(sock, selectors.EVENT_READ)
            try:
                while True:
                    for key, _ in sel.select():
                        ready = key.fileobj
                        assert isinstance(ready, socket.socket)
                        data = ready.recv(_CHUNK)
                        if not data:
                            return
                        peers[ready].sendall(data)
            except OSError:
                return
            finally:
                for sock in peers:
                    sel.unregister(sock)
                self._shutdown()
                self.client.close()
                self.upstream.close()

    def _shutdown(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def sever(self) -> None:
        """Close both sides now (wakes the pump thread, which then closes the sockets)."""
        self._shutdown()


class TcpProxy:
    """Forward 127.0.0.1:<port> to ``target``; cut and restore on demand."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5672) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = free_port()
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._accepting = threading.Event()
        self._acceptor: threading.Thread | None = None
        self.restore()

    @property
    def address(self) -> str:
        """``host:port`` clients connect to."""
        return f"{self.host}:{self.port}"

    def restore(self) -> None:
        """Listen (again) and forward new connections."""
        with self._lock:
            if self._acceptor is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind((self.host, self.port))
                listener.listen(64)
            except OSError:
                listener.close()
                raise
            self._accepting.set()
            self._acceptor = threading.Thread(
                target=self._accept_loop, args=(listener,), name="tcp-proxy-accept", daemon=True
            )
            self._acceptor.start()

    def cut(self) -> None:
        """Stop listening (new connections are refused) and close every open connection."""
        with self._lock:
            acceptor, self._acceptor = self._acceptor, None
            self._accepting.clear()
        if acceptor is not None:
            acceptor.join(10)
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.sever()
        for link in links:
            link.thread.join(10)

    def open_connections(self) -> int:
        """How many forwarded connections are open now."""
        with self._lock:
            self._links = [link for link in self._links if link.thread.is_alive()]
            return len(self._links)

    def close(self) -> None:
        """Cut everything and stop all threads."""
        self.cut()

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept_loop(self, listener: socket.socket) -> None:
        with listener, selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            while self._accepting.is_set():
                if not sel.select(_POLL_S):
                    continue
                try:
                    client, _ = listener.accept()
                except OSError:
                    continue
                self._forward(client)
            sel.unregister(listener)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(client, upstream)
        with self._lock:
            if not self._accepting.is_set():
                link.sever()
                client.close()
                upstream.close()
                return
            self._links.append(link)
        link.thread.start()
