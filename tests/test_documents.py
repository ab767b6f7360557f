"""Documents a study group shares, made in the test: their text read for /summarize, chat and
ask summarize --file, and every bad one refused in one line (#31)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import discord
import docx
import pptx
import pytest
from pypdf import PdfWriter

import bot.documents
from bot.cli import main
from bot.documents import read_document
from handlers.base import InvalidInput
from tests.test_discord import (  # noqa: F401 - harness, simcord_bot, stack: fixtures
    Harness,
    harness,
    scene,
    simcord_bot,
    stack,
)


def make_pdf(pages: list[str]) -> bytes:
    """A PDF with a line of Helvetica text on each page, its cross-reference table exact."""
    count = len(pages)
    kids = " ".join(f"{4 + 2 * k} 0 R" for k in range(count))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for k, text in enumerate(pages):
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font "
            f"<< /F1 3 0 R >> >> /Contents {5 + 2 * k} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    table = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, table,
    )  # fmt: skip
    return out


def blank_pdf(password: str | None = None) -> bytes:
    """A page with nothing on it, as a scan is to a text reader; encrypted with a password."""
    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    if password is not None:
        writer.encrypt(password)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def make_docx() -> bytes:
    document = docx.Document()
    document.add_heading("Enzymes", level=1)
    document.add_paragraph("Enzymes lower the activation energy of reactions.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "amylase", "starch"
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def make_pptx() -> bytes:
    deck = pptx.Presentation()
    for title, body in (
        ("Photosynthesis", "Light becomes sugar."),
        ("Respiration", "Sugar becomes energy."),
    ):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    buffer = io.BytesIO()
    deck.save(buffer)
    return buffer.getvalue()


def test_each_kind_gives_its_text() -> None:
    assert read_document("notes.pdf", make_pdf(["Cells divide.", "Genes copy."])) == (
        "Cells divide.\n\nGenes copy."
    )
    assert read_document("notes.docx", make_docx()) == (
        "Enzymes\nEnzymes lower the activation energy of reactions.\namylase | starch"
    )
    assert read_document("deck.pptx", make_pptx()) == (
        "Slide 1:\nPhotosynthesis\nLight becomes sugar.\n\n"
        "Slide 2:\nRespiration\nSugar becomes energy."
    )
    page = b"<html><style>p{}</style><body><h1>Notes</h1><p>Read   chapter 3.</p>" \
           b"<script>alert(1)</script><ul><li>enzymes</li></ul></body></html>"  # fmt: skip
    assert read_document("page.html", page) == "Notes\nRead chapter 3.\nenzymes"
    assert read_document("notes.md", b"# Notes\n\nRead *this*.") == "# Notes\n\nRead *this*."


@pytest.mark.parametrize(
    ("name", "data", "said"),
    [
        ("scan.pdf", blank_pdf(), "has no text to read: a scanned PDF is pictures of pages"),
        ("locked.pdf", blank_pdf("secret"), "is an encrypted PDF; send one without a password"),
        ("cut.pdf", make_pdf(["Cells divide."])[:60], "is a damaged PDF and cannot be read"),
        ("notes.docx", b"PK not a zip at all", "is damaged and cannot be read"),
        ("photo.png", b"\x89PNG", "attach a .txt, .md, .html, .pdf, .docx or .pptx file"),
        ("latin1.txt", "café".encode("latin-1"), "is not UTF-8 text"),
    ],
)
def test_a_bad_document_is_refused_in_one_line(name: str, data: bytes, said: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        read_document(name, data)
    assert refused.value.option == "file" and said in str(refused.value)


def test_limits_on_pages_and_on_what_a_zip_would_unpack_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(InvalidInput, match="has 3 pages; the limit is 2"):
        read_document("long.pdf", make_pdf(["a", "b", "c"]), max_pages=2)
    monkeypatch.setattr(bot.documents, "MAX_PART_BYTES", 2**20)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", b"\0" * (2 * 2**20))  # packs to a few KiB
    assert len(bomb.getvalue()) < 64 * 1024
    with pytest.raises(InvalidInput, match="a part that would unpack to over 1 MiB"):
        read_document("bomb.docx", bomb.getvalue())


async def test_summarize_reads_a_pdf_a_docx_and_a_deck(harness: Harness) -> None:
    s = await scene(harness)
    for name, data, words in (
        ("notes.pdf", make_pdf(["Cells divide."]), "Cells divide."),
        ("notes.docx", make_docx(), "Enzymes lower"),
        ("deck.pptx", make_pptx(), "Slide 1:"),
    ):
        result = await s.alice.slash(s.channel, "summarize", file=(name, data))
        await harness.finish()
        assert result.response.content.startswith("summary: "), result.response.content
        assert words in harness.tasks["summarize"].runs[-1][0].text
    scan = await s.alice.slash(s.channel, "summarize", file=("scan.pdf", blank_pdf()))
    await harness.finish()
    assert "**file**: has no text to read" in scan.response.content


async def test_translate_and_the_menus_read_documents_too(harness: Harness) -> None:
    s = await scene(harness)
    result = await s.alice.slash(s.channel, "translate", file=("notes.md", b"# Cells divide."),
                                 to="fr")  # fmt: skip
    await harness.finish()
    assert result.response.content.startswith("[fr] # Cells divide.")
    both = await s.alice.slash(s.channel, "translate", text="Hi", file=("a.md", b"Hi"))
    assert "**text**: give either a text or a document" in both.response.content
    await s.bob.send(s.channel, "The notes:", attachments=[("notes.docx", make_docx())])
    (shared,) = [m for m in s.channel.history() if m.author.id == s.bob.id]
    await s.alice.context_menu(s.channel, "Summarize", shared)
    await harness.finish()
    assert harness.tasks["summarize"].runs[-1][0].text == (
        "The notes:\n\nEnzymes\nEnzymes lower the activation energy of reactions.\namylase | starch"
    )
    await s.bob.send(s.channel, "", attachments=[("notes.docx", make_docx())])
    alone = max((m for m in s.channel.history() if m.author.id == s.bob.id), key=lambda m: m.id)
    translated = await s.alice.context_menu(s.channel, "Translate", alone)
    await harness.finish()  # into her language, English: the document's text was read
    assert "the text is already in English (detected)" in translated.response.content


def test_a_500_page_pdf_is_refused_by_its_page_count() -> None:
    with pytest.raises(InvalidInput, match="has 500 pages; the limit is 300"):
        read_document("book.pdf", make_pdf([f"Page {k}." for k in range(500)]))


@pytest.mark.parametrize("stack", [{"read_messages": True}], indirect=True)
async def test_a_linked_document_is_read_only_for_a_member_who_may_read_it(
    harness: Harness,
) -> None:
    s = await scene(harness)
    hidden = discord.PermissionOverwrite(read_message_history=False)
    staff = s.guild.create_text_channel("staff", overwrites={s.alice: hidden})
    await s.bob.send(staff, "Answers:", attachments=[("answers.docx", make_docx())])
    (shared,) = [m for m in staff.history() if m.author.id == s.bob.id]
    refused = await s.alice.slash(s.channel, "summarize", link=shared.jump_url)
    await harness.finish()
    assert "**link**: points to messages you cannot read" in refused.response.content
    assert harness.tasks["summarize"].runs == []
    await s.bob.slash(s.channel, "summarize", link=shared.jump_url)
    await harness.finish()
    assert "Enzymes lower" in harness.tasks["summarize"].runs[-1][0].text
    await s.bob.send(s.channel, "", attachments=[("scan.pdf", blank_pdf())])
    scan = max((m for m in s.channel.history() if m.author.id == s.bob.id), key=lambda m: m.id)
    menu = await s.alice.context_menu(s.channel, "Summarize", scan)
    await harness.finish()
    assert "**message**: scan.pdf: has no text to read" in menu.response.content


def test_ask_summarize_reads_a_pdf_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests import tinymodels

    model = tinymodels.build_summarizer(tmp_path / "bart")
    notes = tmp_path / "notes.pdf"
    notes.write_bytes(make_pdf(["The group met today.", "They read about rivers."]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["ask", "summarize", "--file", str(notes), "--model", str(model), "--device", "cpu"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip()
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(blank_pdf())
    assert main(["ask", "summarize", "--file", str(scan), "--model", str(model)]) == 2
    assert "error: file: has no text to read" in capsys.readouterr().err


def test_a_reader_that_takes_too_long_is_killed_and_one_that_raises_is_a_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The standard HTML parser is quadratic on unclosed comments (Python before 3.11.13):
    the reader process is killed at the limit, however long it would have run."""
    import asyncio
    import multiprocessing

    slow = b"<!--" * 60_000
    with pytest.raises(InvalidInput, match="took over 1 s to read"):
        bot.documents._read_isolated("slow.html", slow, None, timeout_s=1.0)
    readers = [p for p in multiprocessing.active_children() if p.name == "document-reader"]
    assert readers == []  # killed and reaped, not left parsing
    with pytest.raises(InvalidInput, match="is a damaged PDF"):  # pypdf's own errors too
        asyncio.run(bot.documents.read_document_soon("cut.pdf", make_pdf(["x"])[:200]))
    assert asyncio.run(bot.documents.read_document_soon("a.md", b"# Notes")) == "# Notes"


def test_more_text_than_can_be_read_at_once_is_said() -> None:
    pages = make_pdf(["Photosynthesis makes sugar from light. " * 10] * 5)
    with pytest.raises(InvalidInput, match="holds over 1,000 characters of text"):
        read_document("notes.pdf", pages, max_chars=1000)
    assert len(read_document("notes.pdf", pages, max_chars=10_000)) > 1000
