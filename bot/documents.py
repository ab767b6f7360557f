"""The text of the documents a study group shares: PDF lecture notes, Word documents, slide
decks, Markdown, HTML and plain text, for /summarize and ``ask summarize --file``.

Read by pypdf, python-docx and python-pptx (pure Python but for lxml, each the kept library
for its format). pypdf read a 100-page PDF (a line of about 500 characters a page, made by
tests/test_documents.make_pdf) at about 1,500 pages/s on this project's 2-core CPU, so a
lecture's notes take well under a second. markitdown, which wraps the same kind of readers,
was not measured: it also pulls magika (an ONNX model with onnxruntime) and a dozen more
packages for text the bot only summarizes. HTML is read by the standard library's parser
(scripts and styles left out).

Reading runs in a child process of its own (``read_document_soon``), never on the event
loop nor in a thread it cannot stop: a hostile file (a PDF whose pages share one huge
content stream, HTML that makes the parser quadratic) is killed at ``READ_TIMEOUT_S``, and
its memory is capped (``MAX_READER_MEMORY``). Each limit has its own line:
``MAX_DOCUMENT_BYTES``, ``MAX_HTML_BYTES``, ``MAX_PAGES``, the text read (``max_chars``:
what the task can take), and for the zip-based formats (DOCX, PPTX) what one part would
unpack to (``MAX_PART_BYTES``), so a zip bomb is refused before it is opened. A PDF without
a text layer (a scan) is refused in one line: pypdf cannot draw its pages, so the describe
task cannot read them either.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import PurePath

from handlers.errors import InvalidInput

MAX_DOCUMENT_BYTES = 20 * 2**20
"""The largest document read: far more than a lecture's notes or slides."""
MAX_PAGES = 300
"""The most PDF pages (or slides) read."""
MAX_PART_BYTES = 16 * 2**20
"""The most one part of a DOCX or PPTX may unpack to: 20 MB of document.xml takes lxml
455 MiB; a zip bomb declares far more."""
MAX_HTML_BYTES = 2**20
"""The largest HTML page read: the standard parser is quadratic on some input (fixed in
Python 3.11.13)."""
READ_TIMEOUT_S = 60.0
"""The longest a document may take to read; its reader is then killed."""
MAX_READER_MEMORY = 2 * 2**30
"""The address space a reader process may take (Linux)."""

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
SUFFIXES = (*TEXT_SUFFIXES, ".html", ".htm", ".pdf", ".docx", ".pptx")
KINDS = "a .txt, .md, .html, .pdf, .docx or .pptx file"


def is_document(name: str) -> bool:
    return PurePath(name).suffix.lower() in SUFFIXES


def read_document(
    name: str, data: bytes, max_pages: int = MAX_PAGES, max_chars: int | None = None
) -> str:
    """The text of the file ``name`` holding ``data``; ``InvalidInput("file")`` saying why
    when it cannot be read (its kind, its size, damage, encryption, a scan, more text than
    ``max_chars``)."""
    suffix = PurePath(name).suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidInput("file", f"attach {KINDS}")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise InvalidInput("file", f"is larger than {MAX_DOCUMENT_BYTES // 2**20} MiB")
    if suffix in TEXT_SUFFIXES:
        text = _utf8(data)
    elif suffix in (".html", ".htm"):
        if len(data) > MAX_HTML_BYTES:
            raise InvalidInput("file", f"is an HTML page over {MAX_HTML_BYTES // 2**20} MiB")
        text = html_text(_utf8(data))
    elif suffix == ".pdf":
        text = pdf_text(data, max_pages, max_chars)
    else:
        _check_zip(data)
        text = docx_text(data) if suffix == ".docx" else pptx_text(data, max_pages)
    if max_chars is not None and len(text) > max_chars:
        raise InvalidInput(
            "file",
            f"holds over {max_chars:,} characters of text, more than can be read at once; "
            "send a part of it",
        )
    return text


def _read_in_child(connection: object, name: str, data: bytes, max_chars: int | None) -> None:
    """A reader process: its memory capped, its answer (text, or the refusal) sent back."""
    if sys.platform == "linux":
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MAX_READER_MEMORY, MAX_READER_MEMORY))
    try:
        answer: tuple[str, str] = ("text", read_document(name, data, max_chars=max_chars))
    except InvalidInput as exc:
        answer = ("refused", exc.message)
    except MemoryError:
        answer = ("refused", "needs more memory to read than a document may take")
    except Exception:  # a reader's own bug on a hostile file
        answer = ("refused", "is damaged and cannot be read")
    connection.send(answer)  # type: ignore[attr-defined]


