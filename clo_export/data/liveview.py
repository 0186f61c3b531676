"""``--serve HOST:PORT``: a live view page of every stream's annotated frames (MJPEG) and stats, for headless devices.

Standard library only. :class:`LiveView` binds where told and serves on a daemon thread:

- ``/``: the page, one cell per stream (``<img src="/stream/I.mjpg">``) with its stats, refreshed every second;
- ``/stream/I.mjpg``: stream I's newest annotated frames, ``multipart/x-mixed-replace`` JPEG parts;
- ``/stream/I.jpg``: stream I's newest annotated frame (the page reloads these instead of MJPEG beyond
  ``MJPEG_STREAMS`` streams: browsers open only 6 connections per host);
- ``/stats.json``: ``{"running": …, "streams": [{"stream": I, "fps": …, "frames": …, …}, …]}``.

A stream's frames reach the view through its :class:`LiveSink`: ``write()`` only keeps a reference to the newest
frame, at most ``max_fps`` times a second and only while someone watches that stream (drop-oldest, nothing
queued); drawing and JPEG encoding happen on the viewers' threads, once per frame however many watch, so
viewers never slow the pipeline. At most ``max_clients`` viewers per stream, and ``max_clients`` × (streams + 1)
connections in all; one more is answered 503. The server stops when the last of its sinks closes (the run ended):
streams end (clients read EOF), the port is released and no thread is left.
"""

from __future__ import annotations

import errno
import html
import json
import socket
import socketserver
import string
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from clo_export.data.readers import Frame, Source
from clo_export.data.sinks import Sink, draw_detections
from clo_export.errors import CloExportError

DEFAULT_HOST = "127.0.0.1"  # only this machine: serving to the network is asked for (0.0.0.0)
MAX_CLIENTS = 8  # viewers per stream
MAX_FPS = 15.0  # frames a second a stream is encoded at, at most
JPEG_QUALITY = 80
FPS_WINDOW = 2.0  # seconds the FPS is measured over
SOCKET_TIMEOUT = 10.0  # a client that stops reading is dropped after this long
BOUNDARY = "clo-frame"
MJPEG_STREAMS = 4  # streams a page shows as MJPEG; more are shown as reloaded snapshots (6 connections per host)
SNAPSHOT_INTEREST = 2.0  # seconds a stream keeps publishing after a snapshot request


