"""`lscindex serve`."""

from __future__ import annotations

import errno
import socket
from typing import Annotated, Any

import typer

from lscindex.retrieval import Retriever
from lscindex_cli._common import (
    DEVICE_CHOICES,
    IndexChoice,
    NoStoreFlag,
    RunChoice,
    StoreChoice,
    choice_option,
    err_console,
    print_error,
    shown,
)
from lscindex_cli.query_cmd import print_choice

# The request limits (None: create_app's default, which the help states).
MaxUploadMb = Annotated[
    float | None, typer.Option(help="Largest image upload, in MiB (default 8).")
]
MaxBatch = Annotated[
    int | None, typer.Option(min=1, help="Most images in one request (default 16).")
]
MaxRequestMpx = Annotated[
    float | None,
    typer.Option(help="Most pixels one request's images decode to, in millions (default 100)."),
]
MaxInflightMpx = Annotated[
    float | None,
    typer.Option(
        help="Most decoded pixels of all requests at once, in millions; past it 503 with "
        "Retry-After (default 200)."
    ),
]
MaxPending = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Most requests answered or waiting at once; more get 503 with Retry-After "
        "(default 64).",
    ),
]
BodyTimeout = Annotated[
    float | None,
    typer.Option(help="Seconds a request's body has to arrive in full; slower: 408 (default 60)."),
]


def serve(
    run: RunChoice = None,
    store: StoreChoice = None,
    no_store: NoStoreFlag = False,
    index_path: IndexChoice = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")
    ] = 8000,
    device: Annotated[
        str, choice_option(help="auto: CUDA when present, else the CPU.", **DEVICE_CHOICES)
    ] = "auto",
    max_upload_mb: MaxUploadMb = None,
    max_batch: MaxBatch = None,
    max_request_mpx: MaxRequestMpx = None,
    max_inflight_mpx: MaxInflightMpx = None,
    max_pending: MaxPending = None,
    body_timeout_s: BodyTimeout = None,
) -> None:
    """Answer POST /classify and /search over HTTP with the query --json document.

    Chooses the run, store and index as query does and says which on stderr.
    GET /info says the same; GET /health answers while the server is up.
    Ctrl-C stops it.
    """
    try:
        import uvicorn

        from lscindex.service import ENDPOINTS, create_app
    except ImportError as exc:  # the optional `serve` extra
        print_error(f"lscindex serve needs {exc.name}; pip install 'lscindex[serve]'")
        raise typer.Exit(1) from None
    with _listen(host, port) as sock:  # before the model loads: a taken port fails at once
        retriever = Retriever.open(
            run, store=False if no_store else store, index=index_path, device=device
        )
        print_choice(retriever)
        limits: dict[str, Any] = {
            "max_upload_mb": max_upload_mb,
            "max_batch": max_batch,
            "max_request_mpx": max_request_mpx,
            "max_inflight_mpx": max_inflight_mpx,
            "max_pending": max_pending,
            "body_timeout_s": body_timeout_s,
        }  # None: create_app's default
        app = create_app(retriever, **{k: v for k, v in limits.items() if v is not None})
        bound = int(sock.getsockname()[1])
        address = f"[{host}]" if ":" in host else host
        err_console.print(
            f"serving on http://{shown(address)}:{bound} ({', '.join(ENDPOINTS)}; Ctrl-C stops)",
            highlight=False,
        )
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=bound))
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on
            raise typer.Exit(130) from None


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, or one line on stderr and exit status 1."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        print_error(
            f"--host {host!r} cannot be resolved ({exc}); pass an address of this machine, "
            f"such as 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        )
        raise typer.Exit(1) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(address)
        sock.listen()
    except OSError as exc:
        sock.close()
        fixes = {
            errno.EADDRINUSE: "stop what listens there or pass another --port (0: any free port)",
            errno.EADDRNOTAVAIL: "pass an address of this machine: 127.0.0.1 or 0.0.0.0",
            errno.EACCES: "pass a --port above 1023, or run with the rights to bind below it",
        }
        fix = fixes.get(exc.errno or 0, "pass another --host or --port")
        print_error(f"cannot listen on {host}:{port} ({exc.strerror or exc}); {fix}")
        raise typer.Exit(1) from None
    return sock
