"""A live RTSP camera on 127.0.0.1 for the live-source tests: GStreamer's gst-rtsp-server serving a moving test pattern.

Run by Debian's ``/usr/bin/python3`` (it has ``gi``; the project's venv does not)::

    /usr/bin/python3 tests/rtsp_camera.py --port 0 --seconds 60

Prints ``ready PORT`` once clients can connect, then serves H.264 (x264, a key frame every
``--fps`` frames so a client that reconnects decodes within a second) until ``--seconds`` have
passed or it gets SIGTERM/SIGINT. ``--port 0`` picks a free port; pass the printed one again to
restart "the same camera". Exit 3 when a GStreamer package is missing (the tests skip on it).
"""

import argparse
import signal
import sys

PIPELINE = (
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},framerate={fps}/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! rtph264pay name=pay0 pt=96 )"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="/cam")
    parser.add_argument("--seconds", type=float, default=60.0, help="exit by itself after this long")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--size", default="320x240")
    args = parser.parse_args()
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as e:
        print(f"missing: {e}", file=sys.stderr, flush=True)
        return 3
    Gst.init(None)
    missing = [e for e in ("videotestsrc", "x264enc", "rtph264pay") if Gst.ElementFactory.find(e) is None]
    if missing:
        print(f"missing GStreamer elements: {', '.join(missing)}", file=sys.stderr, flush=True)
        return 3
    w, h = (int(v) for v in args.size.split("x"))
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE.format(w=w, h=h, fps=args.fps))
    factory.set_shared(True)  # one encoder for every client
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()
    GLib.timeout_add(int(args.seconds * 1000), loop.quit)
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"ready {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
