"""The HTTP service behind ``lscindex serve``: classify and search uploaded images.

:func:`create_app` wraps an opened :class:`~lscindex.retrieval.Retriever` in a FastAPI app whose
answers are the versioned ``query`` document of ``lscindex query --json``
(:func:`lscindex.schema.query_document`), built by the same function from the same results:

- ``GET /health``: ``{"status": "ok"}``;
- ``GET /info``: the ``info`` document: the run, store and index that answer (the identities of
  a ``query`` document), how each was chosen, the score meaning and the request limits;
- ``POST /classify``: top-k classes of each uploaded image, no neighbours: the document of
  ``lscindex query --json --no-store`` (a server without a store answers as it was opened, and
  one on a plain timm encoder's store as ``/search``: its classes are a vote of stored items);
- ``POST /search``: classes and the k nearest stored items: the document of ``query --json``;
- ``GET /openapi.json``: the OpenAPI description of the above (no ``/docs`` page).

Uploads are multipart form fields named ``image`` (repeatable); ``k`` is a query parameter or a
form field (default 5). Each result's ``image`` is the upload's file name, so a file sent with its
path as the file name gets the document ``lscindex query PATH --json`` prints. Uploads are read by
:func:`lscindex.data.read_image_bytes`, under the rules of the CLI's reader.

Status codes: 200 with the document when at least one image was read (the others are error
entries, as in ``query --json``); every refusal is ``{"error": "<one line: the value and the
fix>"}``: 400 a body that is not multipart, 404/405 an unknown endpoint or method, 408 a body
that did not arrive within ``body_timeout_s``, 409 ``/search``
on a server without a store, 413 too many images, too large an upload or too many pixels,
503 more decoded pixels than the server holds at once (with ``Retry-After``), 422 a bad ``k``, no
``image`` field, an unknown field or parameter, or no upload readable as an image; 500 a bug (the
traceback goes to the server log, never into the answer).

Requests are answered concurrently, but one encoder forward pass runs at a time (a lock), so an
answer never depends on what else is being answered: it is the CLI's, bit for bit.

Example:
    >>> import uvicorn                                                    # doctest: +SKIP
    >>> app = create_app(Retriever.open("runs/glyphs"), max_batch=8)      # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)                     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import io
import math
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

try:
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse, Response
    from starlette.datastructures import FormData, UploadFile
    from starlette.exceptions import HTTPException
    from starlette.types import Message
except ImportError as exc:  # the optional `serve` extra
    raise ImportError(
        f"lscindex.service needs {exc.name}, which is not installed; pip install 'lscindex[serve]'"
    ) from exc

from lscindex import __version__
from lscindex.data import read_image_bytes
from lscindex.errors import DataError, InputError, LscIndexError
from lscindex.retrieval import DEFAULT_BATCH_SIZE, QueryResult, Retriever
from lscindex.schema import document, query_document, to_json
from lscindex.shards import give_back_freed_memory

__all__ = ["DEFAULT_K", "ENDPOINTS", "create_app"]

DEFAULT_K: int = inspect.signature(Retriever.query).parameters["k"].default
ENDPOINTS = ("GET /health", "GET /info", "POST /classify", "POST /search", "GET /openapi.json")
_MIB = 1024 * 1024
_FORM_OVERHEAD_BYTES = 64 * 1024  # multipart headers and the k field, beyond the images
_FIELDS = ("image", "k")
RETRY_AFTER_S = 1
_TRIM_PIXELS = 4_000_000  # past this a request's images were large enough to trim the heap
_SUMMARY = "Classify and search images with a trained run, its store and index."


class _RequestError(InputError):
    """A request refused with ``status_code`` and a one-line message."""

    def __init__(
        self, status_code: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class _Limits:
    """The limits of :func:`create_app` (see its arguments), checked."""

    max_upload_mb: float
    max_batch: int
    max_request_mpx: float
    max_inflight_mpx: float
    max_pending: int
    body_timeout_s: float

    @property
    def upload_bytes(self) -> int:
        return int(self.max_upload_mb * _MIB)

    @property
    def request_bytes(self) -> int:
        return self.max_batch * self.upload_bytes + _FORM_OVERHEAD_BYTES


def create_app(
    retriever: Retriever,
    *,
    max_upload_mb: float = 8.0,
    max_batch: int = 16,
    max_request_mpx: float = 100.0,
    max_inflight_mpx: float = 200.0,
    max_pending: int = 64,
    body_timeout_s: float = 60.0,
) -> FastAPI:
    """A FastAPI app answering ``/health``, ``/info``, ``/classify`` and ``/search`` with
    ``retriever`` (see the module docstring for the endpoints and status codes).

    Args:
        retriever: an opened retriever; ``/search`` needs its store.
        max_upload_mb: the largest image upload, in MiB (2**20 bytes); larger ones get 413.
        max_batch: the most images in one request; more get 413.
        max_request_mpx: the most pixels (millions) one request's images may decode to, read
            from their headers before any is decoded; more get 413.
        max_inflight_mpx: the most pixels (millions) all requests being answered may hold;
            a request that would pass it gets 503 with ``Retry-After`` (at least one request
            is always answered). Together they bound the memory decoded uploads take.
        max_pending: the most requests answered or waiting for the encoder at once; more get
            503 with ``Retry-After``.
        body_timeout_s: seconds a request's body has to arrive in full; a slower one gets 408.

    Raises:
        InputError: a limit that is not a positive number (``max_batch``: integer).

    Example:
        >>> app = create_app(Retriever.open("runs/glyphs", store="emb.zarr"))  # doctest: +SKIP
    """
    limits = _checked_limits(
        max_upload_mb, max_batch, max_request_mpx, max_inflight_mpx, max_pending, body_timeout_s
    )
    budget = _Admission(int(limits.max_inflight_mpx * 1e6), limits.max_pending)
    lock = threading.Lock()  # one forward pass at a time: answers independent of concurrency
    classes_only = retriever
    # The retriever `query --no-store` opens; a plain timm encoder's classes come from its store.
    if retriever.store is not None and retriever.score_meaning != "knn_vote":
        chosen = {"run": retriever.chosen["run"], "store": "none asked for", "index": None}
        classes_only = Retriever(retriever.run, chosen=chosen)
    info = _info_document(retriever, limits)
    # /openapi.json describes the endpoints for clients and generators; no /docs or /redoc
    # pages, which load their scripts from a CDN a private deployment cannot reach.
    app = FastAPI(
        title="lscindex", version=__version__, summary=_SUMMARY, docs_url=None, redoc_url=None
    )
    app.state.admission = budget  # the requests and decoded pixels being answered
    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Whether the server answers."""
        return {"status": "ok"}

    @app.get("/info")
    async def info_endpoint() -> Response:
        """The run, store and index that answer, how each was chosen, and the limits."""
        return _json_response(info)

    @app.post("/classify", openapi_extra=_upload_openapi())
    async def classify(request: Request) -> Response:
        """Top-k classes of each uploaded image: the document of ``query --json --no-store``."""
        return await _answer(request, classes_only, limits, (lock, budget))

    @app.post("/search", openapi_extra=_upload_openapi())
    async def search(request: Request) -> Response:
        """Top-k classes and k nearest stored items of each image: ``query --json``."""
        if retriever.store is None:
            raise _RequestError(
                409,
                f"this server searches no store ({retriever.chosen['store']}); POST /classify "
                f"for classes only, or restart lscindex serve with --store STORE",
            )
        return await _answer(request, retriever, limits, (lock, budget))

    return app


