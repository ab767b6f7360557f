"""The text of the documents a study group shares: PDF lecture notes, Word documents, slide
decks, Markdown, HTML and plain text, for /summarize and ``ask summarize --file``.

Read by pypdf, python-docx and python-pptx (pure Python but for lxml, each the kept library
for its format). pypdf read a 100-page PDF (a line of about 500 characters a page, made by
tests/test_documents.make_pdf) at about 1,500 pages/s on this project's 2-core CPU, so a
lecture's notes take well under a second. markitdown, which wraps the same kind of readers,
was not measured: it also pulls magika (an ONNX model with onnxruntime) and a dozen more
packages for text the bot only summarizes. HTML is read by the standard library's parser
(scripts and styles left out).

Reading runs in a thread (``read_document_soon``), never on the event loop, within limits
each with its own line: ``MAX_DOCUMENT_BYTES``, ``MAX_PAGES``, ``READ_TIMEOUT_S``, and for
the zip-based formats (DOCX, PPTX) what they would unpack to (``MAX_UNPACKED_BYTES``), so a
zip bomb is refused before it is opened. A PDF without a text layer (a scan) is refused in
one line: pypdf cannot draw its pages, so the describe task cannot read them either.
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from html.parser import HTMLParser
from pathlib import PurePath

from handlers.errors import InvalidInput

MAX_DOCUMENT_BYTES = 20 * 2**20
"""The largest document read: far more than a lecture's notes or slides."""
MAX_PAGES = 300
"""The most PDF pages (or slides) read."""
MAX_UNPACKED_BYTES = 200 * 2**20
"""The most a DOCX or PPTX may unpack to; a zip bomb declares far more."""
READ_TIMEOUT_S = 60.0
"""The longest a document may take to read."""

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
SUFFIXES = (*TEXT_SUFFIXES, ".html", ".htm", ".pdf", ".docx", ".pptx")
KINDS = "a .txt, .md, .html, .pdf, .docx or .pptx file"


def is_document(name: str) -> bool:
    return PurePath(name).suffix.lower() in SUFFIXES


def read_document(name: str, data: bytes, max_pages: int = MAX_PAGES) -> str:
    """The text of the file ``name`` holding ``data``; ``InvalidInput("file")`` saying why
    when it cannot be read (its kind, its size, damage, encryption, a scan)."""
    suffix = PurePath(name).suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidInput("file", f"attach {KINDS}")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise InvalidInput("file", f"is larger than {MAX_DOCUMENT_BYTES // 2**20} MiB")
    if suffix in TEXT_SUFFIXES:
        return _utf8(data)
    if suffix in (".html", ".htm"):
        return html_text(_utf8(data))
    if suffix == ".pdf":
        return pdf_text(data, max_pages)
    _check_zip(data)
    return docx_text(data) if suffix == ".docx" else pptx_text(data, max_pages)


async def read_document_soon(name: str, data: bytes) -> str:
    """``read_document`` in a thread, within ``READ_TIMEOUT_S``."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(read_document, name, data), READ_TIMEOUT_S)
    except TimeoutError:
        raise InvalidInput(
            "file", f"took over {READ_TIMEOUT_S:g} s to read; send a smaller one"
        ) from None


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


def pdf_text(data: bytes, max_pages: int = MAX_PAGES) -> str:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):  # "" opens many "protected" PDFs
            raise InvalidInput("file", "is an encrypted PDF; send one without a password")
        pages = len(reader.pages)
        if pages > max_pages:
            raise InvalidInput("file", f"has {pages} pages; the limit is {max_pages}")
        texts = [page.extract_text() or "" for page in reader.pages]
    except FileNotDecryptedError:
        raise InvalidInput("file", "is an encrypted PDF; send one without a password") from None
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
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
    """A DOCX or PPTX is a zip: refused when damaged, or when it would unpack to more than
    ``MAX_UNPACKED_BYTES`` (the sizes its directory declares, read without unpacking)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(entry.file_size for entry in archive.infolist())
    except zipfile.BadZipFile:
        raise InvalidInput("file", "is damaged and cannot be read") from None
    if unpacked > MAX_UNPACKED_BYTES:
        raise InvalidInput(
            "file", f"would unpack to over {MAX_UNPACKED_BYTES // 2**20} MiB; it is not read"
        )


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