def parse_serve(text: str) -> Tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (host 127.0.0.1), ``[IPv6]:PORT`` -> (host, port); one-line errors."""
    value = str(text).strip()
    hint = "pass --serve PORT, :PORT or HOST:PORT such as 127.0.0.1:8080 (0.0.0.0:8080 serves every interface)"
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep or not host:
            raise CloExportError(
                f"--serve '{text}': an IPv6 host needs its port after the brackets ([::1]:8080); " + hint
            )
    elif value.count(":") > 1:
        raise CloExportError(f"--serve '{text}': put an IPv6 host in brackets ([::1]:8080); {hint}")
    else:
        host, _, port = value.rpartition(":")
    host = host or DEFAULT_HOST
    if not port.isascii() or not port.isdecimal():
        raise CloExportError(f"--serve '{text}': the port '{port}' is not a number; {hint}")
    if not 1 <= int(port) <= 65535:
        raise CloExportError(f"--serve '{text}': port {int(port)} is outside 1-65535; {hint}")
    if any(c.isspace() or c in "/?#@" for c in host):
        raise CloExportError(f"--serve '{text}': '{host}' is not a host name or address; {hint}")
    return host, int(port)


def bind_error(host: str, port: int, e: OSError) -> CloExportError:
    """Why the server cannot listen on host:port, in one line."""
    where = f"--serve {host}:{port}"
    if isinstance(e, socket.gaierror):
        return CloExportError(
            f"{where}: '{host}' is not a known host ({e.strerror}); use an address of this machine "
            "such as 127.0.0.1 or 0.0.0.0"
        )
    if e.errno == errno.EADDRINUSE:
        return CloExportError(f"{where}: port {port} is in use; choose another port or stop the program holding it")
    if e.errno == errno.EACCES:
        return CloExportError(f"{where}: permission denied (ports below 1024 need root); choose a port in 1024-65535")
    if e.errno == errno.EADDRNOTAVAIL:
        return CloExportError(f"{where}: {host} is not an address of this machine; use 127.0.0.1 or 0.0.0.0")
    return CloExportError(f"{where}: cannot listen ({e.strerror or e}); choose another host or port")


class _Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer that bounds its connections (503 beyond) and tracks its threads to join them."""

    daemon_threads = True  # the threads are tracked here (the mixin's list grows forever before Python 3.12)

    def __init__(self, host: str, port: int, view: LiveView, max_connections: int):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.view, self.max_connections = view, max_connections
        self.active: dict = {}  # thread -> its socket
        self.lock = threading.Lock()
        self.closing = False
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        """Bind without the reverse DNS look-up HTTPServer does (slow on a device without a name server)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: socket.socket, client_address) -> None:
        """Start a thread for the connection, or answer 503 at once when there are too many."""
        request.settimeout(SOCKET_TIMEOUT)
        with self.lock:
            busy = self.closing or len(self.active) >= self.max_connections
            if not busy:
                t = threading.Thread(
                    target=self._serve, args=(request, client_address), name="clo-liveview-client", daemon=True
                )
                self.active[t] = request
                t.start()
        if busy:
            _refuse(request)
            self.shutdown_request(request)

    def _serve(self, request: socket.socket, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except OSError:  # the client went away
            pass
        finally:
            self.shutdown_request(request)
            with self.lock:
                self.active.pop(threading.current_thread(), None)

    def stop(self, grace: float = 1.0) -> None:
        """Stop accepting, let the connections finish (their streams have ended), cut the rest, join every thread."""
        with self.lock:
            self.closing = True
            clients = list(self.active.items())
        self.shutdown()
        self.server_close()
        deadline = time.monotonic() + grace
        for t, _ in clients:
            t.join(max(deadline - time.monotonic(), 0))
        for t, sock in clients:  # a thread blocked sending to a client that stopped reading returns now
            if t.is_alive():
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                t.join(SOCKET_TIMEOUT)


def _refuse(request: socket.socket) -> None:
    """A minimal 503 on a connection the server has no room for."""
    body = b"too many viewers; try again later\n"
    try:
        request.sendall(
            b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 5\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
    except OSError:
        pass


class StreamView:
    """One stream's newest frame (kept only while watched), its JPEG (encoded once, on demand) and its stats."""

    def __init__(self, index: int, label: str, names: dict, max_fps: float, max_viewers: int):
        self.index, self.label, self.names = index, label, names
        self.min_interval, self.max_viewers = 1.0 / max_fps, max_viewers
        self.cond = threading.Condition()
        self.encode_lock = threading.Lock()
        self.viewers = 0
        self.wanted_until = 0.0  # a snapshot was asked for: publish until then
        self.pending: Optional[tuple] = None  # (seq, image, dets, drawn, frame index)
        self.seq = 0  # frames published
        self.published_at = 0.0
        self.jpeg: Optional[Tuple[int, int, bytes]] = None  # (seq, frame index, bytes)
        self.frames = 0
        self.last_index = -1
        self.detections = 0
        self.size: Optional[Tuple[int, int]] = None
        self.times: deque = deque(maxlen=256)
        self.source: Optional[Source] = None
        self.closed = False

    def write(self, frame: Frame, dets: np.ndarray, annotated: Optional[np.ndarray]) -> None:
        """Count the frame; keep a reference to it while watched and the rate allows (never copies, never waits)."""
        now = time.monotonic()
        self.frames += 1
        self.last_index, self.detections, self.size = frame.index, len(dets), frame.size
        self.times.append(now)
        if (not self.viewers and now > self.wanted_until) or now - self.published_at < self.min_interval:
            return
        self.published_at = now
        with self.cond:
            self.seq += 1
            drawn = annotated is not None
            self.pending = (self.seq, annotated if drawn else frame.image, dets, drawn, frame.index)
            self.cond.notify_all()

    def close(self) -> None:
        """The stream ended: wake its viewers so they finish."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def next_jpeg(self, after: int, timeout: float) -> Optional[Tuple[int, int, bytes]]:
        """(seq, frame index, JPEG) of the first frame published after ``after``; None when closed or nothing came."""
        with self.cond:
            self.cond.wait_for(lambda: self.closed or self.seq > after, timeout)
            if self.closed or self.seq <= after:
                return None
            seq, image, dets, drawn, index = self.pending
        with self.encode_lock:  # one viewer encodes, the others take its bytes
            if self.jpeg is None or self.jpeg[0] < seq:
                img = image if drawn else draw_detections(image, dets, self.names)
                ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if not ok:
                    return None
                self.jpeg = (seq, index, data.tobytes())
            return self.jpeg

    def snapshot(self, timeout: float) -> Optional[Tuple[int, int, bytes]]:
        """The newest frame's JPEG; after a pause of the snapshots, waits for a fresh frame (None when none came)."""
        with self.cond:
            now = time.monotonic()
            fresh = now <= self.wanted_until and self.seq > 0
            self.wanted_until = now + SNAPSHOT_INTEREST
            after = self.seq - 1 if fresh else self.seq
        return self.next_jpeg(after, timeout)

    def stats(self) -> dict:
        """What the page shows: FPS over the last seconds, frames, drops and reconnects (live sources), detections."""
        now = time.monotonic()
        recent = [t for t in list(self.times) if now - t <= FPS_WINDOW]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
        src = self.source
        live = bool(src is not None and src.live)
        return {
            "stream": self.index,
            "source": self.label,
            "running": not self.closed,
            "width": self.size[0] if self.size else None,
            "height": self.size[1] if self.size else None,
            "fps": round(fps, 2),
            "frames": self.frames,
            "detections": self.detections,
            # a live source's frames are numbered as read: the ones never written were dropped to keep up
            "dropped": max(self.last_index + 1 - self.frames, 0) if live else (0 if src is not None else None),
            "reconnects": src.reconnects if live else None,
            "skipped": src.skipped if src is not None else None,
            "viewers": self.viewers,
        }


