"""`lscindex serve` (lscindex/service.py, cli/lscindex_cli/serve_cmd.py).

One real server process per module, started from the command docs/store.md shows; every answer
is compared with what `lscindex query --json` prints for the same image.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import assert_same_shape, documented_json, run_cli, stop_process, strict_json

from lscindex.errors import DataError, InputError
from lscindex.retrieval import Retriever

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "store.md"
DOC_URL = "http://127.0.0.1:8000"
DOC_IMAGE = "data/glyphs/val/U+00004E/DejaVuSansMono.png"
# Test-only limits, small enough to reach cheaply (the documented command runs with them added).
MAX_BATCH, MAX_UPLOAD_MB, MAX_REQUEST_MPX, BODY_TIMEOUT_S = 4, 0.05, 0.02, 2.0


def documented_commands() -> list[tuple[str, list[str]]]:
    """(command, output lines) of each ``$ `` line in the console blocks of "Serving over HTTP"."""
    section = DOC.read_text().split("## Serving over HTTP", 1)[1].split("\n## ", 1)[0]
    found: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                found.append((line[2:], []))
            else:
                found[-1][1].append(line)
    return found


def send_curl(command: str, base: str, files_root: Path) -> httpx.Response:
    """Send what ``curl`` would for a documented command (``-F`` fields, one URL) to ``base``."""
    words = shlex.split(command)
    assert words[0] == "curl", command
    files: list[tuple[str, tuple[str, bytes, str]]] = []
    data: dict[str, str] = {}
    url = None
    args = iter(words[1:])
    for word in args:
        if word == "-F":
            name, _, value = next(args).partition("=")
            if value.startswith("@"):  # curl sends the base name unless ;filename= says
                path, *options = value[1:].split(";")
                named = dict(option.split("=", 1) for option in options)
                filename = named.get("filename", Path(path).name)
                files.append((name, (filename, (files_root / path).read_bytes(), "image/png")))
            else:
                data[name] = value
        elif word.startswith(DOC_URL):
            url = base + word[len(DOC_URL) :]
        else:
            raise AssertionError(f"send_curl does not know curl's {word!r}; teach it")
    assert url is not None, command
    if files or data:
        return httpx.post(url, files=files, data=data, timeout=60)
    return httpx.get(url, timeout=60)


def wait_for_server(proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 180) -> str:
    """The base URL once ``proc`` answers /health (it prints the URL on stderr)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{log.read_text()}")
        found = re.search(r"serving on (http://127\.0\.0\.1:\d+) ", log.read_text())
        if found:
            try:
                if httpx.get(found.group(1) + "/health", timeout=5).status_code == 200:
                    return found.group(1)
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"no answer on /health within {timeout_s} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(
    run_dir: Path, store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """(base URL, log file) of the documented ``lscindex serve`` on this module's run and store,
    on a free port, with the test limits; always terminated."""
    (serve_line,) = [c for c, _ in documented_commands() if c.startswith("lscindex serve")]
    paths = {"runs/glyphs": str(run_dir), "emb.zarr": str(store)}
    args = [paths.get(word, word) for word in shlex.split(serve_line)[2:]]
    args += ["--host", "127.0.0.1", "--port", "0", "--device", "cpu"]
    args += ["--max-batch", str(MAX_BATCH), "--max-upload-mb", str(MAX_UPLOAD_MB)]
    args += ["--max-request-mpx", str(MAX_REQUEST_MPX), "--body-timeout-s", str(BODY_TIMEOUT_S)]
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lscindex_cli.main", "serve", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield wait_for_server(proc, log), log
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def val_images(image_folder: Path) -> list[Path]:
    """The 12 validation images (6 classes x 2), sorted."""
    return sorted((image_folder / "val").rglob("*.png"))


def cli_document(
    capsys: pytest.CaptureFixture[str], run_dir: Path, store: Path | None, *images: str, k: int
) -> tuple[int, str]:
    """(exit status, stdout) of ``lscindex query IMAGES --json -k K`` with the server's run and
    store (``store`` None: ``--no-store``)."""
    where = ["--store", str(store)] if store is not None else ["--no-store"]
    args = ["query", *images, "--run", str(run_dir), *where, "--device", "cpu", "--json"]
    code, out, _ = run_cli([*args, "-k", str(k)], capsys)
    return code, out