def _read_isolated(name: str, data: bytes, max_chars: int | None, timeout_s: float) -> str:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    reader = context.Process(target=_read_in_child, args=(sender, name, data, max_chars),
                             name="document-reader", daemon=True)  # fmt: skip
    reader.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            raise InvalidInput("file", f"took over {timeout_s:g} s to read; send a smaller one")
        kind, said = receiver.recv()
    except EOFError:  # the reader died (its memory cap, a crash)
        raise InvalidInput("file", "could not be read: its reader ran out of memory") from None
    finally:
        reader.kill()
        reader.join()
        receiver.close()
    if kind == "refused":
        raise InvalidInput("file", said)
    return said


async def read_document_soon(name: str, data: bytes, max_chars: int | None = None) -> str:
    """``read_document`` in a child process, killed past ``READ_TIMEOUT_S``; plain text
    needs none."""
    if PurePath(name).suffix.lower() in TEXT_SUFFIXES:
        return read_document(name, data, max_chars=max_chars)
    return await asyncio.to_thread(_read_isolated, name, data, max_chars, READ_TIMEOUT_S)


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("file", "is not UTF-8 text") from None


class _Text(HTMLParser):
    """The text of an HTML page, a block per line, scripts and styles left out."""

    BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6",
                        "section", "article", "pre", "blockquote", "td", "th"})  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "noscript", "template"):
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "noscript", "template"):
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def html_text(page: str) -> str:
    reader = _Text()
    reader.feed(page)
    reader.close()
    lines = (" ".join(line.split()) for line in "".join(reader.parts).splitlines())
    return "\n".join(line for line in lines if line)


def pdf_text(data: bytes, max_pages: int = MAX_PAGES, max_chars: int | None = None) -> str:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):  # "" opens many "protected" PDFs
            raise InvalidInput("file", "is an encrypted PDF; send one without a password")
        pages = len(reader.pages)
        if pages > max_pages:
            raise InvalidInput("file", f"has {pages} pages; the limit is {max_pages}")
        texts, read = [], 0
        for page in reader.pages:  # stops once past what can be read at once
            texts.append(page.extract_text() or "")
            read += len(texts[-1])
            if max_chars is not None and read > max_chars:
                break
    except FileNotDecryptedError:
        raise InvalidInput("file", "is an encrypted PDF; send one without a password") from None
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
        raise InvalidInput("file", "is a damaged PDF and cannot be read") from exc
    text = "\n\n".join(t.strip() for t in texts if t.strip())
    if not text:
        raise InvalidInput(
            "file",
            "has no text to read: a scanned PDF is pictures of pages; send the pages as "
            "images to /describe, or a PDF with its text",
        )
    return text


def _check_zip(data: bytes) -> None:
    """A DOCX or PPTX is a zip: refused when damaged, or when one part would unpack to more
    than ``MAX_PART_BYTES`` (the sizes its directory declares, read without unpacking)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            largest = max((entry.file_size for entry in archive.infolist()), default=0)
    except zipfile.BadZipFile:
        raise InvalidInput("file", "is damaged and cannot be read") from None
    if largest > MAX_PART_BYTES:
        raise InvalidInput(
            "file", f"has a part that would unpack to over {MAX_PART_BYTES // 2**20} MiB; "
            "it is not read"
        )  # fmt: skip


def docx_text(data: bytes) -> str:
    import docx

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises KeyError, ValueError, lxml's errors...
        raise InvalidInput("file", "is a damaged Word document and cannot be read") from exc
    lines = [paragraph.text for paragraph in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            lines.append(" | ".join(cell.text for cell in row.cells))
    return "\n".join(line for line in lines if line.strip())


def pptx_text(data: bytes, max_slides: int = MAX_PAGES) -> str:
    import pptx

    try:
        deck = pptx.Presentation(io.BytesIO(data))
    except Exception as exc:  # python-pptx raises KeyError, ValueError, lxml's errors...
        raise InvalidInput("file", "is a damaged slide deck and cannot be read") from exc
    if len(deck.slides) > max_slides:
        raise InvalidInput("file", f"has {len(deck.slides)} slides; the limit is {max_slides}")
    slides = []
    for number, slide in enumerate(deck.slides, 1):
        lines = [
            paragraph.text
            for shape in slide.shapes
            if shape.has_text_frame
            for paragraph in shape.text_frame.paragraphs
            if paragraph.text.strip()
        ]
        if lines:
            slides.append(f"Slide {number}:\n" + "\n".join(lines))
    return "\n\n".join(slides)