class LiveView:
    """The page and its server for ``labels`` (one per stream); serving from construction until :meth:`close`."""

    def __init__(
        self,
        host: str,
        port: int,
        labels: Sequence[str],
        names: dict,
        title: str = "clo-infer",
        max_clients: int = MAX_CLIENTS,
        max_fps: float = MAX_FPS,
    ):
        self.title = title
        self.streams: List[StreamView] = [
            StreamView(i, str(label), names, max_fps, max_clients) for i, label in enumerate(labels)
        ]
        self.started = time.monotonic()
        try:
            self.server = _Server(host, port, self, max_clients * (len(self.streams) + 1))
        except OSError as e:
            raise bind_error(host, port, e) from e
        self.host, self.port = host, self.server.server_port
        self._open_sinks = 0
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, name="clo-liveview", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Where the page is (0.0.0.0 shown as is: open it with this machine's address)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def sink(self, stream: int, source: Optional[Source] = None) -> LiveSink:
        """The sink that publishes stream ``stream``'s frames; ``source`` gives its drops and reconnects."""
        with self._lock:
            self._open_sinks += 1
        self.streams[stream].source = source
        return LiveSink(self, stream)

    def sink_closed(self, stream: int) -> None:
        """A stream ended; the last one to end stops the server."""
        self.streams[stream].close()
        with self._lock:
            self._open_sinks -= 1
            last = self._open_sinks <= 0
        if last:
            self.close()

    def close(self) -> None:
        """End every stream, stop the server and join its threads (idempotent)."""
        with self._lock:
            first, self._closed = not self._closed, True
        for s in self.streams:
            s.close()
        if first:
            self.server.stop()
            self._thread.join()

    def stats(self) -> dict:
        """Every stream's stats, for /stats.json."""
        return {
            "title": self.title,
            "running": not all(s.closed for s in self.streams),
            "seconds": round(time.monotonic() - self.started, 2),
            "streams": [s.stats() for s in self.streams],
        }

    def page(self) -> bytes:
        """The grid page: each stream's MJPEG and its stats line (updated from /stats.json every second)."""
        kind = "mjpg" if len(self.streams) <= MJPEG_STREAMS else "jpg"  # snapshots: reloaded by the script
        cells = "\n".join(
            f'<figure><figcaption><b>#{s.index}</b> {html.escape(s.label)}<br><span id="s{s.index}">waiting for frames'
            f'</span></figcaption><img class="{kind}" src="/stream/{s.index}.{kind}" alt="stream {s.index}"></figure>'
            for s in self.streams
        )
        return PAGE.substitute(title=html.escape(self.title), cells=cells).encode("utf-8")


class LiveSink(Sink):
    """Publishes one stream's frames to a :class:`LiveView`; closing the last of the view's sinks stops it."""

    def __init__(self, view: LiveView, stream: int):
        self.view, self.stream = view, view.streams[stream]
        self.closed = False

    @property
    def url(self) -> str:
        return self.view.url

    def write(self, frame: Frame, dets: np.ndarray, annotated: Optional[np.ndarray]) -> None:
        self.stream.write(frame, dets, annotated)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.view.sink_closed(self.stream.index)


def serve_sink(serve: str, source: Source, names: dict) -> LiveSink:
    """``--serve`` for one source: a LiveView with one stream, serving now, and that stream's sink."""
    host, port = parse_serve(serve)
    return LiveView(host, port, [source.spec], names).sink(0, source)


def check_serve(serve: str) -> Tuple[str, int]:
    """Before any work: the address parses and can be listened on now (a port in use is one line)."""
    host, port = parse_serve(serve)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        probe.bind((host, port))
    except OSError as e:
        raise bind_error(host, port, e) from e
    finally:
        probe.close()
    return host, port


class _Handler(BaseHTTPRequestHandler):
    """GET /, /stats.json and /stream/I.mjpg; one request per connection."""

    server: _Server
    server_version = "clo-infer"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass  # the run's own output stays clean

    def _send(self, code: int, body: bytes, ctype: str, frame: Optional[int] = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        if frame is not None:
            self.send_header("X-Frame-Index", str(frame))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        view = self.server.view
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(200, view.page(), "text/html; charset=utf-8")
        elif path == "/stats.json":
            self._send(200, json.dumps(view.stats()).encode(), "application/json")
        elif path.startswith("/stream/") and path.endswith((".mjpg", ".jpg")):
            name, _, kind = path[8:].partition(".")
            if not (name.isascii() and name.isdecimal() and int(name) < len(view.streams)):
                self._send(404, f"no stream {name}: streams 0-{len(view.streams) - 1}\n".encode(), "text/plain")
            elif kind == "mjpg":
                self._stream(view.streams[int(name)])
            else:
                got = view.streams[int(name)].snapshot(SOCKET_TIMEOUT / 2)
                if got is None:
                    self._send(503, b"no frame yet; try again\n", "text/plain")
                else:
                    self._send(200, got[2], "image/jpeg", got[1])
        else:
            self._send(404, b"not found: try / or /stats.json or /stream/0.mjpg\n", "text/plain")

    def _stream(self, stream: StreamView) -> None:
        """MJPEG until the stream ends (then the connection closes) or the viewer leaves."""
        with stream.cond:
            room = stream.viewers < stream.max_viewers
            if room:
                stream.viewers += 1
        if not room:
            self._send(503, b"too many viewers of this stream; try again later\n", "text/plain")
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seq = 0
            while not stream.closed and not self.server.closing:
                got = stream.next_jpeg(seq, 0.5)
                if got is None:
                    continue
                seq, index, data = got
                self.wfile.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n"
                    f"X-Frame-Index: {index}\r\n\r\n".encode()
                    + data
                    + b"\r\n"
                )
                self.wfile.flush()
            self.wfile.write(f"--{BOUNDARY}--\r\n".encode())
        finally:
            with stream.cond:
                stream.viewers -= 1


PAGE = string.Template("""<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title live view</title>
<style>
body{margin:0;background:#15171a;color:#e8e8e8;font:14px system-ui,sans-serif}
header{padding:10px 14px;background:#23262b;display:flex;gap:18px;align-items:baseline}
#state{color:#7fd17f}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:10px;padding:10px}
figure{margin:0;background:#000;border:1px solid #33373d}
figure img{display:block;width:100%;min-height:120px;max-height:calc(100vh - 120px);object-fit:contain}
figcaption{padding:6px 10px;font:13px ui-monospace,monospace;line-height:1.5}
</style></head>
<body><header><b>$title</b><span id="state">running</span><span id="elapsed"></span></header>
<main>
$cells
</main>
<script>
var ended = false;
function line(s) {
  var parts = [s.fps.toFixed(1) + " FPS", s.frames + " frames", s.detections + " detections in the last frame"];
  if (s.dropped !== null) parts.push(s.dropped + " dropped");
  if (s.reconnects !== null) parts.push(s.reconnects + " reconnects");
  if (!s.running) parts.push("ended");
  return parts.join(" \\u00b7 ");
}
function poll() {
  fetch("/stats.json", {cache: "no-store"}).then(function (r) { return r.json(); }).then(function (j) {
    j.streams.forEach(function (s) { document.getElementById("s" + s.stream).textContent = line(s); });
    document.getElementById("elapsed").textContent = j.seconds.toFixed(0) + " s";
    if (!j.running) { ended = true; document.getElementById("state").textContent = "run ended"; return; }
    setTimeout(poll, 1000);
  }).catch(function () { ended = true; document.getElementById("state").textContent = "run ended (server stopped)"; });
}
poll();
Array.prototype.forEach.call(document.querySelectorAll("img.jpg"), function (img) {
  var base = img.getAttribute("src");
  function again() { if (!ended) setTimeout(function () { img.src = base + "?t=" + Date.now(); }, 100); }
  img.onload = again;
  img.onerror = function () { setTimeout(again, 900); };
});
</script></body></html>
""")