def upload(*paths: Path | str, names: list[str] | None = None) -> list[Any]:
    """httpx ``files`` for ``paths``, each named by its path (or by ``names``)."""
    return [
        ("image", (str(n), Path(p).read_bytes(), "image/png"))
        for p, n in zip(paths, names or paths, strict=True)
    ]


def test_health_and_info_name_what_answers(
    server: tuple[str, Path],
    run_dir: Path,
    store: Path,
    val_images: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = server
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    info = strict_json(httpx.get(f"{url}/info").text)
    _, out = cli_document(capsys, run_dir, store, str(val_images[0]), k=5)
    query = strict_json(out)
    assert (info["schema_version"], info["kind"]) == (1, "info")
    for key in ("run", "store", "index", "chosen", "score_meaning"):
        assert info[key] == query[key], key
    assert info["run"]["path"] == str(run_dir) and info["store"]["rows"] == 108
    assert info["chosen"] == {
        "run": "given",
        "store": "given",
        "index": "none beside the store: exact search in memory",
    }
    assert info["limits"] == {
        "max_upload_mb": MAX_UPLOAD_MB,
        "max_batch": MAX_BATCH,
        "max_request_mpx": MAX_REQUEST_MPX,
        "max_inflight_mpx": 200.0,
        "max_pending": 64,
        "body_timeout_s": BODY_TIMEOUT_S,
        "default_k": 5,
    }
    assert_same_shape(info, documented_json(DOC, "info"))


def test_search_and_classify_print_what_query_prints(
    server: tuple[str, Path],
    run_dir: Path,
    store: Path,
    val_images: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = server
    image = val_images[3]
    _, with_store = cli_document(capsys, run_dir, store, str(image), k=3)
    _, classes_only = cli_document(capsys, run_dir, None, str(image), k=3)
    answers = {
        "search, k in the query": httpx.post(f"{url}/search?k=3", files=upload(image)),
        "search, k in the form": httpx.post(f"{url}/search", files=upload(image), data={"k": "3"}),
        "classify": httpx.post(f"{url}/classify?k=3", files=upload(image)),
    }
    for what, response in answers.items():
        assert response.status_code == 200, (what, response.text)
    assert answers["search, k in the query"].text == with_store  # byte for byte
    assert answers["search, k in the form"].text == with_store
    assert answers["classify"].text == classes_only
    found = strict_json(with_store)["results"][0]
    assert len(found["classes"]) == 3 and len(found["neighbors"]) == 3
    assert strict_json(classes_only)["results"][0]["neighbors"] == []
    _, default_k = cli_document(capsys, run_dir, store, str(image), k=5)
    assert httpx.post(f"{url}/search", files=upload(image)).text == default_k


def test_several_images_and_an_unreadable_one_answer_as_one_query(
    server: tuple[str, Path],
    run_dir: Path,
    store: Path,
    val_images: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = server
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    images = [val_images[0], notes, val_images[7]]
    code, out = cli_document(capsys, run_dir, store, *map(str, images), k=2)
    assert code == 1  # the CLI prints the document and exits 1; HTTP answers 200 with it
    response = httpx.post(f"{url}/search?k=2", files=upload(*images))
    assert response.status_code == 200
    assert response.text == out
    results = strict_json(out)["results"]
    assert [r["error"] is None for r in results] == [True, False, True]
    assert results[1]["error"] == f"{notes} is not an image Pillow can read"


def test_concurrent_requests_get_the_cli_answers(
    server: tuple[str, Path],
    run_dir: Path,
    store: Path,
    val_images: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = server
    jobs = [(endpoint, image) for image in val_images[:8] for endpoint in ("search", "classify")]
    expected = {
        (endpoint, image): cli_document(
            capsys, run_dir, store if endpoint == "search" else None, str(image), k=4
        )[1]
        for endpoint, image in jobs
    }

    def ask(job: tuple[str, Path]) -> httpx.Response:
        endpoint, image = job
        return httpx.post(f"{url}/{endpoint}?k=4", files=upload(image), timeout=120)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, jobs))
    for job, response in zip(jobs, answers, strict=True):
        assert response.status_code == 200, response.text
        assert response.text == expected[job], job


def test_documented_requests_answer_as_shown(
    server: tuple[str, Path],
    run_dir: Path,
    store: Path,
    val_images: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = server
    monkeypatch.chdir(tmp_path)
    (tmp_path / DOC_IMAGE).parent.mkdir(parents=True)
    shutil.copy(val_images[5], tmp_path / DOC_IMAGE)
    _, by_path = cli_document(capsys, run_dir, store, DOC_IMAGE, k=3)
    _, classes_only = cli_document(capsys, run_dir, None, DOC_IMAGE, k=3)
    curls = [(c, shown) for c, shown in documented_commands() if c.startswith("curl ")]
    assert len(curls) == 7
    for command, shown in curls:
        response = send_curl(command, url, tmp_path)
        if shown:  # the output the doc shows, exactly
            assert response.text.strip() == "\n".join(shown), command
        elif "filename=" in command:
            assert response.text == by_path, command
        elif "/search" in command or "/classify" in command:
            assert response.status_code == 200, (command, response.text)
            expected = strict_json(by_path if "/search" in command else classes_only)
            expected["results"][0]["image"] = Path(DOC_IMAGE).name  # curl sends the base name
            assert strict_json(response.text) == expected, command
        else:
            assert response.status_code == 200 and response.json()["kind"] == "info", command


def test_uploads_are_read_by_the_rules_of_read_image(
    val_images: list[Path], tmp_path: Path
) -> None:
    from PIL import Image

    from lscindex.data import read_image, read_image_bytes

    tiny, empty, text = tmp_path / "tiny.png", tmp_path / "empty.png", tmp_path / "notes.txt"
    Image.new("L", (2, 9)).save(tiny)
    empty.write_bytes(b"")
    text.write_text("hello")
    gray = tmp_path / "gray.png"
    Image.open(val_images[1]).convert("L").save(gray)
    for path in (val_images[0], gray):
        from_file, uploaded = read_image(path), read_image_bytes(path.read_bytes(), str(path))
        assert uploaded.mode == "RGB" and uploaded.tobytes() == from_file.tobytes()
    for path in (tiny, empty, text):
        with pytest.raises(DataError) as on_disk:
            read_image(path)
        with pytest.raises(DataError) as in_memory:
            read_image_bytes(path.read_bytes(), str(path))
        assert str(in_memory.value) == str(on_disk.value) and str(path) in str(on_disk.value)


def _post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, timeout=60, **kwargs)


def _bad_requests(image: Path, tmp_path: Path) -> list[tuple[str, Any, int, str]]:
    """(what, request(url) -> response, status, part of the error)."""
    tiny = tmp_path / "tiny.png"
    from PIL import Image

    Image.new("RGB", (2, 2)).save(tiny)
    strip = tmp_path / "strip.png"  # at 4 x 5,000,000 px, resizing would make gigabytes
    Image.new("L", (4, 2_000)).save(strip)
    wide = tmp_path / "wide.png"  # 30,000 px: over the request's 20,000 before it is decoded
    Image.new("L", (200, 150)).save(wide)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (int(MAX_UPLOAD_MB * 2**20) + 1))
    huge = tmp_path / "huge.png"  # over the whole request's limit: refused before it is read
    huge.write_bytes(b"\0" * (MAX_BATCH + 2) * len(big.read_bytes()))
    ok = upload(image)
    boundary = {"content-type": "multipart/form-data; boundary=xyz"}
    part = b'--xyz\r\ncontent-disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    stream = [part, *[b"\0" * 2**16] * 6]  # chunked: no declared length, counted as it comes
    return [
        ("not an image", lambda u: _post(f"{u}/search", files=upload(text)), 422,
         f"{text} is not an image Pillow can read"),
        ("two unreadable", lambda u: _post(f"{u}/search", files=upload(text, empty)), 422,
         f"none of the 2 images could be read (first: {text} is not an image"),
        ("empty file", lambda u: _post(f"{u}/classify", files=upload(empty)), 422,
         f"{empty} is empty (0 bytes)"),
        ("too small", lambda u: _post(f"{u}/search", files=upload(tiny)), 422,
         "is 2x2 px, below the 4 px minimum side"),
        ("too long", lambda u: _post(f"{u}/classify", files=upload(strip)), 422,
         "is 4x2000 px, sides more than 100:1; crop or pad it"),
        ("too many pixels", lambda u: _post(f"{u}/classify", files=upload(wide)), 413,
         "decode to 0.0 million pixels, over this server's limit of 0.02 million per request"),
        ("no file", lambda u: _post(f"{u}/search", data={"k": "3"}), 422, "no image uploaded"),
        ("no body", lambda u: _post(f"{u}/classify"), 422, "no image uploaded"),
        ("text, not a file", lambda u: _post(f"{u}/search", data={"image": str(image)}), 422,
         "form field image #1 is text, not a file"),
        ("unknown field", lambda u: _post(f"{u}/search", files=[("file", ok[0][1])]), 422,
         "unknown form field 'file'"),
        ("unknown parameter", lambda u: _post(f"{u}/search?top=3", files=ok), 422,
         "unknown query parameter 'top'"),
        ("k=0", lambda u: _post(f"{u}/search?k=0", files=ok), 422,
         "k must be a positive integer, got '0'"),
        ("k=abc", lambda u: _post(f"{u}/classify?k=abc", files=ok), 422,
         "k must be a positive integer, got 'abc'"),
        ("k=-1 in the form", lambda u: _post(f"{u}/search", files=ok, data={"k": "-1"}), 422,
         "k must be a positive integer, got '-1'"),
        ("k twice", lambda u: _post(f"{u}/search?k=3", files=ok, data={"k": "4"}), 422,
         "k given 2 times ('3', '4')"),
        ("too many", lambda u: _post(f"{u}/search", files=upload(*[image] * (MAX_BATCH + 1))),
         413, f"more than {MAX_BATCH} images in one request"),
        ("far too many", lambda u: _post(f"{u}/search", files=upload(*[image] * 12)), 413,
         f"more than {MAX_BATCH} images in one request"),
        ("oversized image", lambda u: _post(f"{u}/search", files=upload(big)), 413,
         f"{big} is {big.stat().st_size:,} bytes, over this server's limit"),
        ("oversized request", lambda u: _post(f"{u}/search", files=upload(huge)), 413,
         "the request declares"),
        ("oversized stream", lambda u: _post(f"{u}/search", content=iter(stream),
         headers=boundary), 413, "the request body passed"),
        ("not multipart", lambda u: _post(f"{u}/search", content=b"-" * 100, headers=boundary),
         400, "the request body is not valid multipart form data"),
        ("wrong method", lambda u: httpx.get(f"{u}/search"), 405,
         "method not allowed: GET /search; the endpoints are GET /health"),
        ("no endpoint", lambda u: httpx.get(f"{u}/nowhere"), 404, "not found: GET /nowhere"),
        ("no docs page", lambda u: httpx.get(f"{u}/docs"), 404, "not found: GET /docs"),
    ]  # fmt: skip


def test_bad_requests_get_a_status_and_one_line_error(
    server: tuple[str, Path], val_images: list[Path], tmp_path: Path
) -> None:
    url, _ = server
    for what, send, status, part in _bad_requests(val_images[0], tmp_path):
        response = send(url)
        assert response.status_code == status, (what, response.text)
        assert "\n" not in response.text.strip(), what
        body = strict_json(response.text)
        assert list(body) == ["error"] and part in body["error"], (what, body)


def test_a_stalled_upload_gets_408_after_the_body_timeout(server: tuple[str, Path]) -> None:
    """A client that declares a body and stops sending holds its connection only until
    --body-timeout-s (2 s here), then gets a one-line 408."""
    url, _ = server
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /classify HTTP/1.1\r\nhost: {host}\r\ncontent-length: 5000\r\n"
        "content-type: multipart/form-data; boundary=xyz\r\n\r\n--xyz\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(head.encode())
        start = time.monotonic()
        answer = conn.recv(65536)
        waited = time.monotonic() - start
        length = int(re.search(rb"content-length: (\d+)", answer, re.I).group(1))  # type: ignore[union-attr]
        while len(answer.split(b"\r\n\r\n", 1)[-1]) < length:
            answer += conn.recv(65536)  # the body may come in a segment of its own
    head, body_bytes = answer.decode().split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 408"), head
    assert BODY_TIMEOUT_S - 0.5 < waited < BODY_TIMEOUT_S + 10
    body = strict_json(body_bytes)
    assert "the request body did not arrive within 2 s (7 bytes came)" in body["error"]


def test_openapi_describes_exactly_the_endpoints(server: tuple[str, Path]) -> None:
    from lscindex.service import ENDPOINTS

    url, _ = server
    spec = httpx.get(f"{url}/openapi.json").json()
    described = {f"{m.upper()} {p}" for p, methods in spec["paths"].items() for m in methods}
    assert described | {"GET /openapi.json"} == set(ENDPOINTS)
    assert spec["paths"]["/search"]["post"]["parameters"][0]["name"] == "k"


def test_the_server_log_has_no_traceback(server: tuple[str, Path]) -> None:
    """Run after the tests above (pytest keeps file order): none of them crashed the server."""
    url, log = server
    assert httpx.get(f"{url}/health").status_code == 200
    text = log.read_text()
    assert "POST /search" in text and "Traceback" not in text, text[-3000:]


# -- in process: the app without a store, a bug, the limits, the command's refusals ---------------
def test_a_server_without_store_classifies_and_refuses_search(
    run_dir: Path, val_images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from fastapi.testclient import TestClient

    from lscindex.service import create_app

    client = TestClient(create_app(Retriever.open(run_dir, store=False, device="cpu")))
    _, expected = cli_document(capsys, run_dir, None, str(val_images[2]), k=3)
    assert client.post("/classify?k=3", files=upload(val_images[2])).text == expected
    refused = client.post("/search", files=upload(val_images[2]))
    assert refused.status_code == 409
    assert refused.json() == {
        "error": "this server searches no store (none asked for); POST /classify for classes "
        "only, or restart lscindex serve with --store STORE"
    }
    info = client.get("/info").json()
    assert (info["store"], info["index"], info["chosen"]["store"]) == (None, None, "none asked for")


def test_an_unexpected_error_is_a_one_line_500(
    run_dir: Path, val_images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from lscindex.service import create_app

    retriever = Retriever.open(run_dir, store=False, device="cpu")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(retriever, "query", broken)
    client = TestClient(create_app(retriever), raise_server_exceptions=False)
    response = client.post("/classify", files=upload(val_images[0]))
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal error answering POST /classify (RuntimeError: boom); the server log "
        "has the traceback: please report it"
    }


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_batch": 0}, "max_batch must be a positive integer, got 0"),
        ({"max_batch": True}, "max_batch must be a positive integer, got True"),
        ({"max_upload_mb": 0}, "max_upload_mb must be a positive number of MiB, got 0"),
        ({"max_upload_mb": float("nan")}, "max_upload_mb must be a positive number of MiB"),
        ({"max_request_mpx": 0}, "max_request_mpx must be a positive number of million pixels"),
        ({"max_inflight_mpx": "9"}, "max_inflight_mpx must be a positive number of million"),
        ({"max_pending": 0}, "max_pending must be a positive integer, got 0; pass e.g. 64"),
    ],
)
def test_create_app_refuses_limits_that_are_not_positive(
    run_dir: Path, limits: dict[str, Any], message: str
) -> None:
    from lscindex.service import create_app

    with pytest.raises(InputError, match=re.escape(message)):
        create_app(Retriever.open(run_dir, store=False, device="cpu"), **limits)