def _checked_limits(
    max_upload_mb: float,
    max_batch: int,
    max_request_mpx: float,
    max_inflight_mpx: float,
    max_pending: int,
    body_timeout_s: float,
) -> _Limits:
    """The limits of :func:`create_app`, refused (InputError) unless positive numbers."""
    for name, value, unit, floor in (
        ("max_upload_mb", max_upload_mb, "MiB", 1 / _MIB),
        ("max_request_mpx", max_request_mpx, "million pixels", 1e-6),
        ("max_inflight_mpx", max_inflight_mpx, "million pixels", 1e-6),
        ("body_timeout_s", body_timeout_s, "seconds", 1e-3),
    ):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < floor
        ):
            default = inspect.signature(create_app).parameters[name].default
            raise InputError(
                f"{name} must be a positive number of {unit}, got {value!r}; pass e.g. "
                f"{default:g} (--{name.replace('_', '-')} {default:g})"
            )
    for name, count in (("max_batch", max_batch), ("max_pending", max_pending)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            default = inspect.signature(create_app).parameters[name].default
            raise InputError(
                f"{name} must be a positive integer, got {count!r}; pass e.g. {default} "
                f"(--{name.replace('_', '-')} {default})"
            )
    return _Limits(
        float(max_upload_mb),
        max_batch,
        float(max_request_mpx),
        float(max_inflight_mpx),
        max_pending,
        float(body_timeout_s),
    )


def _info_document(retriever: Retriever, limits: _Limits) -> dict[str, Any]:
    """The ``info`` document: the identity fields of a ``query`` document of ``retriever``, so
    both always agree, and the request limits."""
    answered = query_document(retriever, [], k=DEFAULT_K)
    identity = ("run", "store", "index", "chosen", "score_meaning")
    return document(
        "info",
        **{key: answered[key] for key in identity},
        lscindex_version=__version__,
        endpoints=list(ENDPOINTS),
        limits={**dataclasses.asdict(limits), "default_k": DEFAULT_K},
    )


async def _answer(
    request: Request,
    retriever: Retriever,
    limits: _Limits,
    guards: tuple[threading.Lock, _Admission],
) -> Response:
    """Read the uploads and ``k`` of ``request`` and answer them with ``retriever``."""
    unknown = [key for key in request.query_params if key != "k"]
    if unknown:
        raise _RequestError(
            422, f"unknown query parameter {unknown[0]!r}; the only one is k (e.g. ?k=5)"
        )
    form = await _read_form(request, limits)
    try:
        k = _parse_k([*request.query_params.getlist("k"), *form.getlist("k")])
        uploads = await _uploads(form, limits)
    finally:
        await form.close()  # the spooled upload files
    lock, budget = guards
    with budget.hold(_request_pixels(uploads, limits)):
        results = await run_in_threadpool(_query, retriever, uploads, k, lock)
    failed = [r for r in results if r.error is not None]
    if len(failed) == len(results):
        first = str(failed[0].error)
        many = f"none of the {len(results)} images could be read (first: {first})"
        raise _RequestError(422, first if len(results) == 1 else many)
    return _json_response(query_document(retriever, results, k=k))


def _query(
    retriever: Retriever, uploads: Sequence[tuple[str, bytes]], k: int, lock: threading.Lock
) -> list[QueryResult]:
    """:meth:`Retriever.query` of decoded uploads, named by their file names.

    Uploads go through the encoder in the batches ``lscindex query`` forms from the same list
    of files (unreadable ones count in a batch, then drop out), so the floats are the CLI's.
    """
    results: list[QueryResult] = []
    for start in range(0, len(uploads), DEFAULT_BATCH_SIZE):
        batch = uploads[start : start + DEFAULT_BATCH_SIZE]
        images: list[Any] = []
        errors: dict[int, str] = {}
        for i, (name, data) in enumerate(batch):
            try:
                images.append(read_image_bytes(data, name))
            except DataError as exc:
                errors[i] = str(exc)
        with lock:
            answered = iter(retriever.query(images, k=k) if images else [])
        for i, (name, _) in enumerate(batch):
            found = QueryResult(name, error=errors[i]) if i in errors else next(answered)
            results.append(dataclasses.replace(found, image=name))
    return results


def _parse_k(values: list[Any]) -> int:
    """``k`` from the query string and the form (at most once), default :data:`DEFAULT_K`."""
    if not values:
        return DEFAULT_K
    if len(values) > 1:
        given = ", ".join(repr(v) if isinstance(v, str) else "a file" for v in values)
        raise _RequestError(
            422, f"k given {len(values)} times ({given}); give it once, as ?k=5 or -F k=5"
        )
    text = values[0]
    if not isinstance(text, str) or not re.fullmatch(r"[0-9]{1,18}", text) or int(text) < 1:
        shown = repr(text) if isinstance(text, str) else "a file"
        raise _RequestError(422, f"k must be a positive integer, got {shown}; pass e.g. ?k=5")
    return int(text)


async def _read_form(request: Request, limits: _Limits) -> FormData:
    """The multipart form of ``request``, its body refused (413) past the request limit."""
    try:
        return await _limited(request, limits.request_bytes, limits.body_timeout_s).form(
            max_files=limits.max_batch + 1, max_fields=len(_FIELDS) + 8
        )
    except HTTPException as exc:  # starlette's refusals of the multipart body
        if str(exc.detail).startswith("Too many files"):
            raise _too_many(limits) from None
        raise _RequestError(
            400,
            f"the request body is not valid multipart form data ({exc.detail}); send each "
            f"image as a form field named image (curl -F image=@PATH URL)",
        ) from None


def _limited(request: Request, max_bytes: int, timeout_s: float) -> Request:
    """``request`` whose body is refused with 413 past ``max_bytes``, declared or streamed, and
    with 408 unless it has all arrived ``timeout_s`` after the request began (a stalled upload
    would otherwise hold its connection and its spooled bytes for ever)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(f"the request declares {int(declared):,} bytes", max_bytes)
    receive, seen = request.receive, 0
    deadline = asyncio.get_running_loop().time() + timeout_s

    async def limited_receive() -> Message:
        nonlocal seen
        left = deadline - asyncio.get_running_loop().time()
        try:
            message = await asyncio.wait_for(receive(), timeout=max(left, 0.0))
        except TimeoutError:
            raise _RequestError(
                408,
                f"the request body did not arrive within {timeout_s:g} s ({seen:,} bytes "
                f"came), this server's --body-timeout-s; send the whole request at once",
            ) from None
        seen += len(message.get("body", b""))
        if seen > max_bytes:
            raise _too_large(f"the request body passed {max_bytes:,} bytes", max_bytes)
        return message

    return Request(request.scope, limited_receive)


def _too_large(what: str, max_bytes: int) -> _RequestError:
    """413: ``what`` (the body's size) is over the request limit."""
    return _RequestError(
        413,
        f"{what}, over this server's limit of {max_bytes:,} bytes (--max-batch images of "
        f"--max-upload-mb each); send fewer or smaller images per request",
    )


class _Admission:
    """What the requests being answered hold: at most ``max_requests`` of them and
    ``max_pixels`` decoded pixels. A request that would pass either is refused at once (503,
    ``Retry-After``) instead of waiting in a queue that grows without bound."""

    def __init__(self, max_pixels: int, max_requests: int) -> None:
        self.max_pixels, self.max_requests = max_pixels, max_requests
        self.pixels = self.requests = 0
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._lock:
            if self.requests >= self.max_requests:
                raise _busy(
                    f"the server is answering {self.requests} requests, its limit "
                    f"(--max-pending {self.max_requests})"
                )
            if self.pixels and self.pixels + pixels > self.max_pixels:
                raise _busy(
                    f"the server is decoding {self.pixels / 1e6:.1f} million pixels of other "
                    f"requests, its limit is {self.max_pixels / 1e6:g} million "
                    f"(--max-inflight-mpx)"
                )
            self.pixels += pixels
            self.requests += 1
        try:
            yield
        finally:
            with self._lock:
                self.pixels -= pixels
                self.requests -= 1
            if pixels >= _TRIM_PIXELS:  # decoded images freed: hand their pages back
                give_back_freed_memory()


def _busy(what: str) -> _RequestError:
    """503: the server is at a limit; the client should retry shortly."""
    return _RequestError(
        503, f"{what}; retry in {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def _request_pixels(uploads: Sequence[tuple[str, bytes]], limits: _Limits) -> int:
    """Pixels the uploads decode to, from their headers (no pixel is decoded); 413 past
    ``max_request_mpx``. Unreadable headers count 0: the decoder names what is wrong."""
    from PIL import Image

    total = 0
    for _, data in uploads:
        with suppress(Exception), Image.open(io.BytesIO(data)) as img:
            total += img.size[0] * img.size[1]
    if total > limits.max_request_mpx * 1e6:
        raise _RequestError(
            413,
            f"the {len(uploads)} images of this request decode to {total / 1e6:.1f} million "
            f"pixels, over this server's limit of {limits.max_request_mpx:g} million per request "
            f"(--max-request-mpx); send fewer or smaller images",
        )
    return total


def _too_many(limits: _Limits) -> _RequestError:
    """413: more images than ``max_batch``."""
    return _RequestError(
        413,
        f"more than {limits.max_batch} images in one request, this server's --max-batch; send "
        f"at most {limits.max_batch} per request",
    )


async def _uploads(form: FormData, limits: _Limits) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each ``image`` upload, in order; refuses what is not one."""
    unknown = [key for key in form if key not in _FIELDS]
    if unknown:
        raise _RequestError(
            422,
            f"unknown form field {unknown[0]!r}; send each image as a field named image "
            f"(curl -F image=@PATH) and k as ?k=5 or -F k=5",
        )
    items = form.getlist("image")
    if not items:
        raise _RequestError(
            422,
            "no image uploaded; send each image as a multipart form field named image "
            "(curl -F image=@PATH URL)",
        )
    if len(items) > limits.max_batch:
        raise _too_many(limits)
    uploads = []
    for i, item in enumerate(items):
        if not isinstance(item, UploadFile):
            raise _RequestError(
                422,
                f"form field image #{i + 1} is text, not a file; upload the file itself "
                f"(curl -F image=@PATH: the @ sends the file)",
            )
        name = item.filename or f"<image {i}>"
        data = await item.read()
        if len(data) > limits.upload_bytes:
            raise _RequestError(
                413,
                f"{name} is {len(data):,} bytes, over this server's limit of "
                f"{limits.upload_bytes:,} per image (--max-upload-mb {limits.max_upload_mb:g}); "
                f"send a smaller image",
            )
        uploads.append((name, data))
    return uploads


def _json_response(data: Any) -> Response:
    """``data`` as the CLI prints it: strict JSON (no NaN), indented, newline-terminated."""
    return Response(to_json(data) + "\n", media_type="application/json")


def _error(status_code: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """``{"error": message}`` with line breaks escaped: one line, whatever the message held."""
    one_line = message.strip().replace("\r", "\\r").replace("\n", "\\n")
    return JSONResponse({"error": one_line}, status_code=status_code, headers=dict(headers or {}))


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal as ``{"error": ...}``: lscindex errors 4xx, starlette's 404/405 with the
    endpoints, anything else 500 with one line (the traceback goes to the server log)."""

    @app.exception_handler(LscIndexError)
    async def refused(request: Request, exc: LscIndexError) -> Response:
        return _error(getattr(exc, "status_code", 422), str(exc), getattr(exc, "headers", None))

    @app.exception_handler(HTTPException)
    async def no_route(request: Request, exc: HTTPException) -> Response:
        where = f"{request.method} {request.url.path}"
        return _error(
            exc.status_code,
            f"{str(exc.detail).lower()}: {where}; the endpoints are {', '.join(ENDPOINTS)}",
            exc.headers,
        )

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        first = (str(exc).strip().splitlines() or [""])[0]
        return _error(
            500,
            f"internal error answering {request.method} {request.url.path} "
            f"({type(exc).__name__}: {first}); the server log has the traceback: please report it",
        )


def _upload_openapi() -> dict[str, Any]:
    """The OpenAPI description of an upload endpoint (its body is parsed by hand, to refuse
    with one-line errors, so FastAPI cannot infer it)."""
    k = {"type": "integer", "minimum": 1, "default": DEFAULT_K}
    return {
        "parameters": [{"name": "k", "in": "query", "required": False, "schema": k}],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "properties": {
                            "image": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            },
                            "k": k,
                        },
                    }
                }
            },
        },
    }