def test_serve_refuses_a_taken_port_and_an_address_of_another_machine(
    run_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_cli(
            ["serve", "--run", str(run_dir), "--host", "127.0.0.1", "--port", str(port)], capsys
        )
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use); stop what" in err
    # 192.0.2.1 (TEST-NET-1) is no address of this machine; no name lookup is involved
    code, _, err = run_cli(["serve", "--run", str(run_dir), "--host", "192.0.2.1"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "cannot listen on 192.0.2.1:8000" in err and "pass an address of this machine" in err
    code, _, err = run_cli(["serve", "--port", "70000"], capsys)
    assert code == 2 and "--port" in err and "65535" in err


def test_serve_help_states_the_library_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lscindex.service import create_app
    from lscindex_cli._common import default_of

    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(["serve", "--help"], capsys)
    text = " ".join(out.replace("\u2502", " ").split())  # the words, without the box
    assert code == 0
    assert f"in MiB (default {default_of(create_app, 'max_upload_mb'):g})" in text
    assert f"one request (default {default_of(create_app, 'max_batch')})" in text
    assert f"in millions (default {default_of(create_app, 'max_request_mpx'):g})" in text
    assert f"Retry-After (default {default_of(create_app, 'max_inflight_mpx'):g})" in text
    assert f"Retry-After (default {default_of(create_app, 'max_pending')})" in text
    assert f"slower: 408 (default {default_of(create_app, 'body_timeout_s'):g})" in text


def test_decoded_pixels_past_the_servers_budget_get_503_with_retry_after(
    run_dir: Path, val_images: list[Path]
) -> None:
    """Requests hold their images' pixels while answered; one that would pass the budget is
    refused at once (no queue), and the budget is whole again after each answer."""
    from fastapi.testclient import TestClient

    from lscindex.service import create_app

    app = create_app(Retriever.open(run_dir, store=False, device="cpu"), max_inflight_mpx=0.003)
    budget = app.state.admission
    with TestClient(app) as client:
        assert client.post("/classify", files=upload(val_images[0])).status_code == 200
        with budget.hold(2_000):  # another request's 2,000 px: 32 x 32 more would pass 3,000
            refused = client.post("/classify", files=upload(val_images[0]))
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "decoding 0.0 million pixels of other requests" in refused.json()["error"]
        assert "(--max-inflight-mpx); retry in 1 s" in refused.json()["error"]
        assert budget.pixels == budget.requests == 0
        assert client.post("/classify", files=upload(*val_images[:2])).status_code == 200


def test_requests_past_max_pending_get_503_at_once(run_dir: Path, val_images: list[Path]) -> None:
    from fastapi.testclient import TestClient

    from lscindex.service import create_app

    app = create_app(Retriever.open(run_dir, store=False, device="cpu"), max_pending=2)
    admission = app.state.admission
    with TestClient(app) as client, admission.hold(0), admission.hold(0):
        refused = client.post("/classify", files=upload(val_images[0]))
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "answering 2 requests, its limit (--max-pending 2); retry in 1 s" in refused.text
    assert admission.requests == 0


def test_neither_the_library_nor_the_cli_imports_fastapi_until_serve_runs() -> None:
    code = (
        "import sys, lscindex, lscindex.retrieval, lscindex_cli.main; "
        "print(sorted({'fastapi', 'uvicorn', 'starlette'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def test_sixteen_clients_get_every_answer_in_bounded_memory_and_sigterm_drains(
    run_dir: Path, store: Path, val_images: list[Path], tmp_path: Path
) -> None:
    """A small benchmarks/serve_load.py: 16 concurrent clients, 320 requests (classify and
    search alternating): no error, the server's RSS back within 150 MiB of where it was; then
    SIGTERM while requests are in flight: each is answered before the server exits."""
    log = tmp_path / "server.log"
    serve = [sys.executable, "-m", "lscindex_cli.main", "serve", "--run", str(run_dir)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*serve, "--store", str(store), "--port", "0", "--device", "cpu"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = wait_for_server(proc, log)
        jobs = [("classify", "search")[i % 2] for i in range(320)]

        def ask(i: int) -> int:
            files = upload(val_images[i % len(val_images)])
            return httpx.post(f"{url}/{jobs[i]}", files=files, timeout=120).status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(ask, range(32)))  # warm-up
            before = _rss_mib(proc.pid)
            statuses = list(pool.map(ask, range(len(jobs))))
        assert statuses == [200] * len(jobs)
        assert _rss_mib(proc.pid) < before + 150
        with ThreadPoolExecutor(max_workers=16) as pool:
            busy = [pool.submit(ask, i) for i in range(16)]
            time.sleep(0.3)  # the requests are in flight
            proc.send_signal(signal.SIGTERM)
            assert [f.result() for f in busy] == [200] * 16
        # uvicorn re-raises the signal once drained: the status says SIGTERM ended it (143)
        assert proc.wait(timeout=60) == -signal.SIGTERM
        assert "Traceback" not in log.read_text()
    finally:
        stop_process(proc)
